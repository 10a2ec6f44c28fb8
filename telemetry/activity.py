"""The scheduler's recent activity (loads, unloads, evictions), for the dashboard: the last few
events as they happened, and counts per minute over the last half hour. Thread-safe; small enough to
be published with the scheduler's view twice a second."""
from __future__ import annotations

import threading
from collections import deque
from typing import Any

ACTIVITY_KINDS = ("load", "unload", "evict")
RECENT_EVENTS = 30
MINUTES_KEPT = 30


class ActivityLog:
    def __init__(self, recent: int = RECENT_EVENTS, minutes: int = MINUTES_KEPT):
        self._lock = threading.Lock()
        self._events: deque[dict[str, Any]] = deque(maxlen=recent)
        self._per_minute: dict[int, dict[str, int]] = {}
        self._minutes = minutes

    def record(self, kind: str, model: str, node: str, at: float) -> None:
        if kind not in ACTIVITY_KINDS:
            raise ValueError(f"unknown activity {kind!r}")
        minute = int(at // 60)
        with self._lock:
            self._events.append({"at": round(at, 3), "kind": kind, "model": model, "node": node})
            bucket = self._per_minute.setdefault(minute, dict.fromkeys(ACTIVITY_KINDS, 0))
            bucket[kind] += 1
            for old in [m for m in self._per_minute if m <= minute - self._minutes]:
                del self._per_minute[old]

    def snapshot(self) -> dict[str, Any]:
        """{"events": newest last, "per_minute": [{"minute": start (Unix s), "load", "unload", "evict"}]}."""
        with self._lock:
            return {"events": list(self._events),
                    "per_minute": [{"minute": m * 60, **counts} for m, counts in sorted(self._per_minute.items())]}
