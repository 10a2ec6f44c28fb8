"""The storage interface every backend implements.

Jobs move through their life cycle only by conditional transitions (`take_new`, `claim`,
`finish`, `requeue`, `cancel`, ...), each atomic in the backend, so that several API workers
and one scheduler can share a store without locks of their own: a job is claimed at most once,
a cancelled job is never claimed, and a stale runner cannot overwrite a job it no longer owns
(`run_id`).

Besides jobs, a store keeps: the per-job metrics ledger, small state documents that the
scheduler publishes for the API workers (`put_state`/`get_state`), leases (one scheduler per
store), and the memory each model was measured to need.

Times are Unix seconds, passed in by the caller so that backends never read a clock.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from jobs import JobDoc


class QueueFull(Exception):
    def __init__(self, waiting: int):
        super().__init__(f"queue is full ({waiting} jobs waiting)")
        self.waiting = waiting


@dataclass
class QueueCounts:
    by_status: dict[str, int] = field(default_factory=dict)
    waiting_by_priority: dict[str, int] = field(default_factory=dict)
    waiting_by_model: dict[str, int] = field(default_factory=dict)

    @property
    def waiting(self) -> int:
        return self.by_status.get("pending", 0) + self.by_status.get("queued", 0)


@dataclass
class CancelOutcome:
    found: bool
    previous: str | None = None   # status before the call
    cancelled: bool = False       # whether this call cancelled it


class JobStore(ABC):
    """Jobs, their metrics, and the little shared state the service needs."""

    # --- jobs: submission and reading -------------------------------------------------------
    @abstractmethod
    def enqueue(self, job: JobDoc, max_waiting: int | None = None) -> int:
        """Store a new pending job; return how many waiting jobs are ahead of it (by priority,
        then submission time). Raise QueueFull when `max_waiting` jobs already wait."""

    @abstractmethod
    def get(self, job_id: str) -> JobDoc | None:
        """The whole job document, or None."""

    @abstractmethod
    def list_jobs(self, status: str | None = None, model: str | None = None,
                  limit: int = 100) -> list[JobDoc]:
        """Newest first, without prompts, messages or results (summaries for listings)."""

    @abstractmethod
    def counts(self) -> QueueCounts:
        """Jobs by status; waiting (pending + queued) jobs by priority and by model."""

    @abstractmethod
    def statuses(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Current status of each of these jobs that exists."""

    # --- jobs: the scheduler's transitions ---------------------------------------------------
    @abstractmethod
    def take_new(self, limit: int = 1000) -> list[JobDoc]:
        """Move up to `limit` pending jobs to queued and return them (job_id, model, priority,
        rank, submitted_at) in submission order: how the scheduler learns of new work."""

    @abstractmethod
    def release_taken(self) -> int:
        """Queued -> pending for all jobs: a scheduler starting up takes them again."""

    @abstractmethod
    def claim(self, job_id: str, run_id: str, fields: dict[str, Any]) -> JobDoc | None:
        """Queued -> running, owned by `run_id`; return the whole document, or None when the job
        is no longer queued (cancelled, say)."""

    @abstractmethod
    def finish(self, job_id: str, run_id: str, status: str, fields: dict[str, Any],
               ledger: dict[str, Any] | None = None) -> bool:
        """Running (owned by `run_id`) -> complete, failed or cancelled; when that happened and
        `ledger` is given, record it too (`record_metrics`), in the same transaction where the
        backend has them."""

    @abstractmethod
    def requeue(self, job_id: str, run_id: str, fields: dict[str, Any]) -> bool:
        """Running (owned by `run_id`) -> pending, to be tried again."""

    @abstractmethod
    def fail_waiting(self, job_id: str, fields: dict[str, Any]) -> bool:
        """Pending or queued -> failed (a job that can never run)."""

    @abstractmethod
    def cancel(self, job_id: str, fields: dict[str, Any]) -> CancelOutcome:
        """Pending, queued or running -> cancelled."""

    @abstractmethod
    def recover_running(self, requeue: bool, fields: dict[str, Any]) -> list[str]:
        """Jobs left running by a scheduler that is gone: back to pending, or failed with
        `fields`. Returns their ids."""

    @abstractmethod
    def purge_finished(self, before: float) -> int:
        """Delete finished jobs completed before `before`; return how many."""

    # --- the ledger ---------------------------------------------------------------------------
    @abstractmethod
    def record_metrics(self, doc: dict[str, Any]) -> None:
        """Store one finished run's resource record, once per (job_id, run_id): a job that
        finished has exactly one."""

    @abstractmethod
    def list_metrics(self, model: str | None = None, limit: int = 100,
                     job_id: str | None = None) -> list[dict[str, Any]]:
        """Newest first; for one job, or one model, or all."""

    # --- tasks and experiment results (comparing models and strategies on the same tasks) -------
    @abstractmethod
    def put_task(self, task: dict[str, Any]) -> None:
        """Store or replace a task (keyed by `task_id`; `suite` groups tasks)."""

    @abstractmethod
    def get_task(self, task_id: str) -> dict[str, Any] | None:
        """The task, or None."""

    @abstractmethod
    def list_tasks(self, suite: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Tasks by id."""

    @abstractmethod
    def record_result(self, result: dict[str, Any]) -> None:
        """Store one experiment result (`experiment`, `task_id`, `recorded_at`, anything else)."""

    @abstractmethod
    def list_results(self, experiment: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """Results in the order they were recorded."""

    # --- shared state -------------------------------------------------------------------------
    @abstractmethod
    def put_state(self, key: str, value: dict[str, Any], now: float) -> None:
        """Publish a small document (the scheduler's view, for API workers in other processes)."""

    @abstractmethod
    def get_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The document and when it was published."""

    @abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        """Take or renew lease `name` for `owner` unless another owner holds an unexpired one."""

    @abstractmethod
    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up if `owner` holds it."""

    # --- what models were measured to need ----------------------------------------------------
    @abstractmethod
    def save_footprint(self, model: str, size_bytes: int, now: float) -> None:
        """Remember the memory `model` was measured to use."""

    @abstractmethod
    def footprints(self) -> dict[str, int]:
        """Every remembered model footprint, in bytes."""

    def close(self) -> None:  # noqa: B027 - optional for backends without connections
        """Release connections."""
