"""Accepting, storing and ordering jobs.

The store holds every job (so that any API worker can accept and report one). The scheduler's
process keeps `WaitingIndex`, an in-memory view of the waiting jobs by model and priority, fed
from the store by `QueueManager.sync()`. Ordering never scans the whole queue: within a model
and priority jobs are FIFO, so the head of each (model, priority) line is its most urgent job,
and a scheduler pass looks at three heads per model whatever the queue's length.

Order: effective priority = rank (low 0, normal 1, high 2) + seconds waited / QUEUE_AGING_S.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from jobs import JobDoc, Priority
from log_setup import get_logger
from store.base import JobStore
from vram_scheduler import Demand

log = get_logger("QUEUE")
RANKS = tuple(sorted(p.rank for p in Priority))


class WaitingIndex:
    """Waiting job ids per model and priority rank, each line in submission order. Not
    thread-safe: the scheduler's loop owns it."""

    def __init__(self, aging_s: float):
        self.aging_s = aging_s
        self._lines: dict[str, dict[int, deque[tuple[float, str]]]] = {}
        self._size = 0

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

    def score(self, rank: int, submitted_at: float, now: float) -> float:
        return rank + max(now - submitted_at, 0.0) / self.aging_s

    def demand(self, now: float) -> list[Demand]:
        """Per model: waiting count, best effective priority, oldest submission (3 heads each)."""
        out = []
        aging = self.aging_s
        for model, lines in self._lines.items():
            waiting, best, oldest = 0, -1.0, float("inf")
            for rank, line in lines.items():
                if line:
                    waiting += len(line)
                    head = line[0][0]
                    score = rank + (now - head) / aging if now > head else rank
                    if score > best:
                        best = score
                    if head < oldest:
                        oldest = head
            if waiting:
                out.append(Demand(model, waiting, best, oldest))
        return out

    def pop(self, model: str, now: float) -> str | None:
        """The most urgent waiting job of `model`, removed from the index."""
        lines = self._lines.get(model)
        if not lines:
            return None
        best_rank, best_score = None, -1.0
        for rank, line in lines.items():
            if line:
                s = self.score(rank, line[0][0], now)
                if s > best_score:
                    best_rank, best_score = rank, s
        if best_rank is None:
            del self._lines[model]
            return None
        _, job_id = lines[best_rank].popleft()
        self._size -= 1
        if not any(lines.values()):
            del self._lines[model]
        return job_id

    def drop_model(self, model: str) -> list[str]:
        lines = self._lines.pop(model, {})
        ids = [job_id for line in lines.values() for _, job_id in line]
        self._size -= len(ids)
        return ids

    def clear(self) -> None:
        self._lines.clear()
        self._size = 0


class QueueManager:
    """Accepts jobs into the store and, in the scheduler's process, orders them."""

    def __init__(self, store: JobStore, max_waiting: int, aging_s: float,
                 on_submit: Callable[[], None] | None = None):
        self.store = store
        self.max_waiting = max_waiting
        self.index = WaitingIndex(aging_s)
        self._on_submit = on_submit
        self._lock = threading.Lock()
        self.accept_locally = False       # set while this process runs the scheduler

    def set_submit_listener(self, listener: Callable[[], None] | None) -> None:
        """Called after each accepted submit (the in-process scheduler wakes on it)."""
        self._on_submit = listener

    # --- accepting ---------------------------------------------------------------------------
    def submit(self, job: JobDoc) -> int:
        """Store `job`; return its position (waiting jobs ahead). Raises QueueFull.

        In the scheduler's own process the job goes straight into the index (stored as queued),
        which spares the scheduler a round trip through the store."""
        local = self.accept_locally
        if local:
            job = {**job, "status": "queued"}
        position = self.store.enqueue(job, self.max_waiting)
        if local:
            with self._lock:
                if self.accept_locally:
                    self.index.add(job["job_id"], job["model"], int(job["rank"]), float(job["submitted_at"]))
                else:           # stepped down meanwhile: let the next scheduler take it from the store
                    self.store.release_taken()
        log.debug("accepted %s for %s (%s), position %d", job["job_id"], job["model"],
                  job["priority"], position)
        if self._on_submit is not None:
            self._on_submit()
        return position

    # --- ordering (scheduler's process) ------------------------------------------------------
    def start(self) -> None:
        """A scheduler taking over: forget the index and take every waiting job afresh."""
        with self._lock:
            self.index.clear()
            released = self.store.release_taken()
            self.accept_locally = True
        if released:
            log.info("re-took %d queued jobs", released)

    def stop(self) -> None:
        """This process no longer schedules: jobs go through the store again."""
        with self._lock:
            self.accept_locally = False
            self.index.clear()

    def sync(self, limit: int = 5000) -> int:
        """Take newly submitted jobs from the store into the index."""
        taken = self.store.take_new(limit)
        with self._lock:
            for job in taken:
                self.index.add(job["job_id"], job["model"], int(job["rank"]), float(job["submitted_at"]))
        return len(taken)

    def demand(self, now: float) -> list[Demand]:
        with self._lock:
            return self.index.demand(now)

    def take(self, model: str, n: int, now: float, run_fields: Callable[[str], tuple[str, dict[str, Any]]]
             ) -> list[JobDoc]:
        """Claim up to `n` of `model`'s most urgent jobs for running. `run_fields(job_id)` gives
        the run id and fields to set; a job cancelled meanwhile is skipped."""
        claimed: list[JobDoc] = []
        while len(claimed) < n:
            with self._lock:
                job_id = self.index.pop(model, now)
            if job_id is None:
                break
            run_id, fields = run_fields(job_id)
            job = self.store.claim(job_id, run_id, fields)
            if job is not None:
                claimed.append(job)
        return claimed

    def fail_model(self, model: str, fields: dict[str, Any]) -> int:
        """Fail every waiting job of `model` (it can never run)."""
        with self._lock:
            ids = self.index.drop_model(model)
        return sum(self.store.fail_waiting(job_id, fields) for job_id in ids)

    def waiting(self) -> int:
        with self._lock:
            return len(self.index)
