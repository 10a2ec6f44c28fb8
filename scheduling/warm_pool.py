"""Which models to keep warm: pinned ones (PINNED_MODELS), and ones predicted from recent arrivals.

The prediction is deliberately simple: a model that had jobs arrive in the last `window_s`
seconds is likely to have more soon; the more arrivals, the likelier. The planner loads such a
model only into memory that no waiting work needs, and it is the first to give way again, so a
wrong guess costs a load's bandwidth and nothing else. Pure: the arrivals are passed in.
"""
from __future__ import annotations

from collections import Counter, deque
from collections.abc import Iterable


class RecentArrivals:
    """The models of jobs that arrived in the last `window_s` seconds (a sliding window)."""

    def __init__(self, window_s: float, max_kept: int = 10_000):
        self.window_s = window_s
        self._arrivals: deque[tuple[float, str]] = deque(maxlen=max_kept)

    def add(self, at: float, model: str) -> None:
        if self.window_s > 0:
            self._arrivals.append((at, model))

    def predicted(self, now: float, limit: int, exclude: Iterable[str] = ()) -> list[str]:
        """Up to `limit` models, most arrivals first, that are not in `exclude`."""
        while self._arrivals and self._arrivals[0][0] < now - self.window_s:
            self._arrivals.popleft()
        if limit <= 0 or not self._arrivals:
            return []
        skip = set(exclude)
        counts = Counter(model for _, model in self._arrivals if model not in skip)
        return [model for model, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]
