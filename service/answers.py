"""Streaming a job's answer to the request that waits for it, as the runtime produces it.

The process that runs a job (the scheduler's) and the one holding the client's connection may
differ (gunicorn workers, hosts). So:

* in the running process, `PieceWriter` hands each piece to the `StreamHub`, where requests of
  the same process follow it at once; a job submitted from another process is marked `relay`,
  and its pieces are also written to the store in batches every RELAY_FLUSH_S;
* the following side (`follow`) reads the hub or the store, and watches the job's status until
  it has finished: the finished job's result holds the whole answer, so whatever was not
  streamed (a relay batch not yet written, a run that moved to another process) is sent from it.
"""
from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from jobs.model import FINISHED, JobDoc
from telemetry.logs import get_logger

log = get_logger("ENGINE")
RELAY_FLUSH_S = 0.05        # a relayed stream is written to the store at most this often
POLL_MIN_S, POLL_MAX_S = 0.01, 0.1
LOCAL_STATUS_EVERY_S = 0.5  # a follower in the running process reads the status this often anyway


@dataclass(frozen=True)
class Piece:
    run_id: str
    piece: dict[str, Any]           # {"text", "thinking"?, "tool_calls"?}


@dataclass(frozen=True)
class End:
    job: JobDoc | None              # None: the job is gone (purged)


@dataclass(frozen=True)
class Gone:
    """The client went away."""


Event = Piece | End | Gone
_END_SIGNAL = object()


class StreamHub:
    """Pieces of the answers being produced in this process, for the requests here that follow them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._followers: dict[str, list[queue.SimpleQueue]] = {}

    def subscribe(self, job_id: str) -> queue.SimpleQueue:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._followers.setdefault(job_id, []).append(inbox)
        return inbox

    def unsubscribe(self, job_id: str, inbox: queue.SimpleQueue) -> None:
        with self._lock:
            inboxes = self._followers.get(job_id, [])
            if inbox in inboxes:
                inboxes.remove(inbox)
            if not inboxes:
                self._followers.pop(job_id, None)

    def publish(self, job_id: str, run_id: str, piece: dict[str, Any]) -> None:
        with self._lock:
            inboxes = list(self._followers.get(job_id, ()))
        for inbox in inboxes:
            inbox.put(Piece(run_id, piece))

    def finished(self, job_id: str) -> None:
        """The job ended here (its end is recorded): followers read it now."""
        with self._lock:
            inboxes = list(self._followers.get(job_id, ()))
        for inbox in inboxes:
            inbox.put(_END_SIGNAL)


class PieceWriter:
    """The running side of one streamed run."""

    def __init__(self, hub: StreamHub, store: Any, job_id: str, run_id: str, relay: bool,
                 clock: Callable[[], float] = time.time):
        self.hub, self.store = hub, store
        self.job_id, self.run_id, self.relay = job_id, run_id, relay
        self.clock = clock
        self._batch: list[dict[str, Any]] = []
        self._seq = 0
        self._count = 0             # pieces relayed so far: each carries its index ("i")
        self._flushed_at = 0.0

    def add(self, piece: dict[str, Any]) -> None:
        self.hub.publish(self.job_id, self.run_id, piece)
        if not self.relay:
            return
        self._batch.append({**piece, "i": self._count})
        self._count += 1
        if time.monotonic() - self._flushed_at >= RELAY_FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if not self._batch:
            return
        # A new batch number for every attempt: a write that failed may still have landed, and
        # its pieces sent again are told apart by their index, not lost under an old number.
        seq, self._seq = self._seq, self._seq + 1
        try:
            self.store.append_pieces(self.job_id, self.run_id, seq, self._batch, self.clock())
        except Exception as exc:        # the answer still reaches the client whole, from the result
            log.debug("relaying pieces of job %s failed (%s); kept for the next batch", self.job_id, exc)
            return
        self._batch = []
        self._flushed_at = time.monotonic()


def follow(job_id: str, inbox: queue.SimpleQueue | None, get_job: Callable[[str], JobDoc | None],
           read_pieces: Callable[[str, int], list[tuple[str, list[dict[str, Any]]]]] | None,
           gone: Callable[[], bool]) -> Iterator[Event]:
    """Pieces of `job_id`'s answer as they come (from `inbox` in the running process, else from
    the store when `read_pieces` is given), then its End; or Gone when the client left first.
    Without either source it only waits for the End."""
    read = 0
    relayed: dict[str, int] = {}      # per run: the index of the next relayed piece
    delay = POLL_MIN_S
    status_at = time.monotonic()
    while True:
        check = inbox is None        # no word from the running process: read the status every time
        fresh = False
        if read_pieces is not None:
            for run_id, batch in read_pieces(job_id, read):
                read += 1
                fresh = True
                for piece in batch:
                    index = piece.get("i", relayed.get(run_id, 0))
                    if index < relayed.get(run_id, 0):
                        continue            # sent again after a write that seemed to fail
                    relayed[run_id] = index + 1
                    yield Piece(run_id, {k: v for k, v in piece.items() if k != "i"})
            check = True
        if inbox is not None:
            try:
                item = inbox.get(timeout=0 if fresh else delay)
                while True:
                    if item is _END_SIGNAL:
                        check = True
                    else:
                        fresh = True
                        yield item
                    item = inbox.get_nowait()
            except queue.Empty:
                pass
        elif not fresh:
            time.sleep(delay)
        now = time.monotonic()
        if check or now - status_at >= LOCAL_STATUS_EVERY_S:
            status_at = now
            job = get_job(job_id)
            if job is None or job["status"] in FINISHED:
                yield End(job)
                return
        if gone():
            yield Gone()
            return
        delay = POLL_MIN_S if fresh else min(delay * 2, POLL_MAX_S)
