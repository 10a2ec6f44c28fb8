"""Scheduling quality: Model Manager's scheduler against Ollama's own policy, on the same job trace.

    python bench/scheduling_quality.py [--jobs 2000] [--json]
    python bench/scheduling_quality.py --sweep      # MIN_RESIDENCY_LOADS 0..8 over four seeds, under pressure

Runs the GPU simulator's physics in virtual time (simulator/des.py): jobs running at once share
the GPU's throughput, loads share its load bandwidth, memory is checked at every load. Each
regime's trace (skewed model popularity, mixed priorities, arrivals faster than service) is run
under three policies (simulator/policies.py):

* model-manager: vram_scheduler.plan over the queue manager's ordering (the service's defaults,
  MIN_RESIDENCY_LOADS=4), 4 slots per model;
* model-manager-residency-0 and -8: the same with MIN_RESIDENCY_LOADS=0 (swap for every urgent
  job) and 8 (longer stays): the trade between urgent work's wait and loads under pressure;
* ollama-default: Ollama's scheduler with OLLAMA_MAX_LOADED_MODELS=3 (per GPU), NUM_PARALLEL=1;
* ollama-tuned: no loaded-model cap, NUM_PARALLEL=4.

On equal footing: Model Manager and tuned Ollama both get 4 slots per model and both pay the KV
cache of every slot (NUM_CTX tokens each, sized from each model's architecture) in every load.
Regimes: the ten registry models on a 24 GB GPU; and memory pressure, 7B-14B models on a 24 GB
GPU where two or three fit at once. Ratios are Model Manager / ollama-tuned (lower is better).
Targets: high-priority p95 wait <= 0.2 in both regimes; makespan <= 1.0 in both and <= 0.85
under memory pressure; model loads <= 1.0; zero out-of-memory errors. Each regime also gives
its makespan against a lower bound no policy can beat (`makespan_lower_bound`).
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Any, TypedDict

from bench.common import emit_json, machine, percentile, table  # noqa: E402
from model_registry import DESIGN_CATALOG  # noqa: E402
from scheduling.model_memory import ModelArch  # noqa: E402
from simulator.des import Job, RunResult, SimModel, make_trace, run  # noqa: E402
from simulator.policies import ManagerPolicy, OllamaPolicy  # noqa: E402
from vram_scheduler import Limits  # noqa: E402

GB = 10 ** 9
# name, weights GB, (layers, heads, KV heads, embedding, trained context, head size when stated)
PRESSURE_CATALOG = [SimModel(n, int(gb * GB), ModelArch(*arch)) for n, gb, arch in (
    ("qwen2.5:14b", 9.0, (48, 40, 8, 5120, 32768)), ("llama3.1:8b", 4.9, (32, 32, 8, 4096, 131072)),
    ("phi4:14b", 9.1, (40, 40, 10, 5120, 16384)), ("qwen2.5:7b", 4.7, (28, 28, 4, 3584, 32768)),
    ("gemma2:9b", 5.4, (42, 16, 8, 3584, 8192, 256)), ("mistral:7b", 4.1, (32, 32, 8, 4096, 32768)),
    ("deepseek-r1:14b", 9.0, (48, 40, 8, 5120, 131072)), ("llama2:13b", 7.4, (40, 40, 40, 5120, 4096)))]
REGIMES = {
    # name: (models, GPU bytes, arrival rate per s). 12 jobs/s of ~100 tokens offer 1,200 tokens/s:
    # more than any policy can serve (about 1,000 tokens/s with every slot busy), so queues build.
    "registry-24gb": ([SimModel(s.name, s.size_bytes, s.arch) for s in DESIGN_CATALOG], 24 * GB, 12.0),
    "pressure-24gb": (PRESSURE_CATALOG, 24 * GB, 12.0),
}
SLOTS = 4            # per model, for Model Manager and tuned Ollama alike (OLLAMA_NUM_PARALLEL=4)
NUM_CTX = 2048       # tokens of KV cache per slot, paid by both


class Physics(TypedDict):
    """The arguments of `simulator.des.run` that describe a node's physics."""
    load_bytes_per_s: float
    tokens_per_s: float
    batch_gain: float
    num_ctx: int


