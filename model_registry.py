"""What each model needs: a built-in catalog, the runtime's own list, and what was measured.

A model's memory need is estimated as Ollama estimates it (`model_memory`): weights x
VRAM_ESTIMATION_MULTIPLIER plus the KV cache of its slots at its context length, from the
model's architecture (the catalog's, or the runtime's `/api/show`). Once the runtime has
reported what the model really took while loaded with the same settings (`/api/ps`), the
measured figure replaces the estimate, kept in the store across restarts (keyed by the
settings it was measured under). An out-of-memory incident raises the figure once, capped at
the capacity, until the next successful load measures it again.
"""
from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from scheduling.model_memory import ModelArch, arch_from_model_info, estimated_need, grown_need, kv_cache_bytes
from scheduling.model_settings import ModelSettings, canonical_name
from store.retrying import StoreLike
from telemetry.logs import get_logger

log = get_logger("REGISTRY")

GB = 1000 ** 3
MB = 1000 ** 2
LEARN_TOLERANCE = 0.02   # measurements within 2% of the known footprint change nothing
_KEY_SEPARATOR = "|"

__all__ = ["DESIGN_CATALOG", "ModelArch", "ModelEntry", "ModelRegistry", "ModelSpec", "canonical_name",
           "spec_from_runtime"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    size_bytes: int                      # file size, as Ollama's /api/tags reports it
    capabilities: tuple[str, ...] = ("completion",)
    family: str = ""
    parameter_size: str = ""
    install: str = ""                    # the command that installs it, when not `ollama pull <name>`
    arch: ModelArch | None = None        # sizes the KV cache; None until the runtime describes it
    digest: str = ""                     # the runtime's digest of the weights: the model's version

    @property
    def install_hint(self) -> str:
        return self.install or f"ollama pull {self.name}"

    @property
    def embedding_only(self) -> bool:
        return "completion" not in self.capabilities


# The ten models of the original design, with the sizes the Ollama library lists and their
# architectures (layers, heads, KV heads, embedding, trained context, head size when stated).
DESIGN_CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec("smollm:360m", 229 * MB, ("completion",), "llama", "362M", arch=ModelArch(32, 15, 5, 960, 2048)),
    ModelSpec("all-minilm:latest", 46 * MB, ("embedding",), "bert", "23M", arch=ModelArch(6, 12, 12, 384, 512)),
    ModelSpec("nomic-embed-text:latest", 274 * MB, ("embedding",), "nomic-bert", "137M",
              arch=ModelArch(12, 12, 12, 768, 2048)),
    ModelSpec("qwen2.5:0.5b", 398 * MB, ("completion",), "qwen2", "494M", arch=ModelArch(24, 14, 2, 896, 32768)),
    ModelSpec("tinyllama:1.1b", 638 * MB, ("completion",), "llama", "1.1B", arch=ModelArch(22, 32, 4, 2048, 2048)),
    ModelSpec("smollm:1.7b", 991 * MB, ("completion",), "llama", "1.7B", arch=ModelArch(24, 32, 32, 2048, 2048)),
    ModelSpec("llama3.2:1b", 1300 * MB, ("completion",), "llama", "1.2B", arch=ModelArch(16, 32, 8, 2048, 131072)),
    ModelSpec("gemma:2b", 1700 * MB, ("completion",), "gemma", "3B", arch=ModelArch(18, 8, 1, 2048, 8192, 256)),
    ModelSpec("qwen2.5:1.5b", 986 * MB, ("completion",), "qwen2", "1.5B", arch=ModelArch(28, 12, 2, 1536, 32768)),
    ModelSpec("phi3:mini", 2200 * MB, ("completion",), "phi3", "3.8B", arch=ModelArch(32, 32, 32, 3072, 4096)),
)


def spec_from_runtime(entry: dict[str, Any]) -> ModelSpec:
    """A ModelSpec from one `/api/tags` entry (capabilities from `/api/show` when present)."""
    details = entry.get("details") or {}
    caps = entry.get("capabilities")
    if not caps:
        family = (details.get("family") or "").lower()
        caps = ["embedding"] if "bert" in family or "embed" in entry.get("name", "") else ["completion"]
    return ModelSpec(canonical_name(entry.get("name") or entry.get("model", "")),
                     int(entry.get("size") or 0), tuple(caps), details.get("family", ""),
                     details.get("parameter_size", ""), digest=str(entry.get("digest") or ""))


@dataclass
class ModelEntry:
    spec: ModelSpec
    learned_bytes: int | None = None     # measured (or grown after out of memory) under the current settings
    on_runtime: bool | None = None       # None: the runtime's list has not been read
    oom_incarnation: int | None = None   # the load whose out-of-memory answers the last growth answered
    published_need: int | None = None    # a read-only copy's need, as the scheduler published it


