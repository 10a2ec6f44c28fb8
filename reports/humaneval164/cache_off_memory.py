"""Peak memory for the 164-task run with llama.cpp's prompt cache off, and the frontier redrawn with it.

The run began with the embedded runtime's prompt cache on (llama.cpp's default then, off since
4549b5e): each runner grew with every prompt it saw, so the `peak_rss_bytes` that summary.json holds
for the tasks before the service's restart at 2026-12-07T04:27:51Z measure the cache, not the models.
This script reads the run's ledger (the service that ran it, `--url`) and takes, per model, the peak
resident memory of its runner over the run's jobs that finished after the restart (the large model
ran none then: its figure comes from `humaneval164-mem`, the same service, cache off, HumanEval/0-9).
A strategy's memory is the sum over the models it keeps loaded together (sample-select's first k
samples: the models those k used). It writes `memory_cache_off.json` and `frontier_cache_off.png`
(CPU seconds as measured; memory from these peaks) beside summary.json, which it does not change.

    .venv/bin/python reports/humaneval164/cache_off_memory.py --url http://127.0.0.1:5090

Without `--url` it takes the peaks from the `memory_cache_off.json` written then. `--summary` redraws
another summary holding this run's strategies (a merge of it with later runs, `compare.py --merge`):
this run's strategies get these peaks, the later runs' (made with the cache off) keep their own.

    .venv/bin/python reports/humaneval164/cache_off_memory.py --summary reports/humaneval164-all/summary.json
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import sys
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiment.frontier import frontiers  # noqa: E402
from experiment.report import frontier_png  # noqa: E402

HERE = Path(__file__).resolve().parent
RESTART = dt.datetime(2026, 12, 7, 4, 27, 51, tzinfo=dt.UTC).timestamp()
EXPERIMENTS = ("humaneval164", "humaneval164-mem")
SMALL = ["qwen2.5-coder:0.5b", "gemma3:270m", "smollm2:135m"]     # sample i uses SMALL[i % 3]
LARGE = "qwen2.5-coder:1.5b"
CACHE_ON = ("large", "branched", "sample-select", "decompose")    # this run's strategies


def peaks(url: str) -> dict[str, dict]:
    out = {}
    for model in [LARGE, *SMALL]:
        peak, jobs, cursor = 0, 0, None
        while True:
            params = {"model": model, "limit": "500"}
            if cursor:
                params["cursor"] = cursor
            page = requests.get(f"{url}/api/ledger", params=params, timeout=30).json()
            for e in page["entries"]:
                if (e.get("tags") or {}).get("experiment") in EXPERIMENTS and e["finished_at"] > RESTART:
                    jobs += 1
                    peak = max(peak, int(e.get("runtime_peak_rss_bytes") or 0))
            cursor = page.get("next_cursor")
            if not cursor or not page["entries"] or page["entries"][-1]["finished_at"] < RESTART:
                break
        out[model] = {"peak_rss_bytes": peak, "jobs": jobs}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default=None, help="the run's service (default: the peaks in memory_cache_off.json)")
    p.add_argument("--summary", type=Path, default=HERE / "summary.json", help="the summary to redraw")
    args = p.parse_args()
    if args.url:
        per_model = peaks(args.url)
    else:
        per_model = json.loads((HERE / "memory_cache_off.json").read_text())["per_model"]
    mem = {m: v["peak_rss_bytes"] for m, v in per_model.items()}
    summary = json.loads(args.summary.read_text())
    clean = copy.deepcopy(summary)
    strategies = {}
    for name, row in clean["strategies"].items():
        if name in CACHE_ON:
            row["peak_rss_bytes"] = mem[LARGE] if name == "large" else sum(mem[m] for m in SMALL)
        strategies[name] = row["peak_rss_bytes"]
    for strategy, by_k in (clean.get("by_k") or {}).items():
        for k, row in by_k.items():
            if strategy in CACHE_ON:
                row["peak_rss_bytes"] = sum(mem[m] for m in {SMALL[i % 3] for i in range(int(k))})
            strategies[f"{strategy}@{k}"] = row["peak_rss_bytes"]
    pareto = frontiers(clean)
    out = args.summary.parent
    (out / "memory_cache_off.json").write_text(json.dumps(
        {"restart": dt.datetime.fromtimestamp(RESTART, dt.UTC).isoformat(), "per_model": per_model,
         "strategies": strategies, "pareto": pareto}, indent=2) + "\n")
    (out / "frontier_cache_off.png").write_bytes(frontier_png(clean))
    for m, v in per_model.items():
        print(f"{m}: {v['peak_rss_bytes'] / 1e6:,.0f} MB over {v['jobs']} jobs")
    print("pareto:", pareto)


if __name__ == "__main__":
    main()
