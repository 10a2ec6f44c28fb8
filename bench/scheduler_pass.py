"""Scheduler pass time against queue length and model count.

    python bench/scheduler_pass.py [--json]

One pass is what the service does to decide, without I/O: summarise the waiting index
(queue_manager.WaitingIndex.demand: best effective priority per model, with aging) and plan
(vram_scheduler.plan) over a snapshot in which part of the models are loaded, some busy, and
memory is short, so the plan has to evict. Pending jobs (100, 1,000, 10,000) spread over 10 or
50 models with skewed popularity and mixed priorities. Targets: under 1 ms at 10,000 pending,
and no worse than linear growth with the number of models.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from bench.common import emit_json, machine, table  # noqa: E402
from queue_manager import WaitingIndex  # noqa: E402
from vram_scheduler import Limits, Phase, ResidentModel, Snapshot, plan  # noqa: E402

GB = 10 ** 9


def waiting_jobs(pending: int, n_models: int, seed: int = 1):
    """`pending` jobs over `n_models` (popularity 1/rank, mixed priorities) in a waiting index, and
    a size for each model: (rng, names, index, sizes)."""
    rng = random.Random(seed)
    names = [f"model-{i}:7b" for i in range(n_models)]
    weights = [1 / (i + 1) for i in range(n_models)]
    index = WaitingIndex(aging_s=60)
    for j in range(pending):
        index.add(f"job-{j}", rng.choices(names, weights)[0], rng.choice((0, 1, 1, 2)), rng.uniform(0, 100))
    return rng, names, index, {n: int(rng.uniform(1, 9) * GB) for n in names}


def world(pending: int, n_models: int, seed: int = 1):
    rng, names, index, sizes = waiting_jobs(pending, n_models, seed)
    resident, used = [], 0
    for name in names:              # the most popular models fill the memory, as they would
        if used + sizes[name] > 30 * GB:
            break
        resident.append(ResidentModel(name, Phase.LOADED, sizes[name], rng.choice((0, 0, 3)), rng.uniform(0, 100), 4))
        used += sizes[name]
    return index, tuple(resident), sizes


def one_pass(index: WaitingIndex, resident, sizes, now: float):
    demand = index.demand(now)
    snapshot = Snapshot(32 * GB, 32 * GB, resident, tuple(demand), {d.model: sizes[d.model] for d in demand},
                        Limits(max_running=64))
    return plan(snapshot)


def measure(pending: int, n_models: int, repeats: int) -> dict:
    index, resident, sizes = world(pending, n_models)
    one_pass(index, resident, sizes, 100.0)                       # warm up
    times = []
    for i in range(repeats):
        t0 = time.perf_counter()
        one_pass(index, resident, sizes, 100.0 + i * 0.1)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"pending": pending, "models": n_models, "median_ms": round(statistics.median(times), 4),
            "p99_ms": round(times[int(0.99 * (len(times) - 1))], 4), "max_ms": round(times[-1], 4)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = [measure(p, m, args.repeats) for m in (10, 50) for p in (100, 1000, 10000)]
    print(f"scheduler pass (demand summary + plan), {args.repeats} passes each")
    print(table([[r["pending"], r["models"], r["median_ms"], r["p99_ms"], r["max_ms"]] for r in results],
                ["pending", "models", "median ms", "p99 ms", "max ms"]))
    at_10k = [r for r in results if r["pending"] == 10000]
    max_10k = max(r["p99_ms"] for r in at_10k)
    by_models = {r["models"]: r["median_ms"] for r in at_10k}
    growth = by_models[50] / by_models[10]
    print(f"p99 at 10,000 pending: {max_10k:.3f} ms (target < 1 ms); 10 -> 50 models: x{growth:.2f} "
          f"(linear would be x5)")
    emit_json(args.json, {"max_pass_ms_10k": max_10k, "models_growth_10_to_50": round(growth, 3),
                          "passes": results, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
