"""The scheduling decision: a pure function from a snapshot of the world to a plan.

`plan(snapshot)` reads no clock, does no I/O and keeps no state, so it is tested with plain
values and benchmarked in isolation. The execution engine carries the plan out.

The policy, in the order it is applied:

* Work is taken model by model in order of urgency: a model's score is the best effective
  priority among its waiting jobs (priority rank + capped aging, or a lower priority promoted
  when it is owed its share: see queue_manager), so that high priority goes first and low
  priority cannot starve.
* A loaded model with waiting work gets as many jobs as it has free slots (the requests the
  runtime serves at once for it), within MAX_RUNNING_JOBS overall, and never more: a request
  beyond a model's slots would wait inside the runtime, first come, first served, where priority
  is lost. Waiting work stays in the queue, and each slot that frees goes to the most urgent job.
* A model that is not loaded is loaded when its need fits in the free budget. Otherwise room
  is made, least recently used first, from idle models with no waiting work, then from models
  whose waiting work is at least SWAP_MARGIN priority levels less urgent: idle ones are
  unloaded, busy ones stop taking new jobs (they drain) and are unloaded once idle. A model
  with running jobs is never unloaded.
* A swap is costly (the load, and the slots idle while a victim drains), so: one swap at a
  time (while a model drains or unloads, no other is pushed out and the rest keep serving); a
  drain, once begun, is seen through; and a model that was just loaded serves its work for at
  least MIN_RESIDENCY_LOADS times its own load time before other work may push it out (a model
  with no waiting work may go at once). Under memory pressure that amortises each load over a
  batch of work instead of swapping for every urgent job.
* Room is only made when it suffices; memory that a more urgent model is waiting for is not
  given to a less urgent one. Memory being unloaded counts as used until the unload finishes,
  and a load is only planned into memory that is free now, so a plan never exceeds the budget.
* A node with several GPUs is budgeted per GPU: a model goes where the runtime would put it
  (`scheduling.gpu_placement.place`), so memory free on two GPUs is not taken for one pool.
* Pinned models are never pushed out. Models wanted without waiting work (pinned ones not yet
  loaded, models predicted to be needed soon) are loaded last, into memory no waiting work
  needs; a predicted one is the first to give way again.
"""
from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum

from scheduling.gpu_placement import GpuSplit, place


class Phase(StrEnum):
    LOADING = "loading"
    LOADED = "loaded"
    UNLOADING = "unloading"


@dataclass(frozen=True)
class ResidentModel:
    """A model that occupies memory (or is about to, or is about to stop)."""
    name: str
    phase: Phase
    bytes: int
    running: int = 0
    last_used: float = 0.0       # when a job last started or finished on it: the LRU key
    slots: int = 1               # requests the runtime serves at once for it
    loaded_at: float = 0.0       # when its load finished
    load_s: float = 0.0          # how long that load took
    gpu_bytes: tuple[int, ...] = ()   # its bytes on each GPU of the node (empty: all on one pool)


@dataclass(frozen=True)
class Demand:
    """The waiting work for one model."""
    model: str
    waiting: int
    score: float                 # best effective priority among its waiting jobs
    oldest_submitted: float
    rank: int = 0                # the priority that score belongs to (a promoted one counts as its own)
    head_wait_s: float = 0.0     # how long the job that score belongs to has waited
    service: float = 0.0         # service received by the tenant whose job goes next (fair share)

    def urgency(self) -> tuple[float, float, float, float, str]:
        """The order models are served in (least first): priority level (a promoted one counts
        as its own), then the least-served tenant, then aging, then the oldest job."""
        return (-math.floor(self.score), self.service, -self.score, self.oldest_submitted, self.model)


@dataclass(frozen=True)
class Limits:
    max_running: int = 64
    max_loaded: int = 0          # 0 = no cap
    swap_margin: float = 1.0
    min_residency_loads: float = 4.0   # a loaded model serves at least this x its load time first
    fair_wait_s: float = 60.0    # work waiting this much longer than a loaded model's, at its priority, may take its place


UNKNOWN_CAPACITY = 1 << 62      # memory not known (not read yet, runtime down): nothing is loaded