class ModelRegistry:
    """Known models and their memory needs. Thread-safe."""

    def __init__(self, multiplier: float, store: StoreLike | None = None,
                 catalog: Iterable[ModelSpec] = DESIGN_CATALOG, settings: ModelSettings | None = None):
        self.multiplier = multiplier
        self.settings = settings or ModelSettings()
        self._store = store
        self._lock = threading.Lock()
        self._models: dict[str, ModelEntry] = {s.name: ModelEntry(s) for s in catalog}
        self._runtime_listed = False
        self.version = 0                 # bumped on every change, so publishers know when to republish
        # Measurements kept from earlier runs, by model and the settings they were made under;
        # matched when used, since a model's settings (its slots) depend on what the runtime says of it.
        self._stored: dict[str, int] = store.footprints() if store is not None else {}
        for key in self._stored:
            name = key.partition(_KEY_SEPARATOR)[0]
            self._models.setdefault(name, ModelEntry(ModelSpec(name, 0)))

    # --- lookups -------------------------------------------------------------------------------
    def resolve(self, name: str) -> str | None:
        """The registry's name for `name`, or None when unknown."""
        with self._lock:
            if name in self._models:
                return name
            full = canonical_name(name)
            return full if full in self._models else None

    def get(self, name: str) -> ModelEntry | None:
        with self._lock:
            return self._models.get(name)

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def need_bytes(self, name: str) -> int:
        """Memory to plan for `name`: measured if known, else the estimate (weights and KV cache)."""
        with self._lock:
            entry = self._models.get(name)
            return 0 if entry is None else self._need(entry)

    def slots(self, name: str) -> int:
        """Requests `name` serves at once on the runtime."""
        with self._lock:
            entry = self._models.get(name)
            embedding = entry is not None and entry.spec.embedding_only
        return self.settings.slots_for(name, embedding)

    def _signature(self, entry: ModelEntry) -> str:
        return self.settings.signature(entry.spec.name, entry.spec.embedding_only)

    def _estimate(self, entry: ModelEntry) -> int:
        spec = entry.spec
        return estimated_need(spec.size_bytes, self.multiplier, spec.arch, self.settings.ctx_for(spec.name),
                              self.settings.slots_for(spec.name, spec.embedding_only))

    def _need(self, entry: ModelEntry) -> int:
        if entry.published_need is not None:
            return entry.published_need
        if entry.learned_bytes:
            return entry.learned_bytes
        stored = self._stored.get(entry.spec.name + _KEY_SEPARATOR + self._signature(entry))
        return stored or self._estimate(entry)

    def suggestions(self, name: str, limit: int = 3) -> list[str]:
        names = self.names()
        close = difflib.get_close_matches(name, names, n=limit, cutoff=0.5)
        if not close:
            stem = name.split(":")[0]
            close = [n for n in names if n.split(":")[0] == stem][:limit]
        return close

    def fitting(self, capacity_bytes: int, capability: str | None = None) -> list[str]:
        """Models that fit in `capacity_bytes`, largest first (suggestions for a 422)."""
        with self._lock:
            rows = [(self._need(e), n) for n, e in self._models.items()
                    if self._need(e) <= capacity_bytes and e.on_runtime is not False
                    and (capability is None or capability in e.spec.capabilities)]
        return [n for _, n in sorted(rows, reverse=True)]

    # --- learning ------------------------------------------------------------------------------
    def learn(self, name: str, size_bytes: int, incarnation: int | None = None) -> None:
        """The runtime reported `name` using `size_bytes` while loaded with today's settings.
        `incarnation` says which load of the model that was: the load that ran out of memory
        teaches nothing; the next successful one replaces the grown figure."""
        if size_bytes <= 0:
            return
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(ModelSpec(name, size_bytes)))
            if entry.oom_incarnation is not None:
                if incarnation is not None and incarnation <= entry.oom_incarnation:
                    return
                entry.oom_incarnation = None
            known = entry.learned_bytes or self._stored.get(name + _KEY_SEPARATOR + self._signature(entry))
            if known and abs(size_bytes - known) <= LEARN_TOLERANCE * known:
                entry.learned_bytes = known
                return                   # the same footprint, give or take what a process's RSS wobbles
            before = self._need(entry)
            entry.learned_bytes = size_bytes
            key = name + _KEY_SEPARATOR + self._signature(entry)
            self.version += 1
        log.info("%s measured at %.0f MB (planned %.0f MB)", name, size_bytes / MB, before / MB)
        self._save(key, size_bytes)

    def learn_oom(self, name: str, incarnation: int, room_bytes: int, factor: float) -> int:
        """The runtime ran out of memory with load `incarnation` of `name`: plan for more, once
        per incident (every job answered out of memory by one load says the same thing), never
        past `room_bytes` (the memory the scheduler may use now)."""
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(ModelSpec(name, 0)))
            current = self._need(entry)
            if entry.oom_incarnation is not None and incarnation <= entry.oom_incarnation:
                return current
            entry.oom_incarnation = incarnation
            grown = grown_need(max(current, 1), room_bytes, factor)
            if grown == current:
                return current
            entry.learned_bytes = grown
            key = name + _KEY_SEPARATOR + self._signature(entry)
            self.version += 1
        log.warning("%s ran out of memory: now planned at %.0f MB", name, grown / MB)
        self._save(key, grown)
        return grown

    def _save(self, key: str, size_bytes: int) -> None:
        self._stored[key] = size_bytes
        if self._store is not None:
            self._store.save_footprint(key, size_bytes, time.time())

    def learn_architecture(self, name: str, model_info: dict[str, Any]) -> bool:
        """The runtime's `/api/show` → `model_info` for `name`; True when it gave an architecture."""
        arch = arch_from_model_info(model_info or {})
        if arch is None:
            return False
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(ModelSpec(name, 0)))
            if entry.spec.arch != arch:
                entry.spec = replace(entry.spec, arch=arch)
                self.version += 1
        return True

    def update_from_runtime(self, entries: Iterable[dict[str, Any]]) -> None:
        """Merge the runtime's `/api/tags` list: new models become known, and every model is
        marked as present on the runtime or not."""
        specs = {s.name: s for s in map(spec_from_runtime, entries)}
        with self._lock:
            changed = not self._runtime_listed
            self._runtime_listed = True
            for name, spec in specs.items():
                entry = self._models.get(name)
                if entry is None:
                    self._models[name] = ModelEntry(spec, on_runtime=True)
                    changed = True
                    continue
                if entry.spec.size_bytes != spec.size_bytes and spec.size_bytes:
                    entry.spec = replace(entry.spec, size_bytes=spec.size_bytes,
                                       capabilities=spec.capabilities or entry.spec.capabilities,
                                       family=spec.family or entry.spec.family,
                                       parameter_size=spec.parameter_size or entry.spec.parameter_size)
                    changed = True
                if spec.digest and entry.spec.digest != spec.digest:
                    entry.spec = replace(entry.spec, digest=spec.digest)
                    changed = True
                if entry.on_runtime is not True:
                    entry.on_runtime, changed = True, True
            for name, entry in self._models.items():
                if name not in specs and entry.on_runtime is not False:
                    entry.on_runtime, changed = False, True
            if changed:
                self.version += 1

    # --- publishing ----------------------------------------------------------------------------
    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            rows = []
            for name, e in sorted(self._models.items()):
                spec = e.spec
                ctx, slots = self.settings.ctx_for(name), self.settings.slots_for(name, spec.embedding_only)
                rows.append({
                    "name": name,
                    "size": spec.size_bytes,
                    "estimated_bytes": self._estimate(e),
                    "kv_cache_bytes": kv_cache_bytes(spec.arch, ctx, slots, spec.size_bytes),
                    "learned_bytes": e.learned_bytes or self._stored.get(name + _KEY_SEPARATOR + self._signature(e)),
                    "need_bytes": self._need(e),
                    "num_ctx": ctx,
                    "slots": slots,
                    "arch_known": spec.arch is not None,
                    "capabilities": list(spec.capabilities),
                    "family": spec.family,
                    "parameter_size": spec.parameter_size,
                    "on_runtime": e.on_runtime,
                    "install": spec.install_hint,
                    "digest": spec.digest,
                })
            return rows

    @classmethod
    def from_description(cls, rows: list[dict[str, Any]], multiplier: float) -> ModelRegistry:
        """Rebuild a read-only view from `describe()` output (API workers in other processes)."""
        registry = cls(multiplier, store=None, catalog=())
        for row in rows:
            spec = ModelSpec(row["name"], row["size"], tuple(row["capabilities"]), row.get("family", ""),
                             row.get("parameter_size", ""), row.get("install", ""), digest=row.get("digest", ""))
            registry._models[row["name"]] = ModelEntry(spec, row.get("learned_bytes"), row.get("on_runtime"),
                                                       published_need=row.get("need_bytes"))
        registry._runtime_listed = any(r.get("on_runtime") is not None for r in rows)
        return registry

