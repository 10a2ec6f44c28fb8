"""Event counts for /api/stats (loads, unloads, errors by kind, job outcomes), the scheduler's
recent activity for the dashboard, and an optional observer that sees every event as it happens
(process_metrics.ProcessMetrics, behind /metrics). Thread-safe."""
from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Mapping
from typing import Any, Protocol

from jobs.model import ErrorKind
from telemetry.activity import ActivityLog

_ACTIVITY_COUNT = {"load": "loads", "unload": "unloads", "evict": "evictions"}


def error_key(kind: ErrorKind) -> str:
    """The name an error kind is counted under in /api/stats (`errors.oom`)."""
    return f"errors.{kind.value}"


class CountObserver(Protocol):
    def counted(self, name: str, n: int) -> None: ...

    def error(self, kind: ErrorKind, n: int) -> None: ...

    def activity(self, kind: str, model: str, node: str) -> None: ...

    def job_finished(self, status: str, job: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None,
                     n: int) -> None: ...


class Counters:
    def __init__(self, observer: CountObserver | None = None) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self.observer = observer
        self.activity = ActivityLog()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n
        if self.observer is not None:
            self.observer.counted(name, n)

    def error(self, kind: ErrorKind, n: int = 1) -> None:
        """A runtime failure of a load or a job, by kind: `errors.<kind>` in /api/stats, and the
        observer's `runtime_errors{kind}` in /metrics. The one way errors are counted."""
        with self._lock:
            self._counts[error_key(kind)] += n
        if self.observer is not None:
            self.observer.error(kind, n)

    def record(self, kind: str, model: str, node: str, at: float) -> None:
        """A load, unload or eviction ("load", "unload", "evict") of `model` on `node`: counted
        as loads, unloads, evictions, and kept in the recent activity."""
        self.activity.record(kind, model, node, at)
        with self._lock:
            self._counts[_ACTIVITY_COUNT[kind]] += 1
        if self.observer is not None:
            self.observer.activity(kind, model, node)

    def job_finished(self, status: str, job: Mapping[str, Any] | None = None,
                     metrics: Mapping[str, Any] | None = None, n: int = 1) -> None:
        """`n` jobs reached a final status (complete, failed, cancelled) in this process; `job`
        and its `metrics` when known (a run the engine finished)."""
        if self.observer is not None and n > 0:
            self.observer.job_finished(status, job, metrics, n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
