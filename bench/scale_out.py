"""Scale-out: Model Manager's scheduler over several nodes, and warm pools, in virtual time.

    python bench/scale_out.py [--jobs-per-node 1000] [--seeds 7,1,3,11] [--passes 1000] [--json]

Runs the GPU simulator's physics (simulator/des.py, as bench/scheduling_quality.py does) on 1 to
8 nodes, each its own 24 GB GPU with its own throughput and load bandwidth, on one virtual
clock; the manager (simulator/policies.py ManagerPolicy) plans every step with
cluster_plan.plan_cluster and carries out each node's plan on that node. Three parts:

1. Throughput: 1, 2, 4 and 8 nodes on the memory-pressure trace (PRESSURE_CATALOG: eight 7B-14B
   models, two or three fit on a node), arrivals and jobs scaled with the nodes (12 jobs/s and
   `--jobs-per-node` per node: more than a node can serve, so queues build). Throughput = jobs /
   makespan; per node, relative to one node. Also below saturation (4 jobs/s per node), where
   spreading a popular model's work over nodes matters more than keeping every node busy. The
   first seed's runs in full, then the ratios for every seed (`--seeds`: each seed is another
   trace, and the ratio moves with the trace).
2. The scheduler pass at 8 nodes x 50 models x 10,000 waiting jobs: WaitingIndex.demand plus
   plan_cluster (and each node's plan), over nodes with models loaded and jobs running.
3. Warm pools and preloading on the pressure trace, one node and four: the baseline; a pinned
   model (the most popular, and the most popular that leaves room beside it for every other
   model's first estimate); preloading predicted models (warm_pool.RecentArrivals, 120 s
   window, 2 models); and pinning with preloading (`--skip-warm` leaves this part out). The
   cost: loads, weights moved, and loads of a model that ran no job before it was unloaded
   (or the run ended). A run left with jobs that can never start prints STUCK (waiting forever) or NEVER FITS (the
   planner says a model cannot fit beside the pinned one: the service fails its jobs with that reason).

Targets: throughput per node at 8 nodes >= 0.9 of one node's (on every seed's trace; the mean
is printed too); pass median and p99 < 2 ms; no out-of-memory error anywhere. Each target
prints PASS or MISS; the exit status is 1 only on an out-of-memory error, a job left
unfinished in part 1, or a crash.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from bench.common import emit_json, machine, percentile, table  # noqa: E402
from bench.scheduler_pass import waiting_jobs  # noqa: E402
from bench.scheduling_quality import PHYSICS, PRESSURE_CATALOG, SLOTS  # noqa: E402
from scheduling.cluster_plan import NodeState, plan_cluster  # noqa: E402
from scheduling.model_memory import estimated_need, kv_cache_bytes  # noqa: E402
from simulator.des import RunResult, SimModel, make_trace, run  # noqa: E402
from simulator.policies import ManagerPolicy  # noqa: E402
from vram_scheduler import Limits, Phase, ResidentModel, Snapshot  # noqa: E402

GB = 10 ** 9
NODE_BYTES = 24 * GB
RATE_PER_NODE = 12.0          # the pressure regime's rate: more than a node serves
LIGHT_RATE_PER_NODE = 4.0     # below saturation
NODE_COUNTS = (1, 2, 4, 8)
WARM_NODES = (1, 4)
PRELOAD = dict(preload_window_s=120.0, preload_limit=2)
TARGETS = {"throughput_per_node_8": 0.9, "pass_ms": 2.0}


def one_run(policy: ManagerPolicy, nodes: int, jobs_per_node: int, rate_per_node: float, seed: int) -> RunResult:
    trace = make_trace(PRESSURE_CATALOG, jobs_per_node * nodes, rate_per_node * nodes, seed=seed)
    return run(policy, trace, PRESSURE_CATALOG, NODE_BYTES, **PHYSICS, nodes=nodes)


def figures(r: RunResult, p: ManagerPolicy) -> dict:
    return {"jobs": len(r.jobs), "makespan_s": round(r.makespan, 1), "throughput": round(r.throughput, 3),
            "high_p95_wait_s": round(percentile(r.waits("high"), 0.95), 2),
            "all_p95_wait_s": round(percentile(r.waits(), 0.95), 2), "loads": r.loads,
            "gb_loaded": round(r.bytes_loaded / GB, 1), "unused_loads": r.unused_loads,
            "unused_gb": round(r.unused_load_bytes / GB, 1), "replica_loads": p.replica_loads,
            "max_copies": p.max_copies, "warm_loads": p.warm_loads, "oom_errors": r.oom_errors,
            "peak_gb_max": round(r.peak_bytes / GB, 2), "jobs_per_node": [n.jobs_run for n in r.nodes],
            "all_finished": all(j.finished is not None for j in r.jobs)}


def scaling(jobs_per_node: int, rate_per_node: float, seed: int) -> list[dict]:
    rows: list[dict[str, Any]] = []
    for n in NODE_COUNTS:
        p = ManagerPolicy(slots_per_model=SLOTS)
        f = {"nodes": n, **figures(one_run(p, n, jobs_per_node, rate_per_node, seed), p)}
        f["throughput_per_node"] = round(f["throughput"] / n, 3)
        f["per_node_vs_one"] = round(f["throughput_per_node"] / rows[0]["throughput_per_node"], 3) if rows else 1.0
        rows.append(f)
    return rows


def print_ratios(title: str, by_seed: dict[int, list[dict]]) -> None:
    print(title)
    rows: list[list[Any]] = [[seed] + [f"{r['per_node_vs_one']} / {r['high_p95_wait_s']} / {r['all_p95_wait_s']}" for r in rows[1:]]
            for seed, rows in by_seed.items()]
    rows.append(["mean"] + [f"{statistics.mean(rows[i]['per_node_vs_one'] for rows in by_seed.values()):.3f}"
                            for i in range(1, len(NODE_COUNTS))])
    print(table(rows, ["seed"] + [f"{n} nodes" for n in NODE_COUNTS[1:]]))


def print_scaling(title: str, rows: list[dict]) -> None:
    print(title)
    print(table([[r["nodes"], r["jobs"], r["makespan_s"], r["throughput"], r["throughput_per_node"],
                  r["per_node_vs_one"], r["high_p95_wait_s"], r["all_p95_wait_s"], r["loads"], r["replica_loads"],
                  r["max_copies"], f"{min(r['jobs_per_node'])}-{max(r['jobs_per_node'])}", r["oom_errors"],
                  r["peak_gb_max"]] for r in rows],
                ["nodes", "jobs", "makespan s", "jobs/s", "jobs/s/node", "x one node", "high p95 s", "all p95 s",
                 "loads", "replica loads", "max copies", "jobs per node", "OOM", "peak GB/node"]))


# --- the scheduler pass ------------------------------------------------------------------------
def cluster_world(nodes: int, n_models: int, pending: int, seed: int = 1):
    """A waiting index of `pending` jobs over `n_models` (skewed popularity, mixed priorities),
    and `nodes` 24 GB nodes, each filled with popular models (the most popular on several), some
    with jobs running, one loading on every other node."""
    rng, names, index, sizes = waiting_jobs(pending, n_models, seed)
    budget = NODE_BYTES - 2 ** 30
    states = []
    for i in range(nodes):
        resident: list[ResidentModel] = []
        used = 0
        for name in rng.sample(names[:16], 16):
            if used + sizes[name] > budget:
                continue
            phase = Phase.LOADING if i % 2 and not resident else Phase.LOADED
            running = 0 if phase is Phase.LOADING else rng.choice((0, 2, 4))
            resident.append(ResidentModel(name, phase, sizes[name], running, rng.uniform(0, 100), 4,
                                          rng.uniform(0, 50), sizes[name] / PHYSICS["load_bytes_per_s"]))
            used += sizes[name]
        states.append(NodeState(f"node-{i}", True, Snapshot(budget, budget, tuple(resident), (), {},
                                                            Limits(max_running=64), now=100.0)))
    return index, states, sizes


def pass_time(passes: int, nodes: int = 8, n_models: int = 50, pending: int = 10_000) -> dict:
    index, states, sizes = cluster_world(nodes, n_models, pending)

    def one(now: float, placed: dict) -> dict:
        demand = index.demand(now)
        return plan_cluster(states, demand, {d.model: sizes[d.model] for d in demand}, placed).placed

    placed = one(100.0, {})                                       # warm up; its homes are kept
    times = []
    for i in range(passes):
        t0 = time.perf_counter()
        one(100.0 + i * 0.1, placed)
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    decided = plan_cluster(states, index.demand(100.0), sizes, placed)
    return {"nodes": nodes, "models": n_models, "pending": pending, "passes": passes,
            "resident_per_node": round(statistics.mean(len(s.snapshot.resident) for s in states), 1),
            "running": sum(m.running for s in states for m in s.snapshot.resident),
            "loads_planned": sum(len(p.loads) for p in decided.plans.values()),
            "unloads_planned": sum(len(p.unloads) + len(p.draining) for p in decided.plans.values()),
            "dispatched": sum(n for p in decided.plans.values() for _, n in p.dispatch),
            "median_ms": round(statistics.median(times), 3), "p99_ms": round(times[int(0.99 * (len(times) - 1))], 3),
            "max_ms": round(times[-1], 3)}


# --- warm pools --------------------------------------------------------------------------------
def footprint(m: SimModel) -> int:
    return m.size_bytes + kv_cache_bytes(m.arch, PHYSICS["num_ctx"], SLOTS, m.size_bytes)


def first_estimate(m: SimModel) -> int:
    """What the manager plans for a model it has not loaded yet (weights x 1.3 + KV of its slots)."""
    return estimated_need(m.size_bytes, 1.3, m.arch, PHYSICS["num_ctx"], SLOTS)


def pinnable() -> str:
    """The most popular model that leaves room beside it for every other model's first estimate
    on a node (a model that never fits beside a pinned one is never loaded: its jobs wait)."""
    budget = NODE_BYTES - 2 ** 30
    for m in PRESSURE_CATALOG:
        if all(footprint(m) + first_estimate(o) <= budget for o in PRESSURE_CATALOG if o is not m):
            return m.name
    raise RuntimeError("no model can be pinned without starving another")


def warm_pools(jobs_per_node: int, seed: int) -> list[dict]:
    top, safe = PRESSURE_CATALOG[0].name, pinnable()
    variants: list[tuple[str, dict[str, Any]]] = [("baseline", {}), (f"pinned {top}", {"pinned": frozenset({top})})]
    if safe != top:
        variants.append((f"pinned {safe}", {"pinned": frozenset({safe})}))
    variants += [("preload 120 s, 2", PRELOAD), (f"pinned {safe} + preload", {"pinned": frozenset({safe}), **PRELOAD})]
    rows = []
    for rate in (RATE_PER_NODE, LIGHT_RATE_PER_NODE):
        for n in WARM_NODES:
            for label, options in variants:
                p = ManagerPolicy(slots_per_model=SLOTS, **options)
                row = {"rate_per_node": rate, "nodes": n, "variant": label}
                try:
                    row.update(figures(one_run(p, n, jobs_per_node, rate, seed), p))
                except RuntimeError as e:           # jobs that could never run: waiting, or failed as never fitting
                    if "stuck" not in str(e) and "never fit" not in str(e):
                        raise
                    row.update(stuck=str(e), oom_errors=sum(g.memory.oom_errors for g in [x.gpu for x in p.nodes]),
                               waiting=len(p.index))
                rows.append(row)
    return rows


def print_warm(rows: list[dict]) -> None:
    base = {(r["rate_per_node"], r["nodes"]): r for r in rows if r["variant"] == "baseline"}
    out = []
    for r in rows:
        b = base[(r["rate_per_node"], r["nodes"])]
        if "stuck" in r:
            what = "NEVER FITS" if "never fit" in r["stuck"] else "STUCK"
            out.append([r["rate_per_node"], r["nodes"], r["variant"], what, f"{r['waiting']} jobs never ran"]
                       + ["-"] * 7 + [r["oom_errors"]])
            continue
        out.append([r["rate_per_node"], r["nodes"], r["variant"], r["loads"], f"{r['loads'] - b['loads']:+d}",
                    r["warm_loads"], r["gb_loaded"], f"{r['unused_loads']} / {r['unused_gb']}", r["makespan_s"],
                    r["high_p95_wait_s"], r["all_p95_wait_s"], r["replica_loads"], r["oom_errors"]])
    print(table(out, ["jobs/s/node", "nodes", "variant", "loads", "vs base", "warm loads", "GB loaded",
                      "unused loads / GB", "makespan s", "high p95 s", "all p95 s", "replica loads", "OOM"]))


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs-per-node", type=int, default=1000)
    parser.add_argument("--seeds", default="7,1,3,11", help="trace seeds, comma-separated; the first in full")
    parser.add_argument("--passes", type=int, default=1000)
    parser.add_argument("--skip-warm", action="store_true", help="leave out part 3")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    seeds = [int(x) for x in args.seeds.split(",")]
    started = time.perf_counter()
    cap = f"{NODE_BYTES / GB:.0f} GB per node, {SLOTS} slots per model, {args.jobs_per_node} jobs per node"

    heavy_by_seed = {seed: scaling(args.jobs_per_node, RATE_PER_NODE, seed) for seed in seeds}
    light_by_seed = {seed: scaling(args.jobs_per_node, LIGHT_RATE_PER_NODE, seed) for seed in seeds}
    heavy, light = heavy_by_seed[seeds[0]], light_by_seed[seeds[0]]
    print_scaling(f"1. scale-out, pressure trace at {RATE_PER_NODE:g} jobs/s per node ({cap}), seed {seeds[0]}:", heavy)
    print_scaling(f"\n   below saturation, {LIGHT_RATE_PER_NODE:g} jobs/s per node, seed {seeds[0]}:", light)
    print_ratios(f"\n   every seed, {RATE_PER_NODE:g} jobs/s per node: throughput per node x one node's / high p95 s / "
                 "all p95 s", heavy_by_seed)
    print_ratios(f"\n   every seed, {LIGHT_RATE_PER_NODE:g} jobs/s per node: the same", light_by_seed)

    passes = pass_time(args.passes)
    print(f"\n2. scheduler pass (WaitingIndex.demand + plan_cluster), {passes['nodes']} nodes x {passes['models']} "
          f"models x {passes['pending']:,} waiting, {passes['resident_per_node']} models resident per node, "
          f"{passes['running']} jobs running, {passes['passes']} passes: median {passes['median_ms']} ms, "
          f"p99 {passes['p99_ms']} ms, max {passes['max_ms']} ms (a pass plans {passes['loads_planned']} loads, "
          f"{passes['unloads_planned']} unloads or drains, {passes['dispatched']} dispatches)")

    warm = [] if args.skip_warm else warm_pools(args.jobs_per_node, seeds[0])
    if warm:
        print(f"\n3. warm pools and preloading, pressure trace ({cap}); 'vs base': loads beyond the baseline's; "
              "'warm loads': loads of pinned or predicted models without waiting work; 'unused': loads of a model "
              "that ran no job before it was unloaded or the run ended")
        print_warm(warm)

    scaled = [r for rows in [*heavy_by_seed.values(), *light_by_seed.values()] for r in rows]
    oom = sum(r.get("oom_errors", 0) for r in scaled + warm)
    unfinished = sum(1 for r in scaled if not r["all_finished"])
    at_8 = [next(r["per_node_vs_one"] for r in rows if r["nodes"] == 8) for rows in heavy_by_seed.values()]
    worst_8, mean_8 = min(at_8), round(statistics.mean(at_8), 3)
    met = {"throughput_per_node_8": worst_8 >= TARGETS["throughput_per_node_8"],
           "pass_median_ms": passes["median_ms"] < TARGETS["pass_ms"],
           "pass_p99_ms": passes["p99_ms"] < TARGETS["pass_ms"], "oom_errors": oom == 0}
    print("\ntargets:")
    print(f"  {verdict(met['throughput_per_node_8'])} throughput per node at 8 nodes x{worst_8} of one node's on the "
          f"worst of {len(at_8)} traces, x{mean_8} on average (target >= {TARGETS['throughput_per_node_8']})")
    print(f"  {verdict(met['pass_median_ms'] and met['pass_p99_ms'])} scheduler pass at 8 x 50 x 10,000: median "
          f"{passes['median_ms']} ms, p99 {passes['p99_ms']} ms (target < {TARGETS['pass_ms']} ms)")
    print(f"  {verdict(met['oom_errors'])} out-of-memory errors: {oom}")
    stuck = [f"{r['variant']} on {r['nodes']} node(s) at {r['rate_per_node']:g}/s" for r in warm if "stuck" in r]
    if stuck:
        print(f"  NOTE runs stuck with jobs that could never run beside a pinned model: {'; '.join(stuck)}")
    print(f"({time.perf_counter() - started:.1f}s)")
    emit_json(args.json, {"throughput_per_node_8_vs_one": worst_8, "throughput_per_node_8_vs_one_mean": mean_8,
                          "pass_median_ms": passes["median_ms"], "pass_p99_ms": passes["p99_ms"], "oom_errors": oom,
                          "targets_met": met, "scaling": heavy_by_seed, "scaling_light": light_by_seed,
                          "pass": passes, "warm_pools": warm, "stuck": stuck, "jobs_per_node": args.jobs_per_node,
                          "seeds": seeds,
                          "machine": machine()})
    return 1 if oom or unfinished else 0


if __name__ == "__main__":
    raise SystemExit(main())
