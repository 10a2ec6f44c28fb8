"""Accepting, storing and ordering jobs.

The store holds every job (so that any API worker can accept and report one). The scheduler's
process keeps `WaitingIndex`, an in-memory view of the waiting jobs by model and priority, fed
from the store by `QueueManager.sync()`. Ordering never scans the whole queue: within a model
and priority jobs are FIFO, so the head of each (model, priority) line is its most urgent job,
and a scheduler pass looks at three heads per model whatever the queue's length.

Order: effective priority = rank (low 0, normal 1, high 2) + min(seconds waited / QUEUE_AGING_S,
AGING_CAP). Aging orders jobs within a priority and across models, but never lifts a job above
the next priority: under overload, unbounded aging would make every queue first come, first
served and high priority would wait behind the backlog. What keeps lower priorities from
starving instead is a share of the service (PRIORITY_SHARES, high 8 : normal 3 : low 1 by
default): the index counts the slots it gave each priority over the last SHARE_WINDOW grants,
and when a waiting priority has had less than its share (relative to its weight, among the
priorities that have work waiting), it is served next, and its models become the most urgent.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from jobs.model import JobDoc, JobStatus, Priority
from scheduling.warm_pool import RecentArrivals
from store.base import Fenced, Idempotency
from store.retrying import StoreLike
from telemetry.logs import get_logger
from vram_scheduler import Demand

log = get_logger("QUEUE")
RANKS = tuple(sorted(p.rank for p in Priority))
AGING_CAP = 0.9                    # aging never lifts a job a whole priority level
SHARE_WINDOW = 200                 # grants over which each priority's share of the service is counted
OWED_AFTER = 2.0                   # grants short of its share before a priority is served out of turn
DEFAULT_SHARES = {Priority.LOW.rank: 1.0, Priority.NORMAL.rank: 3.0, Priority.HIGH.rank: 8.0}


class WaitingIndex:
    """Waiting job ids per model and priority rank, each line in submission order. Not
    thread-safe: the scheduler's loop owns it."""

    def __init__(self, aging_s: float, shares: Mapping[int, float] | None = None):
        self.aging_s = aging_s
        self.shares = dict(shares or DEFAULT_SHARES)
        self._lines: dict[str, dict[int, deque[tuple[float, str]]]] = {}
        self._size = 0
        self._waiting = dict.fromkeys(RANKS, 0)          # waiting jobs per rank
        self._granted = dict.fromkeys(RANKS, 0.0)        # slots given per rank, decayed over SHARE_WINDOW

    def __len__(self) -> int:
        return self._size

    def add(self, job_id: str, model: str, rank: int, submitted_at: float) -> None:
        lines = self._lines.setdefault(model, {})
        line = lines.setdefault(rank, deque())
        item = (submitted_at, job_id)
        if not line or line[-1] <= item:
            line.append(item)
        else:                              # a re-queued job goes back to its place in line
            bisect.insort(line, item)
        self._size += 1
        self._waiting[rank] = self._waiting.get(rank, 0) + 1

    # --- shares ------------------------------------------------------------------------------
    def owed(self) -> int | None:
        """The priority furthest short of its share of the service (its weight's part of the
        grants to the priorities with work waiting), when it is short by OWED_AFTER grants or
        more and is not the most urgent priority waiting anyway."""
        waiting = [r for r, n in self._waiting.items() if n > 0]
        if len(waiting) < 2:
            return None
        weight = sum(self.shares.get(r, 1.0) for r in waiting)
        granted = sum(self._granted.get(r, 0.0) for r in waiting)
        deficit = {r: self.shares.get(r, 1.0) / weight * granted - self._granted.get(r, 0.0) for r in waiting}
        nxt = max(waiting, key=lambda r: (deficit[r], r))
        if deficit[nxt] < OWED_AFTER or nxt == max(waiting):
            return None
        return nxt

    def _grant(self, rank: int) -> None:
        keep = 1.0 - 1.0 / SHARE_WINDOW
        for r in self._granted:
            self._granted[r] *= keep
        self._granted[rank] = self._granted.get(rank, 0.0) + 1.0

    def score(self, rank: int, submitted_at: float, now: float, owed: int | None = None) -> float:
        aged = min(max(now - submitted_at, 0.0) / self.aging_s, AGING_CAP)
        if rank == owed:
            return max(RANKS) + 1 + aged
        return rank + aged

    # --- reading and taking ------------------------------------------------------------------
    def demand(self, now: float) -> list[Demand]:
        """Per model: waiting count, best effective priority, oldest submission (3 heads each)."""
        out = []
        owed = self.owed()
        for model, lines in self._lines.items():
            waiting, best, oldest, best_rank, best_head = 0, -1.0, float("inf"), 0, now
            for rank, line in lines.items():
                if line:
                    waiting += len(line)
                    head = line[0][0]
                    score = self.score(rank, head, now, owed)
                    if score > best:
                        best, best_rank, best_head = score, rank, head
                    if head < oldest:
                        oldest = head
            if waiting:
                out.append(Demand(model, waiting, best, oldest, best_rank, max(now - best_head, 0.0)))
        return out

    def pop(self, model: str, now: float) -> str | None:
        """The most urgent waiting job of `model`, removed from the index."""
        entry = self.pop_entry(model, now)
        return entry[0] if entry else None

    def pop_entry(self, model: str, now: float) -> tuple[str, int, float] | None:
        """Like `pop`, with the job's rank and submission time (to put it back with `add`)."""
        lines = self._lines.get(model)
        if not lines:
            return None
        owed = self.owed()
        best_rank, best_score = None, -1.0
        for rank, line in lines.items():
            if line:
                s = self.score(rank, line[0][0], now, owed)
                if s > best_score:
                    best_rank, best_score = rank, s
        if best_rank is None:
            del self._lines[model]
            return None
        submitted_at, job_id = lines[best_rank].popleft()
        self._size -= 1
        self._waiting[best_rank] -= 1
        self._grant(best_rank)
        if not any(lines.values()):
            del self._lines[model]
        return job_id, best_rank, submitted_at

    def drop_model(self, model: str) -> list[str]:
        lines = self._lines.pop(model, {})
        ids: list[str] = []
        for rank, line in lines.items():
            self._waiting[rank] -= len(line)
            ids.extend(job_id for _, job_id in line)
        self._size -= len(ids)
        return ids

    def clear(self) -> None:
        self._lines.clear()
        self._size = 0
        self._waiting = dict.fromkeys(RANKS, 0)


