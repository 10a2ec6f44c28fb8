"""Sharing one GPU between teams: the fair share between tenants, measured in the discrete-event
simulator (simulator/des.py) on the same traces under three policies.

    python bench/sharing.py [--seconds 300] [--seed 7] [--json]

* today: Model Manager with FAIR_SHARE=false (first come, first served inside a priority);
* fair: Model Manager as it ships (the Virtual Token Counter between tenants);
* ollama-tuned: Ollama's own scheduler, NUM_PARALLEL=4 (first come, first served).

`fairness`: one model with 4 slots; tenant `flood` submits at three times its share of the GPU
(its share: a third), tenants `steady-1` and `steady-2` at a quarter of the GPU each, all at one
priority, for `--seconds`. Figures, for each policy:
  - max_service_gap_over_bound: the largest gap in service between two tenants over any stretch
    in which both had work waiting, over VTC's bound (twice the costliest job). Target <= 1.0.
  - jain_index: Jain's index of each tenant's service (while work arrives) over its max-min fair
    share of what was served. Target >= 0.95.
  - victim_p95_wait_vs_alone: steady-1's p95 wait under the flood over its p95 wait on the same
    trace without the flood (the steady tenants alone). Target <= 1.5.
`preemption`: the overnight batch beside a quality-control evaluator. Four 7B-14B models on a
24 GB GPU (two or three fit at once); a batch of long low-priority generations (500-1,500
tokens) for all four arrives at once and fills every slot and the memory; short high-priority
jobs (20-60 tokens) arrive at random (one every 5 s on average) for any of the four. The same
trace with preemption (PREEMPTION on, PREEMPT_AFTER_S=1) and without:
  - high_p95_wait_vs_without: the high-priority p95 wait with preemption over without. Target <= 0.1.
  - wasted_token_fraction: output tokens thrown away (runs that started over) over all tokens
    generated. Target <= 0.05. The batch is taken as generations that start over when stopped
    (the worst case: a chat, or a raw generate, resumes and throws nothing away).
`pressure`: bench/scheduling_quality.py's memory-pressure regime, Model Manager with preemption
against tuned Ollama: high_p95_wait_ratio (target <= 0.1) and makespan_ratio (target <= 1.05).
"""
from __future__ import annotations

import argparse
import math
import random
import time
from typing import Any

from bench.common import emit_json, machine, percentile, table
from bench.scheduling_quality import PRESSURE_CATALOG, REGIMES
from scheduling.model_memory import ModelArch
from scheduling.preemption import PreemptLimits
from simulator.des import Job, SimModel, make_trace, run
from simulator.fairness import cost, fair_share_index, max_service_gap
from simulator.policies import ManagerPolicy, OllamaPolicy

GB = 10 ** 9
MODEL = SimModel("qwen2.5:7b", int(4.7 * GB), ModelArch(28, 28, 4, 3584, 32768))
SLOTS = 4
PHYSICS: dict[str, Any] = {"load_bytes_per_s": 2 * GB, "tokens_per_s": 400.0, "batch_gain": 0.25, "num_ctx": 2048}
MEAN_TOKENS = 100.0
# the GPU's throughput with every slot busy: tokens/s x (1 + gain x log2 slots), in jobs a second
CAPACITY_JOBS_S = PHYSICS["tokens_per_s"] * (1 + PHYSICS["batch_gain"] * math.log2(SLOTS)) / MEAN_TOKENS
TENANTS = {"flood": 1.0, "steady-1": 0.25, "steady-2": 0.25}     # offered load, in shares of the capacity
TARGETS = {"max_service_gap_over_bound": 1.0, "jain_index": 0.95, "victim_p95_wait_vs_alone": 1.5}


def trace(seconds: float, seed: int, tenants: dict[str, float]) -> list[Job]:
    """Poisson arrivals per tenant at its share of the capacity; answer lengths log-normal
    around MEAN_TOKENS (as simulator.des.make_trace draws them)."""
    rng = random.Random(seed)
    sigma = 0.6
    mu = math.log(MEAN_TOKENS) - sigma ** 2 / 2
    arrivals: list[tuple[float, str, int]] = []
    for tenant, share in tenants.items():
        t = 0.0
        while True:
            t += rng.expovariate(share * CAPACITY_JOBS_S)
            if t >= seconds:
                break
            arrivals.append((t, tenant, max(8, min(1024, int(rng.lognormvariate(mu, sigma))))))
    arrivals.sort()
    return [Job(i, MODEL.name, "normal", at, tokens, tenant=tenant) for i, (at, tenant, tokens) in enumerate(arrivals)]