PHYSICS = Physics(load_bytes_per_s=2 * GB, tokens_per_s=400.0, batch_gain=0.25, num_ctx=NUM_CTX)   # the simulator's defaults


def policies():
    return [ManagerPolicy(slots_per_model=SLOTS),
            ManagerPolicy("model-manager-residency-0", slots_per_model=SLOTS, limits=Limits(min_residency_loads=0)),
            ManagerPolicy("model-manager-residency-8", slots_per_model=SLOTS, limits=Limits(min_residency_loads=8)),
            OllamaPolicy("ollama-default", max_loaded=3, num_parallel=1),
            OllamaPolicy("ollama-tuned", max_loaded=0, num_parallel=SLOTS)]


TARGETS = {"high_p95_wait_ratio": 0.2, "makespan_ratio": 1.0, "loads_ratio": 1.0}
PRESSURE_MAKESPAN_TARGET = 0.85


def targets_met(name: str, vs_tuned: dict, oom: int) -> dict[str, bool]:
    met = {k: vs_tuned[k] <= limit for k, limit in TARGETS.items()}
    if name.startswith("pressure"):
        met["makespan_ratio"] = vs_tuned["makespan_ratio"] <= PRESSURE_MAKESPAN_TARGET
    met["oom_errors"] = oom == 0
    return met


def makespan_lower_bound(trace: list[Job], n_models: int, max_running: int = 64) -> float:
    """No policy can finish sooner: all tokens at the GPU's peak rate (every slot of every model
    busy, within MAX_RUNNING_JOBS), and no later than the last arrival plus its job alone."""
    tokens_per_s, gain = PHYSICS["tokens_per_s"], PHYSICS["batch_gain"]
    peak = tokens_per_s * (1 + gain * math.log2(min(SLOTS * n_models, max_running)))
    first = min(j.arrival for j in trace)
    return max(sum(j.tokens for j in trace) / peak,
               max(j.arrival - first + j.tokens / tokens_per_s for j in trace))


def figures(result: RunResult, policy) -> dict:
    out = {"slots_per_model": policy.slots_per_model, "loads": result.loads, "unloads": result.unloads,
           "oom_errors": result.oom_errors, "makespan_s": round(result.makespan, 1),
           "peak_gb": round(result.peak_bytes / GB, 2)}
    for p in ("high", "normal", "low"):
        waits = result.waits(p)
        out[f"{p}_p50_wait_s"] = round(percentile(waits, 0.5), 2)
        out[f"{p}_p95_wait_s"] = round(percentile(waits, 0.95), 2)
    return out


SWEEP_SEEDS = (7, 1, 3, 11)
SWEEP_RESIDENCY = (0, 2, 4, 6, 8)


