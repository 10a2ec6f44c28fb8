"""Tokens/s through Model Manager against calling the llama.cpp binding directly.

    python bench/embedded_throughput.py [--requests 6] [--tokens 64] [--json]

For each model (smollm2:135m and qwen2.5-coder:0.5b), the same chat request (greedy, same
prompt, same context size and one thread) runs alternately through the manager (submit with
?wait, i.e. HTTP, queue, scheduler, runner process) and through the binding loaded in this
process. tokens/s = output tokens / wall-clock seconds of the request, summed over the runs.
Target: manager / direct >= 0.95.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import requests

from bench.common import ROOT, Service, emit_json, machine, table  # noqa: E402
from embedded_runtime import binding  # noqa: E402
from embedded_runtime.catalog import CATALOG, ModelFiles, is_installed  # noqa: E402

MODELS = ("smollm2:135m", "qwen2.5-coder:0.5b")
PROMPT = "Write a Python function that checks whether a number is prime, then explain it step by step."
NUM_CTX = 2048


def through_manager(url: str, model: str, tokens: int) -> tuple[int, float]:
    body: dict[str, Any] = {"model": model, "kind": "chat", "messages": [{"role": "user", "content": PROMPT}],
            "options": {"num_predict": tokens, "temperature": 0, "seed": 1}}
    started = time.perf_counter()
    r = requests.post(url + "/api/submit", params={"wait": 300}, json=body, timeout=330)
    elapsed = time.perf_counter() - started
    job = r.json()
    if r.status_code != 200 or job.get("status") != "complete":
        raise RuntimeError(f"job did not complete: {job}")
    return job["metrics"]["output_tokens"], elapsed


def direct(model: binding.LoadedModel, tokens: int) -> tuple[int, float]:
    request = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": tokens, "temperature": 0, "seed": 1}
    started = time.perf_counter()
    answer = model.chat(request, None)
    return answer.output_tokens, time.perf_counter() - started


def quiet_native_logs(path: Path) -> None:
    """llama.cpp writes its logs straight to file descriptor 2: send them to a file instead."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    os.close(fd)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=6, help="runs per path and model")
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per run")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    missing = [m for m in args.models if not is_installed(CATALOG[m])]
    if missing:
        print(f'install first: make models MODELS="{" ".join(missing)}"', file=sys.stderr)
        return 2
    quiet_native_logs(ROOT / ".cache" / "bench-llama.log")
    cache = ROOT / ".cache" / "models"
    files = ModelFiles(cache)
    results, rows = {}, []
    env = {"EMBEDDED_MODEL_CACHE": str(cache), "NUM_CTX": str(NUM_CTX), "EMBEDDED_THREADS": "1"}
    with Service(["--backend", "embedded"], env) as service:
        for name in args.models:
            model = binding.load(str(files.path(CATALOG[name])), NUM_CTX, 1, 1)
            through_manager(service.url, name, 8)            # warm both paths: load, caches
            direct(model, 8)
            m_tokens = m_time = d_tokens = d_time = 0.0
            for _ in range(args.requests):                    # alternate, so drift hits both alike
                t, s = through_manager(service.url, name, args.tokens)
                m_tokens, m_time = m_tokens + t, m_time + s
                t, s = direct(model, args.tokens)
                d_tokens, d_time = d_tokens + t, d_time + s
            model.close()
            manager_tps, direct_tps = m_tokens / m_time, d_tokens / d_time
            key = name.replace(":", "_").replace(".", "_").replace("-", "_")
            results[key] = {"manager_tokens_per_s": round(manager_tps, 2), "direct_tokens_per_s": round(direct_tps, 2),
                            "ratio": round(manager_tps / direct_tps, 4),
                            "manager_s_per_request": round(m_time / args.requests, 4),
                            "direct_s_per_request": round(d_time / args.requests, 4)}
            rows.append([name, manager_tps, direct_tps, manager_tps / direct_tps, m_time / args.requests,
                         d_time / args.requests])
    print(f"{args.requests} chat requests x {args.tokens} tokens per path and model, one thread, n_ctx {NUM_CTX}")
    print(table(rows, ["model", "manager tok/s", "direct tok/s", "ratio", "manager s/req", "direct s/req"]))
    worst = min(r["ratio"] for r in results.values())
    print(f"worst ratio {worst:.3f} (target >= 0.95)")
    emit_json(args.json, {"models": results, "min_ratio": worst, "requests": args.requests,
                          "tokens": args.tokens, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
