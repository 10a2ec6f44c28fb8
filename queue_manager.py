"""Accepting, storing and ordering jobs.

The store holds every job (so that any API worker can accept and report one). The scheduler's
process keeps `WaitingIndex` (scheduling/waiting.py), an in-memory view of the waiting jobs by
model, priority and tenant, fed from the store by `QueueManager.sync()`: it says which job goes
next (priority, then a fair share between tenants, then submission order).
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from jobs.model import JobDoc, JobStatus
from scheduling.fair_share import Who
from scheduling.preemption import Waiting as Need
from scheduling.waiting import RANKS, Waiting, WaitingIndex
from scheduling.warm_pool import RecentArrivals
from store.base import Fenced, Idempotency
from store.retrying import StoreLike
from telemetry.logs import get_logger
from vram_scheduler import Demand

log = get_logger("QUEUE")
__all__ = ["RANKS", "QueueManager", "WaitingIndex", "waiting_entry"]


def waiting_entry(job: JobDoc) -> Waiting:
    """How the index keeps `job`: its place, and whose it is (`share`, set when it was accepted)."""
    share = job.get("share") or {}
    limit = share.get("answer_limit")
    return Waiting(float(job["submitted_at"]), job["job_id"], job["model"], int(job["rank"]),
                   Who(job.get("tenant") or "", str(share.get("user") or ""), float(share.get("weight") or 1.0)),
                   int(share.get("prompt_tokens") or 0), int(limit) if limit is not None else None)


class QueueManager:
    """Accepts jobs into the store and, in the scheduler's process, orders them."""

    def __init__(self, store: StoreLike, max_waiting: int, aging_s: float,
                 on_submit: Callable[[], None] | None = None, submit_store: StoreLike | None = None,
                 preload_window_s: float = 0.0, output_weight: float = 2.0, fair: bool = True):
        self.store = store
        self.submit_store = submit_store or store      # submissions may be less patient than the scheduler
        self.max_waiting = max_waiting
        self.index = WaitingIndex(aging_s, output_weight=output_weight, fair=fair)
        self._on_submit = on_submit
        self._lock = threading.Lock()
        self.accept_locally = False       # set while this process runs the scheduler
        self.epoch: int | None = None     # that scheduler's term: the jobs it holds are marked with it
        self.arrivals = RecentArrivals(preload_window_s)   # models recently asked for (preloading)
        self.preempting: dict[str, str] = {}    # jobs asked to stop, until they have: the model each was stopped for

    # --- accepting ---------------------------------------------------------------------------
    def submit(self, job: JobDoc, idempotency: Idempotency | None = None, tenant_max: int | None = None) -> int:
        """Store `job`; return its position (waiting jobs ahead). Raises QueueFull (or
        TenantQueueFull past the tenant's own `tenant_max`), and IdempotentReplay or
        IdempotencyConflict for a key used before.

        In the scheduler's own process the job goes straight into the index (stored as queued),
        which spares the scheduler a round trip through the store."""
        local, epoch = self.accept_locally, self.epoch
        if local:
            job = {**job, "status": JobStatus.QUEUED.value}
        position = self.submit_store.enqueue(job, self.max_waiting, idempotency, held_by=epoch if local else None,
                                             tenant_max=tenant_max)
        if local:
            with self._lock:
                if self.accept_locally:
                    self._index(job)
                else:           # stepped down meanwhile: let the next scheduler take it from the store
                    self.submit_store.release_taken([job["job_id"]])
        log.debug("accepted %s for %s (%s), position %d", job["job_id"], job["model"],
                  job["priority"], position)
        if self._on_submit is not None:
            self._on_submit()
        return position

    # --- ordering (scheduler's process) ------------------------------------------------------
    def start(self, epoch: int | None = None) -> None:
        """A scheduler taking over (its term's `epoch`): forget the index and take every waiting
        job afresh."""
        with self._lock:
            self.index.clear()
            released = self.store.release_taken()
            self.epoch = epoch
            self.accept_locally = True
        if released:
            log.info("re-took %d queued jobs", released)

    def take_back_stale(self) -> int:
        """Jobs still held by an earlier term go back to pending, for the next sync to take:
        a term that ended while a submission in its process was taking a job straight into its
        queue can leave one behind after the next term started."""
        if self.epoch is None:
            return 0
        released = self.store.release_taken(held_before=self.epoch)
        if released:
            log.warning("took back %d jobs left queued by an earlier scheduler term", released)
        return released

    def stop(self) -> None:
        """This process no longer schedules: jobs go through the store again."""
        with self._lock:
            self.accept_locally = False
            self.epoch = None
            self.index.clear()

    def sync(self, limit: int = 5000) -> int:
        """Take newly submitted jobs from the store into the index."""
        taken = self.store.take_new(limit, self.epoch)
        with self._lock:
            for job in taken:
                self._index(job)
        return len(taken)

    def _index(self, job: JobDoc) -> None:
        self.index.put(waiting_entry(job))
        self.arrivals.add(float(job["submitted_at"]), job["model"])

    def demand(self, now: float) -> list[Demand]:
        with self._lock:
            return self.index.demand(now)

    def take(self, model: str, n: int, now: float, run_fields: Callable[[str], tuple[str, dict[str, Any]]],
             epoch: int | None = None) -> list[JobDoc]:
        """Claim up to `n` of `model`'s most urgent jobs for running, under `epoch`. `run_fields(job_id)`
        gives the run id and fields to set; a job cancelled meanwhile is skipped. A claim refused
        because the lease moved on (Fenced) is raised once the job is back in line."""
        claimed: list[JobDoc] = []
        while len(claimed) < n:
            with self._lock:
                entry = self.index.pop_entry(model, now)
            if entry is None:
                break
            job_id = entry.job_id
            run_id, fields = run_fields(job_id)
            try:
                job = self.store.claim(job_id, run_id, fields, epoch)
            except Fenced:
                with self._lock:
                    self.index.put(entry)
                raise
            except Exception as exc:
                if self.store.is_unreadable(exc) and self._fail_unclaimable(job_id, exc, now):
                    with self._lock:
                        self.index.share.refund(job_id)
                    continue            # that job's document is unusable: it fails, the others go on
                # The store failed: the job is still waiting there, so it goes back in line here;
                # what was claimed before it is returned to be run.
                log.exception("claiming job %s failed; it stays queued", job_id)
                with self._lock:
                    self.index.put(entry)
                break
            if job is not None:
                claimed.append(job)
            else:                       # cancelled meanwhile: its tenant is not charged for it
                with self._lock:
                    self.index.share.refund(job_id)
        return claimed

    def settle(self, job_id: str, prompt_tokens: int, answer_tokens: int) -> None:
        """A job this queue gave out ended having used these tokens (its tenant's fair share)."""
        with self._lock:
            self.index.settle(job_id, prompt_tokens, answer_tokens)

    def needs(self, now: float) -> list[Need]:
        """Per model and priority, the waiting jobs and the first one's wait (preemption)."""
        with self._lock:
            return self.index.needs(now)

    def settle_unused(self, job_id: str) -> None:
        """A job this queue gave out ended without an answer: its tenant is not charged for it."""
        with self._lock:
            self.index.share.refund(job_id)

    def order(self, model: str, now: float, limit: int) -> list[Waiting]:
        """`model`'s waiting jobs in the order they would start (the first `limit`)."""
        with self._lock:
            return self.index.model_order(model, now, limit)

    def service_by_tenant(self) -> dict[str, float]:
        """Weighted tokens each tenant was given by this scheduler term (the fair share's counts)."""
        with self._lock:
            return dict(self.index.share.served)

    def _fail_unclaimable(self, job_id: str, exc: BaseException, now: float) -> bool:
        log.error("job %s cannot be started (%s: %s); it fails", job_id, type(exc).__name__, exc)
        try:
            return self.store.fail_waiting(job_id, {"completed_at": now,
                                                    "error": f"the job could not be started: its stored request is "
                                                             f"unusable ({type(exc).__name__})"}) or True
        except Exception:
            log.exception("job %s could not be failed either; it is left out of this queue", job_id)
            return True

    def fail_model(self, model: str, fields: dict[str, Any]) -> int:
        """Fail every waiting job of `model` (it can never run)."""
        with self._lock:
            ids = self.index.drop_model(model)
        return sum(self.store.fail_waiting(job_id, fields) for job_id in ids)

    def waiting(self) -> int:
        with self._lock:
            return len(self.index)
