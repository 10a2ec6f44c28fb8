"""Preemption: when urgent work may stop running work of a lower priority. Pure: no clock, no I/O.

A waiting job that outranks running work takes its place once it has waited PREEMPT_AFTER_S:

* for a slot: its model is loaded and every slot is busy, some with lower-priority jobs: the
  lowest-priority of those, most recently started first (the least work lost), are stopped, as
  many as there are such waiting jobs;
* for memory: its model waits for memory that busy models hold with lower-priority work only
  (the models the plan drains for it, then models with no waiting work of their own, the most
  recently started first): their work is stopped until enough would be freed, so they empty
  and the plan unloads them.

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
                draining: Iterable[str], short_by: Mapping[str, int], held: Mapping[str, int],
                limits: PreemptLimits) -> list[tuple[str, str]]:
    """The running jobs to stop now, most urgent need first, each with the model it is stopped
    for. `slots`: the loaded models' slots
    (a model not in it is not loaded); `draining`: models the plan is emptying to make room;
    `short_by`: the models waiting for memory, and how many bytes they lack; `held`: what each
    resident model occupies."""
    if not limits.enabled:
        return []
    running = list(running)
    waiting = list(waiting)
    chosen: list[tuple[str, str]] = []
    taken: set[str] = set()

    def stop(victims: Iterable[Running], need: Waiting) -> None:
        for victim in victims:
            chosen.append((victim.job_id, need.model))
            taken.add(victim.job_id)

    def on(model: str) -> list[Running]:
        return [r for r in running if r.model == model and r.job_id not in taken]

    drained = sorted(set(draining))
    demanded = {w.model for w in waiting}
    for need in sorted(waiting, key=lambda w: (-w.rank, -w.waited_s, w.model)):
        if need.waited_s < limits.after_s:
            continue
        if need.model in slots:                                   # for a slot
            free = slots[need.model] - len(on(need.model))
            lower = sorted((r for r in on(need.model) if r.rank < need.rank and r.preempted < limits.max_times),
                           key=lambda r: (r.rank, -r.started, r.job_id))
            stop(lower[:max(need.count - max(free, 0), 0)], need)
        elif need.model in short_by:                              # for memory busy models hold
            missing = short_by[need.model]
            # the models the plan drains for it, then busy ones without waiting work, the most
            # recently started first (the least work lost)
            idle_later = sorted({r.model for r in running if r.model not in demanded and r.model not in drained},
                                key=lambda m: (-max(r.started for r in on(m)) if on(m) else 0.0, m))
            for model in [*drained, *idle_later]:
                if missing <= 0:
                    break
                jobs = on(model)
                if jobs and all(r.rank < need.rank and r.preempted < limits.max_times for r in jobs):
                    stop(jobs, need)
                    missing -= held.get(model, 0)
    return chosen