@dataclass(frozen=True)
class Snapshot:
    budget_bytes: int            # what managed models may occupy now: total - margin - others' use
    capacity_bytes: int          # total - margin: the most any one model could ever have
    resident: tuple[ResidentModel, ...]
    demand: tuple[Demand, ...]
    need_bytes: Mapping[str, int]   # memory to plan for each demanded model that is not resident
    limits: Limits = Limits()
    draining: frozenset[str] = frozenset()   # being emptied to make room (decided by an earlier plan)
    now: float = 0.0
    gpu_budgets: tuple[int, ...] = ()     # budget_bytes per GPU, for a node with several (empty: one pool)
    gpu_capacity: tuple[int, ...] = ()    # capacity_bytes per GPU
    split: GpuSplit = GpuSplit.OLLAMA     # how the runtime places a model over the GPUs
    pinned: frozenset[str] = frozenset()  # never pushed out
    wanted: tuple[str, ...] = ()          # load into memory no waiting work needs, in this order

    @property
    def memory_known(self) -> bool:
        return self.capacity_bytes < UNKNOWN_CAPACITY

    @property
    def budgets(self) -> tuple[int, ...]:
        return self.gpu_budgets or (self.budget_bytes,)

    @property
    def capacities(self) -> tuple[int, ...]:
        return self.gpu_capacity or (self.capacity_bytes,)

    def room_beside(self, pinned: frozenset[str]) -> tuple[int, ...]:
        """Capacity per GPU less what the loaded models in `pinned` hold: the most any other
        model could ever have while they stay. (One still loading counts once its load says
        what it really takes: its first estimate may be well above it.)"""
        room = list(self.capacities)
        for m in self.resident:
            if m.name in pinned and m.phase is Phase.LOADED:
                for i, b in enumerate(self.split_of(m)):
                    room[i] -= b
        return tuple(room)

    def split_of(self, m: ResidentModel) -> tuple[int, ...]:
        """`m`'s bytes on each GPU: as recorded, else where the runtime would put it on empty GPUs."""
        n = len(self.budgets)
        if len(m.gpu_bytes) == n:
            return m.gpu_bytes
        alone = (m.bytes,) + (0,) * (n - 1)
        return (place(m.bytes, self.capacities, GpuSplit.SPREAD) or alone) if n > 1 else alone


@dataclass
class Plan:
    unloads: list[str] = field(default_factory=list)
    loads: list[str] = field(default_factory=list)
    dispatch: list[tuple[str, int]] = field(default_factory=list)
    never_fits: list[str] = field(default_factory=list)       # need > capacity: fail their jobs
    waiting_for_memory: list[str] = field(default_factory=list)
    draining: list[str] = field(default_factory=list)         # busy, to be unloaded once idle
    placements: dict[str, tuple[int, ...]] = field(default_factory=dict)   # each load's bytes per GPU

    @property
    def empty(self) -> bool:
        return not (self.unloads or self.loads or self.dispatch or self.never_fits)


