"""The storage interface every backend implements.

Jobs move through their life cycle only by conditional transitions (`take_new`, `claim`,
`finish`, `requeue`, `cancel`, ...), each atomic in the backend, so that several API workers
and one scheduler can share a store without locks of their own: a job is claimed at most once,
a cancelled job is never claimed, and a stale runner cannot overwrite a job it no longer owns
(`run_id`).

Fencing: the scheduler lease carries an epoch that grows each time another owner takes it. A
claim carries the epoch it was made under and is refused (`Fenced`) once the lease has moved on;
the run it starts (`run_id`, recorded with its epoch and owner) is the token every later write
of that run must show (`finish`, `requeue`, `recover_run`). A new leader recovers the runs of
older epochs only when it is safe to (scheduling_policy.stale_run_verdict). Transitions are
idempotent: repeating one that was applied (a retry after a lost answer) reports success and
changes nothing.

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

from jobs.model import WAITING, JobDoc
from store.base_access import AccessStore
from store.base_answers import AnswerStore
from tenancy.keys import Refusal

SCHEDULER_LEASE = "scheduler"



class QueueFull(Exception):
    def __init__(self, waiting: int, message: str | None = None):
        super().__init__(message or f"queue is full ({waiting} jobs waiting)")
        self.waiting = waiting


class TenantQueueFull(QueueFull):
    """The tenant has as many jobs waiting as its key allows (`max_waiting`)."""


def queue_full(refusal: Refusal, waiting: int, tenant: str, tenant_waiting: int) -> QueueFull:
    """The error for a submission `tenancy.keys.admit` refused."""
    if refusal is Refusal.TENANT_FULL:
        return TenantQueueFull(waiting, f"tenant '{tenant}' has {tenant_waiting} jobs waiting, as many as its key "
                                        "allows (max_waiting)")
    return QueueFull(waiting, f"queue is full ({waiting} jobs waiting; tenant '{tenant}' has {tenant_waiting}, "
                              "its fair share or more)" if tenant else None)


class Fenced(Exception):
    """A write under an epoch the scheduler lease has moved past: another scheduler leads."""


class StoreUnavailable(Exception):
    """The store did not answer, even after retries."""


class IdempotentReplay(Exception):
    """A submission with an Idempotency-Key already used (within its lifetime) for this request."""

    def __init__(self, job_id: str):
        super().__init__(f"already submitted as job {job_id}")
        self.job_id = job_id


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used for a different request."""

    def __init__(self, job_id: str):
        super().__init__(f"this Idempotency-Key was used for another request (job {job_id})")
        self.job_id = job_id


@dataclass(frozen=True)
class Idempotency:
    key: str
    fingerprint: str              # a digest of the request: the same key with another request is refused
    expires_at: float


@dataclass
class QueueCounts:
    by_status: dict[str, int] = field(default_factory=dict)
    waiting_by_priority: dict[str, int] = field(default_factory=dict)
    waiting_by_model: dict[str, int] = field(default_factory=dict)
    waiting_by_tenant: dict[str, int] = field(default_factory=dict)

    @property
    def waiting(self) -> int:
        return sum(self.by_status.get(s.value, 0) for s in WAITING)


@dataclass
class CancelOutcome:
    found: bool
    previous: str | None = None   # status before the call
    cancelled: bool = False       # whether this call cancelled it


