"""What a job cost: its timings and tokens (from the runtime's own figures), and the ledger
entry that the store keeps for every finished job.

`JobMeter` is the seam for sampling the runtime's processes and the GPU while a job runs; the
engine asks it for a `JobSample` when a job starts and adds what `stop()` returns to the job's
metrics and ledger entry.
"""
from __future__ import annotations

from typing import Any, Protocol

from jobs.model import JobDoc, JobStatus

# What a tenant's usage sums, in /api/stats and /metrics (fields of the ledger's entries).
USAGE_FIELDS = ("prompt_tokens", "output_tokens", "run_s", "cpu_s", "gpu_energy_j")

NS = 1e9
LEDGER_TAG_KEYS = ("strategy", "experiment", "task", "task_id", "branch", "role", "run", "variant")


class JobSample(Protocol):
    def stop(self) -> dict[str, Any]:
        """End the sample; return the resource figures to add to the job's metrics."""
        ...


class JobMeter(Protocol):
    def start(self, model: str) -> JobSample: ...


def run_metrics(job: JobDoc, final: dict[str, Any] | None, granted_at: float, finished: float,
                first_token_at: float | None, load_started: float, load_finished: float) -> dict[str, Any]:
    """Timings and tokens of one run, each second counted once:

    * `run_s`: the work, as the runtime reports it (prompt evaluation + generation); the wall
      time from the slot to the answer when the runtime gives no figures;
    * `load_s`: the part of the job's wait spent loading its model (0 when it was loaded);
    * `queue_wait_s`: all other time between submission and answer: waiting in Model Manager's
      queue and any waiting inside the runtime (`runtime_wait_s` says how much of it was there);
    * `total_s` = queue_wait_s + load_s + run_s.
    """
    final = final or {}
    submitted = float(job["submitted_at"])
    granted_at = max(granted_at, submitted)
    total_s = max(finished - submitted, 0.0)
    load_s = 0.0
    if load_finished:
        load_s = max(0.0, min(load_finished, granted_at) - max(load_started, submitted))
    prompt_s = (final.get("prompt_eval_duration") or 0) / NS
    eval_s = (final.get("eval_duration") or 0) / NS
    at_runtime_s = max(finished - granted_at, 0.0)
    reported = prompt_s + eval_s
    run_s = min(reported, at_runtime_s) if reported > 0 else at_runtime_s
    output_tokens = int(final.get("eval_count") or 0)
    if eval_s > 0:
        tokens_per_s = output_tokens / eval_s
    else:
        tokens_per_s = output_tokens / run_s if run_s > 0 else 0.0
    return {
        "queue_wait_s": round(max(total_s - run_s - load_s, 0.0), 6),
        "load_s": round(load_s, 6),
        "run_s": round(run_s, 6),
        "total_s": round(total_s, 6),
        "runtime_wait_s": round(max(at_runtime_s - run_s, 0.0), 6),
        "ttft_s": round(first_token_at - granted_at, 6) if first_token_at else None,
        "prompt_tokens": int(final.get("prompt_eval_count") or 0),
        "output_tokens": output_tokens,
        "tokens_per_s": round(tokens_per_s, 3),
        "runtime": {
            "total_duration_s": (final.get("total_duration") or 0) / NS,
            "load_duration_s": (final.get("load_duration") or 0) / NS,
            "prompt_eval_duration_s": prompt_s,
            "eval_duration_s": eval_s,
        },
    }


def ledger_entry(job: JobDoc, status: JobStatus, fields: dict[str, Any], node: str,
                 model_bytes: int, slots: int) -> dict[str, Any]:
    """One document of `job_metrics`: everything needed to compare models and strategies."""
    metadata = job.get("metadata") or {}
    metrics = fields.get("metrics") or {}
    return {
        "job_id": job["job_id"],
        "run_id": job.get("run_id"),
        "model": job["model"],
        "kind": job["kind"],
        "priority": job["priority"],
        "tenant": job.get("tenant") or "",
        "status": status.value,
        "success": status is JobStatus.COMPLETE,
        "error": fields.get("error"),
        "error_kind": fields.get("error_kind"),
        "tags": {k: metadata[k] for k in LEDGER_TAG_KEYS if k in metadata},
        "metadata": metadata,
        "node": node,
        "submitted_at": job["submitted_at"],
        "started_at": job.get("started_at"),
        "finished_at": fields.get("completed_at"),
        "attempts": fields.get("attempts"),
        "model_memory_bytes": model_bytes,
        "model_slots": slots,
        **metrics,
    }
