"""What each model needs: a built-in catalog, the runtime's own list, and what was measured.

A model's memory need is its size x VRAM_ESTIMATION_MULTIPLIER until the runtime has reported
what it really used (`/api/ps`); from then on the measured figure, kept in the store across
restarts. An out-of-memory answer raises the figure so that the next try asks for more room.
"""
from __future__ import annotations

import difflib
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from log_setup import get_logger
from store.base import JobStore

log = get_logger("REGISTRY")

GB = 1000 ** 3
MB = 1000 ** 2
OOM_GROWTH = 1.25   # after an out-of-memory answer, a model's need grows by at least this factor
LEARN_TOLERANCE = 0.02   # measurements within 2% of the known footprint change nothing


@dataclass(frozen=True)
class ModelSpec:
    name: str
    size_bytes: int                      # file size, as Ollama's /api/tags reports it
    capabilities: tuple[str, ...] = ("completion",)
    family: str = ""
    parameter_size: str = ""
    install: str = ""                    # the command that installs it, when not `ollama pull <name>`

    @property
    def install_hint(self) -> str:
        return self.install or f"ollama pull {self.name}"


# The ten models of the original design, with the sizes the Ollama library lists.
DESIGN_CATALOG: tuple[ModelSpec, ...] = (
    ModelSpec("smollm:360m", 229 * MB, ("completion",), "llama", "362M"),
    ModelSpec("all-minilm:latest", 46 * MB, ("embedding",), "bert", "23M"),
    ModelSpec("nomic-embed-text:latest", 274 * MB, ("embedding",), "nomic-bert", "137M"),
    ModelSpec("qwen2.5:0.5b", 398 * MB, ("completion",), "qwen2", "494M"),
    ModelSpec("tinyllama:1.1b", 638 * MB, ("completion",), "llama", "1.1B"),
    ModelSpec("smollm:1.7b", 991 * MB, ("completion",), "llama", "1.7B"),
    ModelSpec("llama3.2:1b", 1300 * MB, ("completion",), "llama", "1.2B"),
    ModelSpec("gemma:2b", 1700 * MB, ("completion",), "gemma", "3B"),
    ModelSpec("qwen2.5:1.5b", 986 * MB, ("completion",), "qwen2", "1.5B"),
    ModelSpec("phi3:mini", 2200 * MB, ("completion",), "phi3", "3.8B"),
)


def canonical_name(name: str) -> str:
    """Ollama's own rule: a name without a tag means `:latest`."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def spec_from_runtime(entry: dict[str, Any]) -> ModelSpec:
    """A ModelSpec from one `/api/tags` entry (capabilities from `/api/show` when present)."""
    details = entry.get("details") or {}
    caps = entry.get("capabilities")
    if not caps:
        family = (details.get("family") or "").lower()
        caps = ["embedding"] if "bert" in family or "embed" in entry.get("name", "") else ["completion"]
    return ModelSpec(canonical_name(entry.get("name") or entry.get("model", "")),
                     int(entry.get("size") or 0), tuple(caps), details.get("family", ""),
                     details.get("parameter_size", ""))


@dataclass
class ModelEntry:
    spec: ModelSpec
    learned_bytes: int | None = None
    on_runtime: bool | None = None       # None: the runtime's list has not been read


class ModelRegistry:
    """Known models and their memory needs. Thread-safe."""

    def __init__(self, multiplier: float, store: JobStore | None = None,
                 catalog: Iterable[ModelSpec] = DESIGN_CATALOG):
        self.multiplier = multiplier
        self._store = store
        self._lock = threading.Lock()
        self._models: dict[str, ModelEntry] = {s.name: ModelEntry(s) for s in catalog}
        self._runtime_listed = False
        self.version = 0                 # bumped on every change, so publishers know when to republish
        if store is not None:
            for name, size in store.footprints().items():
                entry = self._models.get(name)
                if entry is not None:
                    entry.learned_bytes = size
                else:
                    self._models[name] = ModelEntry(ModelSpec(name, 0), learned_bytes=size)

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
        """Memory to plan for `name`: measured if known, else size x multiplier."""
        with self._lock:
            entry = self._models.get(name)
            if entry is None:
                return 0
            return self._need(entry)

    def _need(self, entry: ModelEntry) -> int:
        if entry.learned_bytes:
            return entry.learned_bytes
        return int(entry.spec.size_bytes * self.multiplier)

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
    def learn(self, name: str, size_bytes: int) -> None:
        """The runtime reported `name` using `size_bytes` while loaded."""
        if size_bytes <= 0:
            return
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(ModelSpec(name, size_bytes)))
            if entry.learned_bytes and abs(size_bytes - entry.learned_bytes) <= LEARN_TOLERANCE * entry.learned_bytes:
                return                   # the same footprint, give or take what a process's RSS wobbles
            before = self._need(entry)
            entry.learned_bytes = size_bytes
            self.version += 1
        log.info("%s measured at %.0f MB (planned %.0f MB)", name, size_bytes / MB, before / MB)
        if self._store is not None:
            self._store.save_footprint(name, size_bytes, time.time())

    def learn_oom(self, name: str) -> int:
        """The runtime ran out of memory loading `name`: plan for more next time."""
        with self._lock:
            entry = self._models.setdefault(name, ModelEntry(ModelSpec(name, 0)))
            grown = int(max(self._need(entry), 1) * OOM_GROWTH)
            entry.learned_bytes = grown
            self.version += 1
        log.warning("%s ran out of memory: now planned at %.0f MB", name, grown / MB)
        if self._store is not None:
            self._store.save_footprint(name, grown, time.time())
        return grown

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
                    entry.spec = ModelSpec(name, spec.size_bytes, spec.capabilities or entry.spec.capabilities,
                                           spec.family or entry.spec.family,
                                           spec.parameter_size or entry.spec.parameter_size, entry.spec.install)
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
            return [{
                "name": name,
                "size": e.spec.size_bytes,
                "estimated_bytes": int(e.spec.size_bytes * self.multiplier),
                "learned_bytes": e.learned_bytes,
                "need_bytes": self._need(e),
                "capabilities": list(e.spec.capabilities),
                "family": e.spec.family,
                "parameter_size": e.spec.parameter_size,
                "on_runtime": e.on_runtime,
                "install": e.spec.install_hint,
            } for name, e in sorted(self._models.items())]

    @classmethod
    def from_description(cls, rows: list[dict[str, Any]], multiplier: float) -> ModelRegistry:
        """Rebuild a read-only view from `describe()` output (API workers in other processes)."""
        registry = cls(multiplier, store=None, catalog=())
        for row in rows:
            spec = ModelSpec(row["name"], row["size"], tuple(row["capabilities"]), row.get("family", ""),
                             row.get("parameter_size", ""), row.get("install", ""))
            registry._models[row["name"]] = ModelEntry(spec, row.get("learned_bytes"), row.get("on_runtime"))
        registry._runtime_listed = any(r.get("on_runtime") is not None for r in rows)
        return registry