def policies() -> list:
    return [ManagerPolicy("today", slots_per_model=SLOTS, fair=False), ManagerPolicy("fair", slots_per_model=SLOTS),
            OllamaPolicy("ollama-tuned", max_loaded=0, num_parallel=SLOTS)]


def p95_wait(jobs: list[Job], tenant: str) -> float:
    return percentile([j.started - j.arrival for j in jobs if j.tenant == tenant and j.started is not None], 0.95)


def fairness(seconds: float, seed: int) -> dict[str, dict[str, float]]:
    jobs = trace(seconds, seed, TENANTS)
    bound = 2 * max(cost(j) for j in jobs)
    alone = trace(seconds, seed, {t: s for t, s in TENANTS.items() if t != "flood"})
    out = {}
    for policy, quiet in zip(policies(), policies(), strict=True):
        result = run(policy, jobs, [MODEL], 24 * GB, **PHYSICS)         # run() works on copies of the jobs
        calm = run(quiet, alone, [MODEL], 24 * GB, **PHYSICS)
        victim, victim_alone = p95_wait(result.jobs, "steady-1"), p95_wait(calm.jobs, "steady-1")
        out[policy.name] = {
            "max_service_gap_over_bound": round(max_service_gap(result.jobs) / bound, 3),
            "jain_index": round(fair_share_index(result.jobs, until=seconds), 4),
            "victim_p95_wait_vs_alone": round(victim / max(victim_alone, 1e-9), 2),
            "victim_p95_wait_s": round(victim, 3), "victim_p95_wait_alone_s": round(victim_alone, 3),
            "flood_p95_wait_s": round(p95_wait(result.jobs, "flood"), 2), "jobs": len(jobs),
        }
    return out


PREEMPT_TARGETS = {"high_p95_wait_vs_without": 0.1, "wasted_token_fraction": 0.05}
PRESSURE_TARGETS = {"high_p95_wait_ratio": 0.1, "makespan_ratio": 1.05}


def batch_beside_evaluator(seed: int, resumable: bool, batch: int = 240,
                           seconds: float = 600.0) -> tuple[list[Job], list[SimModel]]:
    rng = random.Random(seed)
    models = PRESSURE_CATALOG[:4]
    jobs = [Job(i, models[i % 4].name, "low", rng.uniform(0.0, 5.0), rng.randint(500, 1500), resumable=resumable)
            for i in range(batch)]
    t = 10.0
    while t < seconds:
        t += rng.expovariate(0.2)
        jobs.append(Job(len(jobs), rng.choice(models).name, "high", t, rng.randint(20, 60)))
    jobs.sort(key=lambda j: j.arrival)
    return [Job(i, j.model, j.priority, j.arrival, j.tokens, resumable=j.resumable) for i, j in enumerate(jobs)], models


def preemption(seed: int, resumable: bool = False) -> dict[str, Any]:
    trace_jobs, models = batch_beside_evaluator(seed, resumable)
    runs = {}
    for name, limits in (("with", PreemptLimits(after_s=1.0, max_times=2)), ("without", PreemptLimits(enabled=False))):
        policy = ManagerPolicy(f"preemption-{name}", slots_per_model=SLOTS, preempt=limits)
        runs[name] = (run(policy, trace_jobs, models, 24 * GB, **PHYSICS), policy)
    high = {name: percentile(result.waits("high"), 0.95) for name, (result, _) in runs.items()}
    result, policy = runs["with"]
    wasted = sum(j.wasted for j in result.jobs)
    return {"high_p95_wait_vs_without": round(high["with"] / max(high["without"], 1e-9), 3),
            "wasted_token_fraction": round(wasted / (wasted + sum(j.tokens for j in result.jobs)), 4),
            "high_p95_wait_s": round(high["with"], 2), "high_p95_wait_without_s": round(high["without"], 2),
            "preemptions": policy.preemptions, "jobs": len(trace_jobs),
            "makespan_vs_without": round(result.makespan / runs["without"][0].makespan, 3)}


