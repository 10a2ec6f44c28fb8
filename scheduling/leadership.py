"""Who schedules: every process competes for the store's scheduler lease; one holds it.

`Leadership` runs on a thread of its own, so that nothing slow (a runtime read, a runtime
restart, a store hiccup on another thread) can delay a renewal. It renews the lease every
LEASE_RENEW_S with a short timeout, and steps down *before* the lease could expire when it
cannot renew: a leader that cannot tell whether it still leads stops claiming work while no one
else may yet have started. Each term has an epoch (the lease's, which grows whenever the lease
changes hands) that fences the term's claims in the store.

An owner is `host:pid:start-time:random`, so that a process on the same host can tell whether
the owner of a run left behind is still alive (`owner_alive`).
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable

import psutil

from store.base import SCHEDULER_LEASE, JobStore
from telemetry.logs import get_logger

log = get_logger("SYSTEM")
LEASE_TTL_S = 5.0
LEASE_RENEW_S = 1.0


def new_owner() -> str:
    started = psutil.Process().create_time()
    return f"{socket.gethostname()}:{os.getpid()}:{started:.3f}:{uuid.uuid4().hex[:8]}"


def owner_alive(owner: str | None) -> bool | None:
    """Whether the process named by `owner` still runs: True or False when it is on this host,
    None (cannot tell) for another host or an owner of another form."""
    parts = (owner or "").split(":")
    if len(parts) != 4 or parts[0] != socket.gethostname():
        return None
    try:
        pid, started = int(parts[1]), float(parts[2])
        return abs(psutil.Process(pid).create_time() - started) < 0.01
    except (ValueError, psutil.Error):
        return False


class Leadership:
    def __init__(self, store: JobStore, owner: str, on_elected: Callable[[int], None],
                 on_lost: Callable[[str], None], ttl_s: float = LEASE_TTL_S, renew_s: float = LEASE_RENEW_S,
                 clock: Callable[[], float] = time.time):
        self.store = store
        self.owner = owner
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.ttl_s = ttl_s
        self.renew_s = renew_s
        self.clock = clock
        self.epoch: int | None = None               # set while leading
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def leading(self) -> bool:
        return self.epoch is not None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="leadership", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop competing; a leader steps down (the caller ends its term) and gives the lease up."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self.epoch is not None:
            self._lose("shutting down")

    def lost(self, reason: str) -> None:
        """Someone else found out first that this term is over (a fenced write, say)."""
        if self.epoch is not None:
            self._lose(reason)

    def _acquire(self) -> int | None:
        return self.store.acquire_lease(SCHEDULER_LEASE, self.owner, self.ttl_s, self.clock(),
                                        timeout_s=self.renew_s)

    def _run(self) -> None:
        last_ok = 0.0
        while not self._stop.is_set():
            if self.epoch is None:
                try:
                    epoch = self._acquire()
                except Exception as exc:
                    log.debug("cannot reach the store for the lease: %s", exc)
                    epoch = None
                if epoch is not None:
                    last_ok = self.clock()
                    self.epoch = epoch
                    log.info("scheduler %s leads (epoch %d)", self.owner, epoch)
                    self.on_elected(epoch)
                self._stop.wait(self.renew_s)
                continue
            self._stop.wait(self.renew_s)
            if self._stop.is_set() or self.epoch is None:
                continue
            try:
                epoch = self._acquire()
            except Exception as exc:
                if self.clock() - last_ok >= self.ttl_s - self.renew_s:
                    self._lose(f"cannot renew the scheduler lease ({exc}); stepping down before it expires")
                else:
                    log.warning("renewing the scheduler lease failed: %s", exc)
                continue
            if epoch != self.epoch:
                self._lose("another scheduler holds the lease" if epoch is None else
                           f"the lease moved to epoch {epoch}")
            else:
                last_ok = self.clock()

    def _lose(self, reason: str) -> None:
        with self._lock:
            epoch, self.epoch = self.epoch, None
        if epoch is None:
            return
        log.warning("scheduler %s steps down (epoch %d): %s", self.owner, epoch, reason)
        self.on_lost(reason)
        try:       # if it is still ours, let it go: whoever takes it next starts a new epoch
            self.store.release_lease(SCHEDULER_LEASE, self.owner)
        except Exception as exc:
            log.debug("could not release the scheduler lease: %s", exc)
