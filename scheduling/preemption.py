"""Preemption: when urgent work may stop running work of a lower priority. Pure: no clock, no I/O.

A waiting job that outranks running work takes its place once it has waited PREEMPT_AFTER_S:

* for a slot: its model is loaded and every slot is busy, some with lower-priority jobs: the
  lowest-priority of those, most recently started first (the least work lost), are stopped, as
  many as there are such waiting jobs;
* for memory: its model waits for memory that a model being drained for it (`Plan.draining`)
  holds with lower-priority work: that work is stopped, so the model empties and is unloaded.

Never for a job of the same or a higher priority, and a job is stopped at most PREEMPT_MAX times.
What happens to a stopped job (it goes back to its place in line and resumes from its partial
answer where the runtime allows) is the execution engine's to carry out.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Running:
    """A job holding a slot, as preemption sees it."""
    job_id: str
    model: str
    rank: int
    started: float
    preempted: int = 0               # times it was stopped before


@dataclass(frozen=True)
class Waiting:
    """A model's most urgent waiting work: its priority, how many jobs of it, how long the first waited."""
    model: str
    rank: int
    count: int
    waited_s: float


@dataclass(frozen=True)
class PreemptLimits:
    after_s: float = 1.0             # PREEMPT_AFTER_S
    max_times: int = 2               # PREEMPT_MAX
    enabled: bool = True             # PREEMPTION


def preemptions(waiting: Iterable[Waiting], running: Iterable[Running], slots: Mapping[str, int],
                draining: Iterable[str], waiting_for_memory: Iterable[str], limits: PreemptLimits) -> list[str]:
    """The running jobs to stop now, most urgent need first. `slots`: the loaded models' slots
    (a model not in it is not loaded); `draining`: models the plan is emptying to make room;
    `waiting_for_memory`: models the plan would load once memory is free."""
    if not limits.enabled:
        return []
    running = list(running)
    chosen: list[str] = []
    taken: set[str] = set()

    def victims(model: str | None, below: int) -> list[Running]:
        found = [r for r in running if r.job_id not in taken and r.rank < below and r.preempted < limits.max_times
                 and (model is None or r.model == model)]
        return sorted(found, key=lambda r: (r.rank, -r.started, r.job_id))

    drained = set(draining)
    short = set(waiting_for_memory)
    for need in sorted(waiting, key=lambda w: (-w.rank, -w.waited_s, w.model)):
        if need.waited_s < limits.after_s:
            continue
        if need.model in slots:                                   # for a slot
            busy = sum(1 for r in running if r.model == need.model and r.job_id not in taken)
            free = slots[need.model] - busy
            for victim in victims(need.model, need.rank)[:max(need.count - max(free, 0), 0)]:
                chosen.append(victim.job_id)
                taken.add(victim.job_id)
        elif need.model in short:                                 # for memory a drained model holds
            for model in sorted(drained):
                on_it = [r for r in running if r.model == model and r.job_id not in taken]
                if on_it and all(r.rank < need.rank and r.preempted < limits.max_times for r in on_it):
                    for victim in on_it:
                        chosen.append(victim.job_id)
                        taken.add(victim.job_id)
    return chosen