class JobStore(AccessStore, AnswerStore, ABC):
    """Jobs, their metrics, and the little shared state the service needs; API keys, rates and
    counters (store/base_access.py); cached and streamed answers (store/base_answers.py)."""

    # --- jobs: submission and reading -------------------------------------------------------
    #: Errors that may mean "the store did not answer, try again" (locked, connection lost, ...).
    transient_errors: tuple[type[BaseException], ...] = ()

    def is_transient(self, exc: BaseException) -> bool:
        """Whether `exc` is worth retrying (the backends narrow their error types down)."""
        return isinstance(exc, self.transient_errors)

    def is_unreadable(self, exc: BaseException) -> bool:
        """Whether `exc` says one document is unusable (not that the store is): the job it
        belongs to fails, the others go on."""
        return isinstance(exc, (ValueError, TypeError, KeyError, OverflowError)) or "malformed JSON" in str(exc)

    @abstractmethod
    def enqueue(self, job: JobDoc, max_waiting: int | None = None, idempotency: Idempotency | None = None,
                held_by: int | None = None, tenant_max: int | None = None) -> int:
        """Store a new job (pending; or queued, held by the scheduler term of epoch `held_by`,
        when that scheduler takes it straight into its queue); return how many waiting jobs are
        ahead of it (by priority, then submission time). Raise QueueFull when `max_waiting` jobs
        already wait and the job's tenant has its fair share of them, TenantQueueFull when the
        tenant has `tenant_max` waiting (tenancy.admit; atomically on SQLite, and for
        `max_waiting` on MongoDB too: concurrent submissions never overshoot it). With `idempotency`,
        a key seen before and not expired raises IdempotentReplay (same fingerprint) or
        IdempotencyConflict; the job is acknowledged only once it is committed."""

    @abstractmethod
    def get(self, job_id: str) -> JobDoc | None:
        """The whole job document, or None."""

    @abstractmethod
    def list_jobs(self, status: str | None = None, model: str | None = None, limit: int = 100,
                  before: tuple[float, str] | None = None, tenant: str | None = None) -> list[JobDoc]:
        """Newest first (submitted_at, then job_id, descending), without prompts, messages or
        results (summaries for listings), of one tenant or all; `before` = (submitted_at, job_id)
        of the last job of the previous page."""

    @abstractmethod
    def counts(self) -> QueueCounts:
        """Jobs by status; waiting (pending + queued) jobs by priority, by model and by tenant."""

    @abstractmethod
    def statuses(self, job_ids: Iterable[str]) -> dict[str, str]:
        """Current status of each of these jobs that exists."""

    # --- jobs: the scheduler's transitions ---------------------------------------------------
    @abstractmethod
    def take_new(self, limit: int = 1000, epoch: int | None = None) -> list[JobDoc]:
        """Move up to `limit` pending jobs to queued, held by the scheduler term of `epoch`, and
        return them (job_id, model, priority, rank, submitted_at) in submission order: how the
        scheduler learns of new work."""

    @abstractmethod
    def release_taken(self, job_ids: list[str] | None = None, *, held_before: int | None = None) -> int:
        """Queued -> pending for all jobs, or these, or (`held_before`) those held by a term of
        an older epoch or by none: a scheduler starting up, or sweeping up after a term that
        ended while a submission was taking a job into its queue, takes them again."""

    @abstractmethod
    def claim(self, job_id: str, run_id: str, fields: dict[str, Any], epoch: int | None = None) -> JobDoc | None:
        """Queued -> running, owned by `run_id` (made under `epoch`, recorded on the job), with
        `attempts` counted; return the whole document, or None when the job is no longer queued
        (cancelled, say). Raise Fenced when `epoch` is not the scheduler lease's any more."""

    @abstractmethod
    def finish(self, job_id: str, run_id: str, status: str, fields: dict[str, Any],
               ledger: dict[str, Any] | None = None) -> bool:
        """Running (owned by `run_id`) -> complete, failed or cancelled, and `ledger` recorded
        (`record_metrics`) so that no finished job ever lacks its entry (in one transaction, or
        written first and confirmed after, depending on the backend)."""

    @abstractmethod
    def requeue(self, job_id: str, run_id: str, fields: dict[str, Any]) -> bool:
        """Running (owned by `run_id`) -> pending, to be tried again."""

    @abstractmethod
    def running_runs(self) -> list[JobDoc]:
        """Every running job, as job_id, model, run_id, epoch, owner, started_at, timeout_s and
        attempts: what a scheduler needs to find runs left behind."""

    @abstractmethod
    def recover_run(self, job_id: str, run_id: str, requeue: bool, fields: dict[str, Any],
                    ledger: dict[str, Any] | None = None) -> bool:
        """A run left behind by a scheduler that is gone: running (owned by `run_id`) -> pending
        (`requeue`), or failed with `fields` and its `ledger` entry."""

    @abstractmethod
    def fail_waiting(self, job_id: str, fields: dict[str, Any]) -> bool:
        """Pending or queued -> failed (a job that can never run)."""

    @abstractmethod
    def cancel(self, job_id: str, fields: dict[str, Any]) -> CancelOutcome:
        """Pending, queued or running -> cancelled."""

    @abstractmethod
    def purge_finished(self, before: float) -> int:
        """Delete finished jobs completed before `before`; return how many."""

    # --- the ledger ---------------------------------------------------------------------------
    @abstractmethod
    def record_metrics(self, doc: dict[str, Any]) -> None:
        """Store one finished run's resource record, once per (job_id, run_id): a job that
        finished has exactly one."""

    @abstractmethod
    def list_metrics(self, model: str | None = None, limit: int = 100, job_id: str | None = None,
                     before: tuple[float, str] | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        """Newest first (finished_at, then `job_id:run_id`, descending); for one job, or one
        model, or all, of one tenant or all; `before` = (finished_at, "job_id:run_id") of the last entry of the previous page."""

    @abstractmethod
    def usage_by_tenant(self, since: float) -> dict[str, dict[str, float]]:
        """The ledger summed per tenant over the runs that finished at `since` or later: `jobs`
        and the sums of metering.ledger.USAGE_FIELDS ("" is jobs without a key)."""

    @abstractmethod
    def purge_metrics(self, before: float) -> int:
        """Delete ledger entries finished before `before` (LEDGER_RETENTION_S); return how many."""

    def repair(self, now: float) -> int:
        """Mend what a crash between two writes may have left (the scheduler calls it from time
        to time); return how many things were mended. Nothing to do by default."""
        return 0

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
    def list_results(self, experiment: str | None = None, limit: int = 1000,
                     tenant: str | None = None, strategy: str | None = None) -> list[dict[str, Any]]:
        """Results in the order they were recorded; only `tenant`'s when one is given, only one
        strategy's when `strategy` is."""

    # --- shared state -------------------------------------------------------------------------
    @abstractmethod
    def put_state(self, key: str, value: dict[str, Any], now: float) -> None:
        """Publish a small document (the scheduler's view, for API workers in other processes)."""

    @abstractmethod
    def get_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        """The document and when it was published."""

    @abstractmethod
    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float, timeout_s: float | None = None) -> int | None:
        """Take or renew lease `name` for `owner` unless another owner holds an unexpired one;
        return its epoch (which grows by one whenever the lease changes hands, or is taken back
        after it expired or was released), or None. Gives up after `timeout_s` when given."""

    @abstractmethod
    def release_lease(self, name: str, owner: str) -> None:
        """Give the lease up if `owner` holds it (its epoch stays, for the next holder to pass)."""

    @abstractmethod
    def retire_epoch(self, name: str, epoch: int, now: float) -> None:
        """Say that no request made under `epoch` is in flight any more."""

    @abstractmethod
    def retired_epochs(self, name: str) -> set[int]:
        """The epochs of lease `name` said to be retired."""

    # --- what models were measured to need ----------------------------------------------------
    @abstractmethod
    def save_footprint(self, model: str, size_bytes: int, now: float) -> None:
        """Remember the memory `model` was measured to use."""

    @abstractmethod
    def footprints(self) -> dict[str, int]:
        """Every remembered model footprint, in bytes."""

    def purge_idempotency(self, now: float) -> int:
        """Forget Idempotency-Keys past their lifetime; return how many."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional for backends without connections
        """Release connections."""