class QueueManager:
    """Accepts jobs into the store and, in the scheduler's process, orders them."""

    def __init__(self, store: StoreLike, max_waiting: int, aging_s: float,
                 on_submit: Callable[[], None] | None = None, submit_store: StoreLike | None = None,
                 preload_window_s: float = 0.0):
        self.store = store
        self.submit_store = submit_store or store      # submissions may be less patient than the scheduler
        self.max_waiting = max_waiting
        self.index = WaitingIndex(aging_s)
        self._on_submit = on_submit
        self._lock = threading.Lock()
        self.accept_locally = False       # set while this process runs the scheduler
        self.epoch: int | None = None     # that scheduler's term: the jobs it holds are marked with it
        self.arrivals = RecentArrivals(preload_window_s)   # models recently asked for (preloading)

    def set_submit_listener(self, listener: Callable[[], None] | None) -> None:
        """Called after each accepted submit (the in-process scheduler wakes on it)."""
        self._on_submit = listener

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
        self.index.add(job["job_id"], job["model"], int(job["rank"]), float(job["submitted_at"]))
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
            job_id, rank, submitted_at = entry
            run_id, fields = run_fields(job_id)
            try:
                job = self.store.claim(job_id, run_id, fields, epoch)
            except Fenced:
                with self._lock:
                    self.index.add(job_id, model, rank, submitted_at)
                raise
            except Exception as exc:
                if self.store.is_unreadable(exc) and self._fail_unclaimable(job_id, exc, now):
                    continue            # that job's document is unusable: it fails, the others go on
                # The store failed: the job is still waiting there, so it goes back in line here;
                # what was claimed before it is returned to be run.
                log.exception("claiming job %s failed; it stays queued", job_id)
                with self._lock:
                    self.index.add(job_id, model, rank, submitted_at)
                break
            if job is not None:
                claimed.append(job)
        return claimed

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
