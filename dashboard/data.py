"""What the dashboard shows, shaped from what the service already has (pure functions): loaded
models with their memory split into weights and KV cache, jobs as table rows, and the ledger
summed up per model for its charts."""
from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

from telemetry.percentiles import percentile

JOB_METRICS = ("queue_wait_s", "load_s", "run_s", "total_s", "tokens_per_s", "output_tokens")


def loaded_models(view: dict[str, Any] | None, registry_rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each loaded model on each node: its memory as reported (or planned), how much of it is
    weights and KV cache, whether its footprint was learned from the runtime or is still an
    estimate, and its slots in use."""
    known = {row["name"]: row for row in registry_rows}
    rows = []
    for node in (view or {}).get("nodes") or []:
        for m in node.get("loaded_models") or []:
            spec = known.get(m["name"], {})
            memory = int(m.get("size_vram") or m.get("planned_bytes") or 0)
            weights = int(spec.get("size") or 0)
            kv_cache = int(spec.get("kv_cache_bytes") or 0)
            if weights + kv_cache > memory > 0:       # an estimate above what the runtime reports
                kv_cache = max(memory - weights, 0)
                weights = min(weights, memory)
            rows.append({
                "name": m["name"], "node": node.get("url"), "node_name": node.get("name"), "phase": m.get("phase"),
                "memory_bytes": memory, "planned_bytes": int(m.get("planned_bytes") or 0),
                "weights_bytes": weights, "kv_cache_bytes": kv_cache,
                "other_bytes": max(memory - weights - kv_cache, 0),
                "footprint": "learned" if spec.get("learned_bytes") else "estimated",
                "slots": int(m.get("slots") or 0), "slots_in_use": int(m.get("running") or 0),
                "num_ctx": spec.get("num_ctx") or m.get("context_length"),
            })
    return rows


def memory_summary(view: dict[str, Any] | None) -> dict[str, Any]:
    vram = ((view or {}).get("resources") or {}).get("vram") or {}
    nodes = [{"url": n.get("url"), "name": n.get("name"), "ok": bool(n.get("ok")),
              **{k: int((n.get("vram") or {}).get(k) or 0) for k in ("total", "used", "free", "budget")}}
             for n in (view or {}).get("nodes") or []]
    return {**{k: int(vram.get(k) or 0) for k in ("total", "used", "free", "budget", "capacity", "used_by_others")},
            "nodes": nodes}


def job_row(job: dict[str, Any], outlook: tuple[int | None, float | None] | None = None) -> dict[str, Any]:
    """A job as a table row (`job` as `jobs.model.public_view` shows it); a waiting one with its
    position and estimated start (`outlook`, as scheduling/outlook.py gives them)."""
    metrics = job.get("metrics") or {}
    row = {"job_id": job["job_id"], "model": job["model"], "kind": job["kind"], "priority": job["priority"],
           "status": job["status"], "tenant": job.get("tenant") or "", "error": job.get("error"),
           "submitted_at": job.get("submitted_at"), "started_at": job.get("started_at"),
           "completed_at": job.get("completed_at"), "preempted": job.get("preempted") or 0,
           "metrics": {k: metrics[k] for k in JOB_METRICS if metrics.get(k) is not None}}
    if outlook is not None:
        row["position"], row["eta_s"] = outlook
    return row


def tenant_usage(usage: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """Each tenant's usage (the ledger summed: /api/stats' `tenants`), most tokens first."""
    rows = [{"tenant": tenant or "(no key)", **{k: round(v, 3) if isinstance(v, float) else v for k, v in u.items()}}
            for tenant, u in usage.items()]
    return sorted(rows, key=lambda r: (-(r.get("prompt_tokens", 0) + r.get("output_tokens", 0)), r["tenant"]))


def ledger_summary(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """The ledger's recent entries (newest first) as chart points, oldest first, and per model:
    jobs, mean tokens/s, and median and 95th percentile of wait (queue + load) and run time."""
    points = []
    per_model: dict[str, dict[str, list[float]]] = {}
    for e in reversed(entries):
        wait = float(e.get("queue_wait_s") or 0.0) + float(e.get("load_s") or 0.0)
        run = float(e.get("run_s") or 0.0)
        tps = e.get("tokens_per_s")
        points.append({"at": e.get("finished_at"), "model": e.get("model"), "status": e.get("status"),
                       "wait_s": round(wait, 4), "run_s": round(run, 4),
                       "tokens_per_s": round(float(tps), 2) if tps else None})
        figures = per_model.setdefault(str(e.get("model")), {"wait": [], "run": [], "tps": []})
        figures["wait"].append(wait)
        figures["run"].append(run)
        if tps:
            figures["tps"].append(float(tps))
    models = [{"model": name, "jobs": len(f["wait"]),
               "tokens_per_s": round(statistics.fmean(f["tps"]), 2) if f["tps"] else None,
               "wait_p50_s": _quantile(f["wait"], 0.5), "wait_p95_s": _quantile(f["wait"], 0.95),
               "run_p50_s": _quantile(f["run"], 0.5), "run_p95_s": _quantile(f["run"], 0.95)}
              for name, f in sorted(per_model.items())]
    return {"points": points, "models": models}


def _quantile(values: list[float], q: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else round(value, 4)
