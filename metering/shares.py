"""Dividing a shared counter among the jobs that shared it. Pure: readings in, shares out.

A runner process serves several jobs at once when its model has several slots, and a GPU serves
every model loaded on it; their counters (CPU seconds, joules, busy seconds) count the work of
all of them. Charging each job the whole counter over its run would charge the same work
several times over. The rule here: between two readings of the counter, what it counted is
divided equally among the jobs active in that interval (equal shares by overlap in time, as
llama.cpp works on its slots in one batch). Readings are taken whenever a job joins or leaves,
so the set of active jobs is constant between readings, and the shares of all jobs add up to
what the counter counted while any of them was active.
"""
from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass


@dataclass
class Share:
    amount: float = 0.0            # this job's part of the counter
    joined_at: float = 0.0
    max_sharing: int = 1           # most jobs active at once (itself included) during its stay
    sharing_time: float = 0.0      # integral of the number of active jobs over its stay

    def mean_sharing(self, left_at: float) -> float:
        span = left_at - self.joined_at
        return self.sharing_time / span if span > 0 else float(self.max_sharing)


class SharedCounter:
    """One counter (a process's CPU seconds, a GPU's energy) and the jobs sharing it."""

    def __init__(self) -> None:
        self._active: dict[Hashable, Share] = {}
        self._value: float | None = None
        self._at = 0.0

    def __len__(self) -> int:
        return len(self._active)

    def reading(self, value: float | None, at: float) -> None:
        """The counter read `value` at `at`: split what it counted since the last reading. A
        reading that failed (None) ends the stretch: what the counter counts until the next good
        reading is charged to no one, rather than to whoever is active then."""
        if value is None:
            self._value = None
            return
        if self._value is not None and self._active:
            delta = value - self._value
            if delta > 0:                      # a counter that went back (process restarted): skip it
                each = delta / len(self._active)
                for share in self._active.values():
                    share.amount += each
            span = max(at - self._at, 0.0)
            for share in self._active.values():
                share.sharing_time += span * len(self._active)
        self._value, self._at = value, at

    def join(self, key: Hashable, value: float | None, at: float) -> None:
        self.reading(value, at)
        self._active[key] = Share(joined_at=at)
        n = len(self._active)
        for share in self._active.values():
            share.max_sharing = max(share.max_sharing, n)

    def leave(self, key: Hashable, value: float | None, at: float) -> Share | None:
        self.reading(value, at)
        return self._active.pop(key, None)
