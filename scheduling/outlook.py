"""When will a waiting job run? Its position and an estimate of its start, per model. Pure: the
scheduler gives it each model's order of waiting jobs (`WaitingIndex.model_order`), its slots,
when its running jobs should end, and how long its jobs take; what comes out is published for
the API workers (`GET /api/job/<id>`: `position`, `eta_s`; a 429's `Retry-After`).

The estimate plays the model's slots forward: each job starts when the first slot comes free,
and holds it for the model's measured time per job (a moving mean of its recent jobs). A model
that is not loaded starts once a load of its measured (or estimated) length is done. What it
does not see: work that arrives later and goes first (a higher priority, a tenant with less
service), and the wait for memory that other models hold; it is an estimate from the current
order, refreshed every publication.
"""
from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

JOB_S_DECAY = 0.2                  # weight of each finished job in a model's mean time per job
OUTLOOK_KEY = "outlook"            # where the scheduler publishes it (store state)
OUTLOOK_LIMIT = 1000               # waiting jobs per model with an estimate (the rest: position only past it)


@dataclass(frozen=True)
class ModelOutlook:
    slots: int                     # over every node that has it loaded (at least 1)
    ends: tuple[float, ...]        # when each running job should end (absolute times)
    job_s: float | None            # its mean time per job; None until one has finished
    ready_at: float                # when it can start jobs: now if loaded, else once loaded


def mean_job_s(previous: float | None, seconds: float) -> float:
    return seconds if previous is None else previous + JOB_S_DECAY * (seconds - previous)


def starts(order: list[str], model: ModelOutlook, now: float) -> dict[str, float | None]:
    """The estimated start (absolute time) of each job in `order`; None without a measured job time."""
    if model.job_s is None:
        return dict.fromkeys(order)
    free = [max(end, now, model.ready_at) for end in model.ends[:model.slots]]
    free += [max(now, model.ready_at)] * max(model.slots - len(free), 0)
    heapq.heapify(free)
    out: dict[str, float | None] = {}
    for job_id in order:
        at = heapq.heappop(free)
        out[job_id] = at
        heapq.heappush(free, at + model.job_s)
    return out


def outlook_document(orders: dict[str, list[tuple[str, str]]], models: dict[str, ModelOutlook],
                     now: float) -> dict[str, Any]:
    """What is published: for each waiting job (the first OUTLOOK_LIMIT of each model, as
    (job id, tenant)), its position in its model's order, its estimated start and its tenant;
    the time it was made."""
    jobs: dict[str, list[float | int | str | None]] = {}
    for name, order in orders.items():
        model = models.get(name) or ModelOutlook(1, (), None, now)
        tenants = dict(order)
        for position, (job_id, at) in enumerate(starts([job_id for job_id, _ in order], model, now).items()):
            jobs[job_id] = [position, round(at, 3) if at is not None else None, tenants[job_id]]
    return {"at": now, "jobs": jobs}


def job_outlook(document: dict[str, Any] | None, job_id: str, now: float) -> tuple[int | None, float | None]:
    """(position, eta_s) of a waiting job from the published document ((None, None) if it is not in it)."""
    if not document:
        return None, None
    found = (document.get("jobs") or {}).get(job_id)
    if not found:
        return None, None
    position, at = found[0], found[1]
    return int(position), (round(max(float(at) - now, 0.0), 2) if at is not None else None)


def retry_after_s(document: dict[str, Any] | None, now: float, tenant: str | None = None, default: float = 2.0,
                  most: float = 60.0) -> int:
    """A 429's Retry-After: seconds until the next waiting job (the tenant's own, for a tenant at
    its limit) should start and so free a place in the queue; `default` without an estimate."""
    etas = [float(entry[1]) - now for entry in ((document or {}).get("jobs") or {}).values()
            if entry[1] is not None and (tenant is None or (len(entry) > 2 and entry[2] == tenant))]
    seconds = min(etas) if etas else default
    return int(min(max(seconds, 1.0), most) + 0.999)