class FreeMemory:
    """Bytes per GPU not yet promised: `free` now, and `incoming` from unloads on their way."""

    def __init__(self, snapshot: Snapshot):
        self.split = snapshot.split
        self.free = list(snapshot.budgets)
        self.incoming = [0] * len(self.free)
        for m in snapshot.resident:
            self.take(snapshot.split_of(m))
            if m.phase is Phase.UNLOADING:
                self.give_back(snapshot.split_of(m))

    def take(self, alloc: tuple[int, ...]) -> None:
        for i, b in enumerate(alloc):
            self.free[i] -= b

    def give_back(self, alloc: tuple[int, ...]) -> None:
        for i, b in enumerate(alloc):
            self.incoming[i] += b

    def place_now(self, need: int) -> tuple[int, ...] | None:
        return place(need, self.free, self.split)

    def fits_later(self, need: int, extra: list[int]) -> bool:
        """Would `need` fit once the unloads in flight and `extra` (more victims) are done?"""
        room = [max(f, 0) + c + e for f, c, e in zip(self.free, self.incoming, extra, strict=False)]
        return place(need, room, self.split) is not None

    def promise(self, need: int) -> None:
        """Set `need` aside from free memory, then from incoming, where it would go (or, if it
        cannot fit yet, as much of it as there is) so that no less urgent model takes it."""
        room = [max(f, 0) + c for f, c in zip(self.free, self.incoming, strict=False)]
        alloc = place(need, room, self.split)
        if alloc is None:
            total = sum(room)
            alloc = tuple(room) if total <= need else tuple(r * need // total for r in room)
        for i, b in enumerate(alloc):
            from_free = min(max(self.free[i], 0), b)
            self.free[i] -= from_free
            self.incoming[i] -= min(self.incoming[i], b - from_free)


def plan(snapshot: Snapshot) -> Plan:
    limits = snapshot.limits
    result = Plan()
    resident = {m.name: m for m in snapshot.resident}
    demand = {d.model: d for d in snapshot.demand}
    memory = FreeMemory(snapshot)
    free_overall = limits.max_running - sum(m.running for m in snapshot.resident)
    loaded_count = sum(1 for m in snapshot.resident if m.phase is not Phase.UNLOADING)
    pinned = snapshot.pinned
    spare = sorted((m for m in snapshot.resident if m.phase is Phase.LOADED and m.running == 0
                    and m.name not in demand and m.name not in pinned), key=_lru)
    # Loaded models with waiting work, in the order they would give way: idle first, then LRU.
    with_work = sorted((m for m in snapshot.resident if m.phase is Phase.LOADED and m.name in demand
                        and m.name not in pinned), key=lambda m: (m.running > 0, _lru(m)))
    taken: set[str] = set()      # chosen in this pass to make room: unloading or draining
    dispatched: set[str] = set()
    # A model being drained stays so until it is idle, then goes: its memory is on its way back.
    for m in snapshot.resident:
        if m.name in snapshot.draining and m.phase is Phase.LOADED and m.name not in pinned:
            taken.add(m.name)
            memory.give_back(snapshot.split_of(m))
            if m.running == 0:
                result.unloads.append(m.name)
                loaded_count -= 1
            else:
                result.draining.append(m.name)
    # One swap at a time: while a model is on its way out, no other is pushed out, so the rest
    # keep serving (and loads do not share the bandwidth with each other).
    swapping = bool(taken) or any(m.phase is Phase.UNLOADING for m in snapshot.resident)

    for d in sorted(snapshot.demand, key=Demand.urgency):
        current = resident.get(d.model)
        if current is not None and current.phase is Phase.UNLOADING:
            result.waiting_for_memory.append(d.model)    # reload once the unload is done
            continue
        if current is not None:
            if current.phase is Phase.LOADED and d.model not in taken:
                n = min(d.waiting, current.slots - current.running, free_overall)
                if n > 0:
                    result.dispatch.append((d.model, n))
                    dispatched.add(d.model)
                    free_overall -= n
            continue

        need = snapshot.need_bytes.get(d.model, 0)
        if place(need, snapshot.room_beside(pinned), snapshot.split) is None:
            result.never_fits.append(d.model)      # not even alone, or not beside the pinned models
            continue
        under_cap = limits.max_loaded == 0 or loaded_count < limits.max_loaded
        alloc = memory.place_now(need)
        if alloc is not None and under_cap:
            result.loads.append(d.model)
            result.placements[d.model] = alloc
            memory.take(alloc)
            loaded_count += 1
            continue

        extra = [0] * len(memory.free)
        over_cap = 0 if under_cap else loaded_count + 1 - limits.max_loaded
        victims: list[ResidentModel] = []
        settled = {m.name for m in with_work if snapshot.now - m.loaded_at < limits.min_residency_loads * m.load_s}
        candidates = _victim_candidates(d, spare, [] if swapping else with_work, demand,
                                        taken | dispatched | settled, limits)
        enough = memory.fits_later(need, extra)
        for m in candidates:
            if enough and over_cap <= 0:
                break
            victims.append(m)
            for i, b in enumerate(snapshot.split_of(m)):
                extra[i] += b
            over_cap -= 1
            enough = memory.fits_later(need, extra)
        result.waiting_for_memory.append(d.model)
        if not enough or over_cap > 0:
            # It cannot be made to fit yet: more urgent or busy models hold the memory. Claim what
            # is free so that less urgent models do not take it meanwhile; unless it could not fit
            # even alone (other programs hold memory): then it must not block anyone.
            if place(need, snapshot.budgets, snapshot.split) is not None:
                memory.promise(need)
            continue
        swapping = swapping or any(m.running or m.name in demand for m in victims)
        for m in victims:
            taken.add(m.name)
            memory.give_back(snapshot.split_of(m))
            if m.running == 0:
                result.unloads.append(m.name)
                loaded_count -= 1
            else:
                result.draining.append(m.name)
        memory.promise(need)

    # Wanted without waiting work: only into memory that is free now and that nothing waiting needs.
    for name in snapshot.wanted:
        if name in resident or name in demand or name in result.placements:
            continue
        if limits.max_loaded and loaded_count >= limits.max_loaded:
            break
        alloc = memory.place_now(snapshot.need_bytes.get(name, 0))
        if alloc is not None and name in snapshot.need_bytes:
            result.loads.append(name)
            result.placements[name] = alloc
            memory.take(alloc)
            loaded_count += 1
    return result


def _lru(m: ResidentModel) -> tuple[float, str]:
    return (m.last_used, m.name)


def _victim_candidates(requester: Demand, spare: list[ResidentModel], with_work: list[ResidentModel],
                       demand: Mapping[str, Demand], taken: set[str], limits: Limits) -> Iterator[ResidentModel]:
    """Models that may make room for `requester`, in the order they should: idle ones without
    waiting work (LRU), then ones whose work is less urgent by SWAP_MARGIN, or of the same
    priority but waiting FAIR_WAIT_S less (so that no model starves behind another of its
    priority), idle before busy."""
    for m in spare:
        if m.name not in taken:
            yield m
    for m in with_work:
        if m.name in taken:
            continue
        held = demand[m.name]
        if held.score + limits.swap_margin <= requester.score or (
                held.rank == requester.rank and requester.head_wait_s >= held.head_wait_s + limits.fair_wait_s):
            yield m
