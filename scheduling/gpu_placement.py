"""Where a runtime puts a model among a node's GPUs: a pure function of the free memory per GPU.

Ollama's rule (server/sched.go as of August 2026, `bestSingleGPUFit` and
`bestGPUGroupByAvailableMemory`; older versions' `pickBestFullFitByLibrary` differs in detail):
unless OLLAMA_SCHED_SPREAD is set, a model goes whole on the single GPU with the most free
memory, provided it needs at most 80% of that GPU's free memory; otherwise it is split over all
the node's GPUs, layer by layer, in proportion to their free memory. So a 10 GB model does fit
two GPUs with 6 GB free each (split), and a 4 GB one goes whole on the freer of them.

`GpuSplit` says what the manager lets a model do:

* `ollama`: the rule above (the default; what Ollama does);
* `spread`: always split over every GPU (`OLLAMA_SCHED_SPREAD=1` on the runtime);
* `single`: one GPU only, never split (a runtime that cannot split a model).
"""
from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

SINGLE_GPU_FILL = 0.8      # Ollama places a model on one GPU only if it needs <= 80% of its free memory


class GpuSplit(StrEnum):
    OLLAMA = "ollama"
    SPREAD = "spread"
    SINGLE = "single"


def place(need: int, free: Sequence[int], split: GpuSplit = GpuSplit.OLLAMA) -> tuple[int, ...] | None:
    """The bytes `need` takes on each GPU given each GPU's `free` bytes, or None if it fits
    nowhere. One GPU (or none: one pool) is the simple case: it fits if `need <= free`."""
    n = len(free)
    if n == 0:
        return None
    if n == 1:
        return (need,) if need <= free[0] else None
    if split is not GpuSplit.SPREAD:
        best = max(range(n), key=lambda i: (free[i], -i))
        limit = free[best] if split is GpuSplit.SINGLE else int(free[best] * SINGLE_GPU_FILL)
        if need <= limit:
            return tuple(need if i == best else 0 for i in range(n))
        if split is GpuSplit.SINGLE:
            return None
    return spread(need, free)


def spread(need: int, free: Sequence[int]) -> tuple[int, ...] | None:
    """`need` split over the GPUs in proportion to their free memory; None if it exceeds it all."""
    room = [max(f, 0) for f in free]
    total = sum(room)
    if need > total or total <= 0:
        return None
    shares = [need * r // total for r in room]
    rest = need - sum(shares)
    for i in sorted(range(len(room)), key=lambda i: -(room[i] - shares[i])):
        if rest <= 0:
            break
        extra = min(rest, room[i] - shares[i])
        shares[i] += extra
        rest -= extra
    return tuple(shares)