def sweep(jobs: int) -> None:
    """The trade MIN_RESIDENCY_LOADS makes under memory pressure, on four traces: ratios to tuned
    Ollama for loads, makespan and high-priority p95 wait."""
    models, gpu_bytes, rate = REGIMES["pressure-24gb"]
    rows = []
    for residency in SWEEP_RESIDENCY:
        row: list[int | str] = [residency]
        for seed in SWEEP_SEEDS:
            trace = make_trace(models, jobs, rate, seed=seed)
            tuned = OllamaPolicy("ollama-tuned", max_loaded=0, num_parallel=SLOTS)
            mm = ManagerPolicy(slots_per_model=SLOTS, limits=Limits(min_residency_loads=residency))
            t, m = (figures(run(p, trace, models, gpu_bytes, **PHYSICS), p) for p in (tuned, mm))
            row.append(f"{m['loads'] / t['loads']:.2f} / {m['makespan_s'] / t['makespan_s']:.3f} / "
                       f"{m['high_p95_wait_s'] / t['high_p95_wait_s']:.2f}")
        rows.append(row)
    print(f"pressure-24gb, {jobs} jobs: loads / makespan / high p95 wait, each x tuned Ollama, per trace seed")
    print(table(rows, ["MIN_RESIDENCY_LOADS"] + [f"seed {s}" for s in SWEEP_SEEDS]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--sweep", action="store_true", help="the MIN_RESIDENCY_LOADS trade, four seeds")
    args = parser.parse_args(argv)
    if args.sweep:
        sweep(args.jobs)
        return 0
    started = time.perf_counter()
    regimes: dict[str, dict] = {}
    for name, (models, gpu_bytes, rate) in REGIMES.items():
        trace = make_trace(models, args.jobs, rate, seed=args.seed)
        results: dict[str, Any] = {p.name: figures(run(p, trace, models, gpu_bytes, **PHYSICS), p) for p in policies()}
        lower_bound = makespan_lower_bound(trace, len(models))
        for r in results.values():
            r["makespan_vs_lower_bound"] = round(r["makespan_s"] / lower_bound, 3)
        mm = results["model-manager"]
        for baseline in ("ollama-default", "ollama-tuned"):
            b = results[baseline]
            results[f"vs_{baseline}"] = {
                "loads_ratio": round(mm["loads"] / max(b["loads"], 1), 3),
                "makespan_ratio": round(mm["makespan_s"] / b["makespan_s"], 3),
                "high_p95_wait_ratio": round(mm["high_p95_wait_s"] / max(b["high_p95_wait_s"], 1e-9), 3),
            }
        results["makespan_lower_bound_s"] = round(lower_bound, 1)
        results["targets_met"] = targets_met(name, results["vs_ollama-tuned"], mm["oom_errors"])
        regimes[name] = results
        print(f"\n{name}: {args.jobs} jobs over {len(models)} models at {rate}/s, GPU {gpu_bytes / GB:.0f} GB, "
              f"{NUM_CTX} tokens of context per slot; makespan lower bound {lower_bound:.1f} s")
        rows = [[p, r["slots_per_model"], r["loads"], r["makespan_s"], r["makespan_vs_lower_bound"], r["high_p50_wait_s"],
                 r["high_p95_wait_s"], r["normal_p95_wait_s"], r["low_p95_wait_s"], r["oom_errors"], r["peak_gb"]]
                for p, r in results.items() if isinstance(r, dict) and "slots_per_model" in r]
        print(table(rows, ["policy", "slots", "loads", "makespan s", "/ bound", "high p50 s", "high p95 s",
                           "normal p95 s", "low p95 s", "OOM", "peak GB"]))
        for baseline in ("ollama-default", "ollama-tuned"):
            v = results[f"vs_{baseline}"]
            print(f"  vs {baseline}: loads x{v['loads_ratio']}, makespan x{v['makespan_ratio']}, "
                  f"high p95 wait x{v['high_p95_wait_ratio']}")
    worst = {k: max(r["vs_ollama-tuned"][k] for r in regimes.values())
             for k in ("loads_ratio", "makespan_ratio", "high_p95_wait_ratio")}
    oom = sum(r["model-manager"]["oom_errors"] for r in regimes.values())
    print("\ntargets vs ollama-tuned (high p95 wait <= 0.2, makespan <= 1.0 and <= 0.85 under pressure, "
          "loads <= 1.0, no OOM):")
    for name, r in regimes.items():
        missed = [k for k, ok in r["targets_met"].items() if not ok]
        print(f"  {name}: " + (f"missed {', '.join(missed)}" if missed else "all met"))
    print(f"worst over both regimes: loads x{worst['loads_ratio']}, makespan x{worst['makespan_ratio']}, "
          f"high p95 wait x{worst['high_p95_wait_ratio']}; Model Manager OOM errors {oom}")
    print(f"({time.perf_counter() - started:.1f}s)")
    emit_json(args.json, {**worst, "oom_errors": oom, "regimes": regimes, "jobs": args.jobs, "seed": args.seed,
                          "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
