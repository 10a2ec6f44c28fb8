"""The planner's input (`vram_scheduler.Snapshot`) from a node's reading and its table of
resident models: the memory budget, per GPU where there are several. Pure."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from runtime.readings import ResourceState
from scheduling.gpu_placement import GpuSplit
from vram_scheduler import UNKNOWN_CAPACITY, Demand, Limits, ResidentModel, Snapshot


def build_snapshot(state: ResourceState, resident: tuple[ResidentModel, ...], demand: list[Demand],
                   need_of: Callable[[str], int], limits: Limits, margin_bytes: int,
                   draining: frozenset[str] = frozenset(), now: float = 0.0,
                   split: GpuSplit = GpuSplit.OLLAMA) -> Snapshot:
    """The planner's input, from the monitor's reading and the table of resident models. With
    several GPUs, each has its own budget: its memory less the margin and what others use on it
    (memory in use beyond the share of our models the table puts there)."""
    resident_names = {m.name for m in resident}
    demanded = {d.model for d in demand}
    needs = {name: need_of(name) for name in demanded if name not in resident_names}
    needs.update({m.name: need_of(m.name) for m in resident if m.name in demanded})
    draining = draining & resident_names
    if state.memory_total <= 0 or not state.runtime_ok:   # memory unknown or runtime down: no loads
        return Snapshot(sum(m.bytes for m in resident), UNKNOWN_CAPACITY, resident, tuple(demand), needs, limits,
                        draining, now)
    capacity = state.memory_total - margin_bytes
    snapshot = Snapshot(capacity - state.used_by_others, capacity, resident, tuple(demand), needs, limits, draining,
                        now, split=split)
    gpus = state.gpus
    if len(gpus) < 2 or sum(g.memory_total for g in gpus) != state.memory_total:   # one pool (or a capped share)
        return snapshot
    capacities = tuple(g.memory_total - margin_bytes for g in gpus)
    ours = [0] * len(gpus)
    for m in resident:
        for i, b in enumerate(replace(snapshot, gpu_capacity=capacities, gpu_budgets=capacities).split_of(m)):
            ours[i] += b
    budgets = tuple(cap - max(g.memory_total - g.memory_free - mine, 0)
                    for cap, g, mine in zip(capacities, gpus, ours, strict=False))
    return replace(snapshot, budget_bytes=sum(budgets), capacity_bytes=sum(capacities), gpu_budgets=budgets,
                   gpu_capacity=capacities)
