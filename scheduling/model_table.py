"""The scheduler's table of resident models: what is loading, loaded or unloading, how many
slots each has and how many of them are busy. Pure state, owned by the scheduler loop's thread;
every change takes the time as an argument.

The table is what the plan is made from, so it must never claim room or slots the runtime does
not have: a model enters as LOADING (its planned need reserved) before the load is sent, and
stays UNLOADING until the runtime's own list (`/api/ps`) no longer shows it. `reconcile` brings
the table in line with that list, ignoring readings older than the table's own last change.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

from runtime.readings import LoadedModelInfo
from vram_scheduler import Phase, ResidentModel


@dataclass
class ModelState:
    name: str
    phase: Phase
    bytes: int                           # planned need while loading; what it takes once loaded
    slots: int
    running: int = 0
    last_used: float = 0.0               # when a job last started or finished on it: the LRU key
    changed_at: float = 0.0              # when the table last changed it: older readings are stale
    load_started: float = 0.0
    load_finished: float = 0.0
    incarnation: int = 0                 # which load of the model this is (an incident is per load)
    gpu_bytes: tuple[int, ...] = ()      # where the plan put it on the node's GPUs (empty: one pool, or unknown)


class ModelTable:
    def __init__(self) -> None:
        self._models: dict[str, ModelState] = {}
        self._incarnations = 0

    def get(self, name: str) -> ModelState | None:
        return self._models.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self._models

    def states(self) -> list[ModelState]:
        """Copies, for reading outside the loop's thread."""
        return [replace(m) for m in self._models.values()]

    def resident(self) -> tuple[ResidentModel, ...]:
        return tuple(ResidentModel(m.name, m.phase, m.bytes, m.running, m.last_used, m.slots, m.load_finished,
                                   max(m.load_finished - m.load_started, 0.0), _scaled(m.gpu_bytes, m.bytes))
                     for m in self._models.values())

    def running(self) -> int:
        return sum(m.running for m in self._models.values())

    # --- loads and unloads ----------------------------------------------------------------------
    def begin_load(self, name: str, need: int, slots: int, now: float,
                   gpu_bytes: tuple[int, ...] = ()) -> ModelState | None:
        if name in self._models:
            return None
        self._incarnations += 1
        state = self._models[name] = ModelState(name, Phase.LOADING, need, slots, changed_at=now,
                                                load_started=now, incarnation=self._incarnations,
                                                gpu_bytes=gpu_bytes)
        return state

    def load_succeeded(self, name: str, now: float) -> None:
        state = self._models.get(name)
        if state is not None and state.phase is Phase.LOADING:
            state.phase, state.changed_at = Phase.LOADED, now
            state.load_finished = state.last_used = now

    def load_failed(self, name: str) -> None:
        state = self._models.get(name)
        if state is not None and state.phase is Phase.LOADING:
            del self._models[name]

    def begin_unload(self, name: str, now: float) -> bool:
        state = self._models.get(name)
        if state is None or state.phase is not Phase.LOADED or state.running:
            return False
        state.phase, state.changed_at = Phase.UNLOADING, now
        return True

    def unload_finished(self, name: str, ok: bool, now: float) -> None:
        """It stays UNLOADING until `/api/ps` stops listing it; a failed unload leaves it loaded."""
        state = self._models.get(name)
        if state is None or state.phase is not Phase.UNLOADING:
            return
        state.changed_at = now
        if not ok:
            state.phase = Phase.LOADED

    # --- jobs -----------------------------------------------------------------------------------
    def job_started(self, name: str, now: float) -> ModelState | None:
        state = self._models.get(name)
        if state is None:
            return None
        state.running += 1
        state.last_used = now
        return state

    def job_finished(self, name: str, now: float) -> None:
        state = self._models.get(name)
        if state is not None:
            state.running = max(state.running - 1, 0)
            state.last_used = now

    def distrust(self, name: str) -> None:
        """The runtime may have dropped the model: let the next reading decide."""
        state = self._models.get(name)
        if state is not None:
            state.changed_at = 0.0

    # --- the runtime's view ---------------------------------------------------------------------
    def reconcile(self, loaded: Iterable[LoadedModelInfo], sampled_at: float, slots_of: Callable[[str], int]) -> None:
        """Bring the table in line with what the runtime listed as loaded at `sampled_at`.
        `slots_of(name)`: the slots of a model found loaded that the table did not know."""
        seen = {m.name: m for m in loaded}
        for name, info in seen.items():
            state = self._models.get(name)
            if state is None:        # loaded by someone else, or before a restart: it takes memory
                self._incarnations += 1
                self._models[name] = ModelState(name, Phase.LOADED, info.footprint, slots_of(name),
                                                changed_at=sampled_at, incarnation=self._incarnations)
            elif state.phase is Phase.LOADED and state.changed_at <= sampled_at:
                state.bytes = info.footprint or state.bytes
        for name, state in list(self._models.items()):
            if name in seen or state.changed_at > sampled_at or state.phase is Phase.LOADING:
                continue
            if state.running == 0:    # unloaded (by us, keep_alive, or a crash)
                del self._models[name]


def _scaled(split: tuple[int, ...], total: int) -> tuple[int, ...]:
    """A planned split over GPUs, scaled to what the model was found to take."""
    planned = sum(split)
    if not split or planned == total or planned <= 0:
        return split
    scaled = [b * total // planned for b in split]
    scaled[max(range(len(split)), key=lambda i: split[i])] += total - sum(scaled)
    return tuple(scaled)
