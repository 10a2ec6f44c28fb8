"""Scheduling quality: Model Manager's scheduler against Ollama's own policy, on the same job trace.

    python bench/scheduling_quality.py [--jobs 2000] [--json]

Runs the GPU simulator's physics in virtual time (simulator/des.py): jobs running at once share
the GPU's throughput, loads share its load bandwidth, memory is checked at every load. Each
regime's trace (skewed model popularity, mixed priorities, arrivals faster than service) is run
under three policies (simulator/policies.py):

* model-manager: vram_scheduler.plan over the queue manager's ordering (the service's defaults);
* ollama-default: Ollama's scheduler with OLLAMA_MAX_LOADED_MODELS=3 (per GPU), NUM_PARALLEL=1;
* ollama-tuned: no loaded-model cap, NUM_PARALLEL=4.

Regimes: the ten registry models on a 24 GB GPU; and memory pressure, 7B-14B models on a 24 GB
GPU where two or three fit at once. Ratios are Model Manager / ollama-tuned (lower is better),
the worst over both regimes. Targets: loads <= 0.5, makespan <= 0.8, high-priority p95 wait <= 0.2,
zero out-of-memory errors.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import emit_json, machine, percentile, table  # noqa: E402
from model_registry import DESIGN_CATALOG  # noqa: E402
from model_memory import ModelArch  # noqa: E402
from simulator.des import Job, RunResult, SimModel, make_trace, run  # noqa: E402
from simulator.policies import ManagerPolicy, OllamaPolicy  # noqa: E402

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
PHYSICS = dict(load_bytes_per_s=2 * GB, tokens_per_s=400.0, batch_gain=0.25, num_ctx=NUM_CTX)   # the simulator's defaults


def policies():
    return [ManagerPolicy(slots_per_model=SLOTS), OllamaPolicy("ollama-default", max_loaded=3, num_parallel=1),
            OllamaPolicy("ollama-tuned", max_loaded=0, num_parallel=SLOTS)]


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    regimes: dict[str, dict] = {}
    for name, (models, gpu_bytes, rate) in REGIMES.items():
        trace = make_trace(models, args.jobs, rate, seed=args.seed)
        results = {p.name: figures(run(p, trace, models, gpu_bytes, **PHYSICS), p) for p in policies()}
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
        regimes[name] = results
        print(f"\n{name}: {args.jobs} jobs over {len(models)} models at {rate}/s, GPU {gpu_bytes / GB:.0f} GB, "
              f"{NUM_CTX} tokens of context per slot; makespan lower bound {lower_bound:.1f} s")
        rows = [[p, r["slots_per_model"], r["loads"], r["makespan_s"], r["makespan_vs_lower_bound"], r["high_p50_wait_s"],
                 r["high_p95_wait_s"], r["normal_p95_wait_s"], r["low_p95_wait_s"], r["oom_errors"], r["peak_gb"]]
                for p, r in results.items() if isinstance(r, dict) and not p.startswith("vs_")]
        print(table(rows, ["policy", "slots", "loads", "makespan s", "/ bound", "high p50 s", "high p95 s",
                           "normal p95 s", "low p95 s", "OOM", "peak GB"]))
        for baseline in ("ollama-default", "ollama-tuned"):
            v = results[f"vs_{baseline}"]
            print(f"  vs {baseline}: loads x{v['loads_ratio']}, makespan x{v['makespan_ratio']}, "
                  f"high p95 wait x{v['high_p95_wait_ratio']}")
    worst = {k: max(r["vs_ollama-tuned"][k] for r in regimes.values())
             for k in ("loads_ratio", "makespan_ratio", "high_p95_wait_ratio")}
    oom = sum(r["model-manager"]["oom_errors"] for r in regimes.values())
    print(f"\nworst over both regimes vs ollama-tuned: loads x{worst['loads_ratio']} (target <= 0.5), "
          f"makespan x{worst['makespan_ratio']} (<= 0.8), high p95 wait x{worst['high_p95_wait_ratio']} (<= 0.2); "
          f"Model Manager OOM errors {oom} (0)")
    print(f"({time.perf_counter() - started:.1f}s)")
    emit_json(args.json, {**worst, "oom_errors": oom, "regimes": regimes, "jobs": args.jobs, "seed": args.seed,
                          "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
