"""What a task cost one strategy, from the ledger entries of its jobs (pure).

The ledger already divides a shared runner's CPU and a GPU's busy time and energy among the
jobs that shared them, so summing a strategy's entries charges it only its own share.
"""
from __future__ import annotations

from typing import Any

COST_KEYS = ("wall_s", "model_s", "load_s", "queue_wait_s", "cpu_s", "peak_rss_bytes", "model_memory_bytes",
             "tokens", "prompt_tokens", "output_tokens", "energy_j")


def ledger_costs(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """Sums over one task's jobs under one strategy:

    * `wall_s`: first submission to last answer (for a strategy with several rounds this
      includes judging the answers between rounds: `eval_s` of the result says how long);
    * `model_s`: the runtime's work (`run_s`), `load_s` loading, `queue_wait_s` waiting;
    * `cpu_s`: the runners' CPU charged to these jobs;
    * `peak_rss_bytes`: per model, its runner's peak resident memory, summed over the models the
      strategy used (they are resident together); `model_memory_bytes` the same for the model's
      budgeted (GPU) memory;
    * `tokens` (prompt + output), and `energy_j` where a GPU reported energy, else None;
    * `by_model`: per model, its jobs, `model_s`, `queue_wait_s` and `tokens` (where the time went),
      a list (model names hold dots, which MongoDB field names should not).
    """
    if not entries:
        return {**{key: (None if key == "energy_j" else 0) for key in COST_KEYS}, "by_model": []}
    started = min(float(e["submitted_at"]) for e in entries)
    finished = max(float(e.get("finished_at") or e["submitted_at"]) for e in entries)
    peak_rss: dict[str, int] = {}
    model_memory: dict[str, int] = {}
    for e in entries:
        peak_rss[e["model"]] = max(peak_rss.get(e["model"], 0), int(e.get("runtime_peak_rss_bytes") or 0))
        model_memory[e["model"]] = max(model_memory.get(e["model"], 0), int(e.get("model_memory_bytes") or 0))
    by_model: dict[str, dict[str, Any]] = {}
    for e in entries:
        part = by_model.setdefault(e["model"], {"model": e["model"], "jobs": 0, "model_s": 0.0, "queue_wait_s": 0.0,
                                                "tokens": 0})
        part["jobs"] += 1
        part["model_s"] = round(part["model_s"] + float(e.get("run_s") or 0), 4)
        part["queue_wait_s"] = round(part["queue_wait_s"] + float(e.get("queue_wait_s") or 0), 4)
        part["tokens"] += int(e.get("prompt_tokens") or 0) + int(e.get("output_tokens") or 0)
    energies = [float(e["gpu_energy_j"]) for e in entries if e.get("gpu_energy_j") is not None]
    prompt_tokens = sum(int(e.get("prompt_tokens") or 0) for e in entries)
    output_tokens = sum(int(e.get("output_tokens") or 0) for e in entries)
    return {
        "wall_s": round(finished - started, 4),
        "model_s": round(sum(float(e.get("run_s") or 0) for e in entries), 4),
        "load_s": round(sum(float(e.get("load_s") or 0) for e in entries), 4),
        "queue_wait_s": round(sum(float(e.get("queue_wait_s") or 0) for e in entries), 4),
        "cpu_s": round(sum(float(e.get("runtime_cpu_s") or 0) for e in entries), 4),
        "peak_rss_bytes": sum(peak_rss.values()),
        "model_memory_bytes": sum(model_memory.values()),
        "tokens": prompt_tokens + output_tokens,
        "prompt_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "energy_j": round(sum(energies), 3) if energies else None,
        "by_model": list(by_model.values()),
    }