def pressure(seed: int, jobs: int = 2000) -> dict[str, Any]:
    models, gpu_bytes, rate = REGIMES["pressure-24gb"]
    trace_jobs = make_trace(models, jobs, rate, seed=seed)
    mm = ManagerPolicy(slots_per_model=SLOTS, preempt=PreemptLimits(after_s=1.0, max_times=2))
    tuned = OllamaPolicy("ollama-tuned", max_loaded=0, num_parallel=SLOTS)
    ours, theirs = (run(p, trace_jobs, models, gpu_bytes, **PHYSICS) for p in (mm, tuned))
    high = [percentile(r.waits("high"), 0.95) for r in (ours, theirs)]
    return {"high_p95_wait_ratio": round(high[0] / max(high[1], 1e-9), 3),
            "makespan_ratio": round(ours.makespan / theirs.makespan, 3),
            "high_p95_wait_s": round(high[0], 2), "ollama_tuned_high_p95_wait_s": round(high[1], 2),
            "preemptions": mm.preemptions, "wasted_tokens": sum(j.wasted for j in ours.jobs), "jobs": jobs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=300.0, help="how long work arrives")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    figures = fairness(args.seconds, args.seed)
    print(f"fairness: one model, {SLOTS} slots; flood at 3x its share, two steady tenants at 1/4 of the GPU each, "
          f"{args.seconds:.0f} s of arrivals ({figures['fair']['jobs']} jobs), seed {args.seed}")
    keys = ["max_service_gap_over_bound", "jain_index", "victim_p95_wait_vs_alone", "victim_p95_wait_s",
            "victim_p95_wait_alone_s", "flood_p95_wait_s"]
    print(table([[name, *(f[k] for k in keys)] for name, f in figures.items()], ["policy", *keys]))
    fair = figures["fair"]
    met = {"max_service_gap_over_bound": fair["max_service_gap_over_bound"] <= TARGETS["max_service_gap_over_bound"],
           "jain_index": fair["jain_index"] >= TARGETS["jain_index"],
           "victim_p95_wait_vs_alone": fair["victim_p95_wait_vs_alone"] <= TARGETS["victim_p95_wait_vs_alone"]}
    print("targets for 'fair' (gap/bound <= 1.0, Jain >= 0.95, victim p95 vs alone <= 1.5): "
          + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in met.items()))
    stopped = preemption(args.seed)
    print(f"\npreemption: a batch of {stopped['jobs']} jobs (long, low priority, starting over when stopped) "
          f"beside short high-priority jobs, 4 models on 24 GB")
    print(table([[k, v] for k, v in stopped.items()], ["figure", "value"]))
    chats = preemption(args.seed, resumable=True)
    print(f"  the same batch as chats, which resume: high p95 wait x{chats['high_p95_wait_vs_without']} without, "
          f"wasted {chats['wasted_token_fraction']}")
    squeezed = pressure(args.seed)
    print(f"\npressure: scheduling_quality's memory-pressure regime ({squeezed['jobs']} jobs), preemption on, "
          "against tuned Ollama")
    print(table([[k, v] for k, v in squeezed.items()], ["figure", "value"]))
    checks = {**{k: stopped[k] <= v for k, v in PREEMPT_TARGETS.items()},
              **{f"pressure_{k}": squeezed[k] <= v for k, v in PRESSURE_TARGETS.items()}}
    print("targets (high p95 vs without <= 0.1, wasted <= 0.05; pressure: high p95 <= 0.1, makespan <= 1.05 x "
          "tuned Ollama): " + ", ".join(f"{k} {'met' if ok else 'MISSED'}" for k, ok in checks.items()))
    print(f"({time.perf_counter() - started:.1f}s)")
    emit_json(args.json, {"fairness": {k: fair[k] for k in TARGETS}, "fairness_by_policy": figures,
                          "fairness_targets_met": met,
                          "preemption": {k: stopped[k] for k in PREEMPT_TARGETS}, "preemption_detail": stopped,
                          "preemption_resuming": chats,
                          "pressure": {k: squeezed[k] for k in PRESSURE_TARGETS}, "pressure_detail": squeezed,
                          "preemption_targets_met": checks, "seconds": args.seconds, "seed": args.seed,
                          "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
