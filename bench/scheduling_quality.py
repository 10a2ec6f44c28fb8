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
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import emit_json, machine, percentile, table  # noqa: E402
from model_registry import DESIGN_CATALOG  # noqa: E402
from simulator.des import RunResult, SimModel, make_trace, run  # noqa: E402
from simulator.policies import ManagerPolicy, OllamaPolicy  # noqa: E402

GB = 10 ** 9
PRESSURE_CATALOG = [SimModel(n, int(gb * GB)) for n, gb in (
    ("qwen2.5:14b", 9.0), ("llama3.1:8b", 4.9), ("phi4:14b", 9.1), ("qwen2.5:7b", 4.7), ("gemma2:9b", 5.4),
    ("mistral:7b", 4.1), ("deepseek-r1:14b", 9.0), ("llama2:13b", 7.4))]
REGIMES = {
    # name: (models, GPU bytes, arrival rate per s). 12 jobs/s of ~100 tokens offer 1,200 tokens/s:
    # more than any policy can serve (at most ~1,000 tokens/s with 64 jobs at once), so queues build.
    "registry-24gb": ([SimModel(s.name, s.size_bytes) for s in DESIGN_CATALOG], 24 * GB, 12.0),
    "pressure-24gb": (PRESSURE_CATALOG, 24 * GB, 12.0),
}
PHYSICS = dict(load_bytes_per_s=2 * GB, tokens_per_s=400.0, batch_gain=0.25)   # the simulator's defaults


def policies():
    return [ManagerPolicy(), OllamaPolicy("ollama-default", max_loaded=3, num_parallel=1),
            OllamaPolicy("ollama-tuned", max_loaded=0, num_parallel=4)]


def figures(result: RunResult) -> dict:
    out = {"loads": result.loads, "unloads": result.unloads, "oom_errors": result.oom_errors,
           "makespan_s": round(result.makespan, 1), "peak_gb": round(result.peak_bytes / GB, 2)}
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
        results = {p.name: figures(run(p, trace, models, gpu_bytes, **PHYSICS)) for p in policies()}
        mm = results["model-manager"]
        for baseline in ("ollama-default", "ollama-tuned"):
            b = results[baseline]
            results[f"vs_{baseline}"] = {
                "loads_ratio": round(mm["loads"] / max(b["loads"], 1), 3),
                "makespan_ratio": round(mm["makespan_s"] / b["makespan_s"], 3),
                "high_p95_wait_ratio": round(mm["high_p95_wait_s"] / max(b["high_p95_wait_s"], 1e-9), 3),
            }
        regimes[name] = results
        print(f"\n{name}: {args.jobs} jobs over {len(models)} models at {rate}/s, GPU {gpu_bytes / GB:.0f} GB")
        rows = [[p, r["loads"], r["makespan_s"], r["high_p50_wait_s"], r["high_p95_wait_s"], r["normal_p95_wait_s"],
                 r["low_p95_wait_s"], r["oom_errors"], r["peak_gb"]]
                for p, r in results.items() if not p.startswith("vs_")]
        print(table(rows, ["policy", "loads", "makespan s", "high p50 s", "high p95 s", "normal p95 s",
                           "low p95 s", "OOM", "peak GB"]))
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
