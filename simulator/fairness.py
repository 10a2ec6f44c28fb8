"""Measures of how fairly a run of the discrete-event simulator shared the GPU between tenants
(`bench/sharing.py`). Pure functions of the finished jobs.

Service is counted in the fair share's unit (scheduling/fair_share.py): an output token counts
OUTPUT_WEIGHT; the simulator's jobs have no prompt. A job's service is counted when it starts,
the moment the scheduler commits the GPU to it.
"""
from __future__ import annotations

import itertools
from collections.abc import Iterable

from scheduling.fair_share import DEFAULT_OUTPUT_WEIGHT
from simulator.des import Job


def cost(job: Job, output_weight: float = DEFAULT_OUTPUT_WEIGHT) -> float:
    return output_weight * job.tokens


def max_service_gap(jobs: list[Job], output_weight: float = DEFAULT_OUTPUT_WEIGHT) -> float:
    """The largest difference in service received by two tenants over any stretch of time in
    which both had work waiting all along (what VTC bounds by twice the largest request)."""
    events = []                      # (time, order, tenant, change in waiting, service)
    for job in jobs:
        assert job.started is not None
        events.append((job.arrival, 1, job.tenant, 1, 0.0))
        events.append((job.started, 0, job.tenant, -1, cost(job, output_weight)))
    events.sort(key=lambda e: (e[0], e[1]))
    tenants = sorted({job.tenant for job in jobs})
    waiting = dict.fromkeys(tenants, 0)
    served = dict.fromkeys(tenants, 0.0)
    since: dict[tuple[str, str], tuple[float, float]] = {}      # pair -> both tenants' service when both began waiting
    worst = 0.0
    for _, _, tenant, change, service in events:
        served[tenant] += service
        waiting[tenant] += change
        for a, b in itertools.combinations(tenants, 2):
            pair = (a, b)
            if pair in since:
                base_a, base_b = since[pair]
                worst = max(worst, abs((served[a] - base_a) - (served[b] - base_b)))
            both = waiting[a] > 0 and waiting[b] > 0
            if both and pair not in since:
                since[pair] = (served[a], served[b])
            elif not both:
                since.pop(pair, None)
    return worst


def max_min_shares(demand: dict[str, float], capacity: float) -> dict[str, float]:
    """Each tenant's max-min fair share of `capacity` given what it asks for (water-filling):
    no tenant gets more than it asks, and what one does not need goes equally to the others."""
    shares: dict[str, float] = {}
    left, open_ = capacity, sorted(demand, key=lambda t: demand[t])
    while open_:
        equal = left / len(open_)
        tenant = open_[0]
        if demand[tenant] <= equal:
            shares[tenant] = demand[tenant]
            left -= demand[tenant]
            open_.pop(0)
        else:
            for t in open_:
                shares[t] = equal
            break
    return shares


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index: 1 when all are equal, 1/n when one has everything."""
    xs = list(values)
    squares = sum(x * x for x in xs)
    return (sum(xs) ** 2) / (len(xs) * squares) if squares > 0 else 1.0


def fair_share_index(jobs: list[Job], until: float, output_weight: float = DEFAULT_OUTPUT_WEIGHT) -> float:
    """Jain's index of each tenant's service, up to `until` (while work arrives), over its max-min
    fair share of what the GPU served in that time: 1.0 when every tenant got its fair share."""
    tenants = sorted({job.tenant for job in jobs})
    asked = {t: sum(cost(j, output_weight) for j in jobs if j.tenant == t and j.arrival < until) for t in tenants}
    got = {t: sum(cost(j, output_weight) for j in jobs if j.tenant == t and j.started is not None and j.started < until)
           for t in tenants}
    fair = max_min_shares(asked, sum(got.values()))
    return jain_index(got[t] / fair[t] for t in tenants if fair[t] > 0)
