"""The GPU simulator's slots: requests wait for a model's slots in a first come, first served
queue per model, as they wait inside Ollama (whatever priority the sender had in mind).

`SlotQueues` is bookkeeping only: the simulator holds its lock around every call, decides when
the head of a queue may have a slot (model loaded with the right context, a slot free), and
wakes the waiter through its `done` event. It also keeps what `/api/sim/stats` tells about slots:
the most requests in flight and running per model, and the order requests got their slots.
"""
from __future__ import annotations

import itertools
import threading
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

SERVED_KEPT = 1000          # entries of the `served` and `answered` logs kept


class ServerBusy(Exception):
    """More requests wait inside the simulator than its max_queue: Ollama answers HTTP 503."""
    MESSAGE = "server busy, please try again.  maximum pending requests exceeded"

    def __init__(self) -> None:
        super().__init__(self.MESSAGE)


class ClientGone(Exception):
    """The client closed its connection: Ollama cancels the request (HTTP 499, read by no one)."""


_arrivals = itertools.count()


def next_arrival() -> int:
    """The next number in the order requests arrive (one count for the whole process)."""
    return next(_arrivals)


@dataclass(eq=False)
class Waiter:
    """One request inside the simulator, from arrival until it is done with its model."""
    model: str
    num_ctx: int | None             # the context it needs; None: whatever the model has
    wants_slot: bool                # False: a load without a prompt, done once the model is ready
    prompt: str
    keep_alive_s: float | None
    arrived: float
    seq: int = field(default_factory=next_arrival)
    done: threading.Event = field(default_factory=threading.Event)   # granted, or failed
    error: Exception | None = None
    slot_at: float | None = None    # when it got its slot
    released: bool = False


class SlotQueues:
    """Per-model FIFO queues of waiters, and counts of what is in flight. Not thread-safe: the
    caller holds its lock."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Waiter]] = {}
        self.waiting = 0                                  # queued now, all models
        self.in_flight: Counter[str] = Counter()          # waiting + running, per model
        self.running: Counter[str] = Counter()            # holding a slot, per model
        self.max_in_flight: dict[str, int] = {}
        self.max_running: dict[str, int] = {}
        self.served: deque[dict[str, Any]] = deque(maxlen=SERVED_KEPT)      # in the order they got a slot
        self.answered: deque[dict[str, Any]] = deque(maxlen=SERVED_KEPT)    # whole answers sent, in order
        self.started_count: Counter[str] = Counter()     # per prompt, every time (for long runs: soak)
        self.answered_count: Counter[str] = Counter()

    def enqueue(self, w: Waiter) -> None:
        self._queues.setdefault(w.model, deque()).append(w)
        self.waiting += 1
        self.in_flight[w.model] += 1
        self.max_in_flight[w.model] = max(self.max_in_flight.get(w.model, 0), self.in_flight[w.model])

    def head(self, model: str) -> Waiter | None:
        queue = self._queues.get(model)
        return queue[0] if queue else None

    def has_waiters(self, model: str) -> bool:
        return bool(self._queues.get(model))

    def grant(self, w: Waiter, now: float) -> None:
        """The head `w` takes a slot of its model."""
        self._dequeue(w)
        w.slot_at = now
        self.running[w.model] += 1
        self.max_running[w.model] = max(self.max_running.get(w.model, 0), self.running[w.model])
        self.served.append({"model": w.model, "prompt": w.prompt, "started_at": now})
        self.started_count[w.prompt] += 1
        w.done.set()

    def answered_once_more(self, w: Waiter, now: float) -> None:
        self.answered.append({"model": w.model, "prompt": w.prompt, "at": now})
        self.answered_count[w.prompt] += 1

    def repeats(self) -> dict[str, int]:
        """Prompts started (or answered in whole) more than once, over the whole run."""
        return {"started": sum(1 for n in self.started_count.values() if n > 1),
                "answered": sum(1 for n in self.answered_count.values() if n > 1),
                "prompts": len(self.started_count)}

    def release(self, w: Waiter) -> bool:
        """`w` gives its slot back; False when it had none or gave it back already."""
        if w.slot_at is None or w.released:
            return False
        w.released = True
        self.running[w.model] -= 1
        self.in_flight[w.model] -= 1
        return True

    def finish_unslotted(self, w: Waiter, error: Exception | None = None) -> None:
        """`w` leaves the queue without a slot: a load that is done, or a failure."""
        self._dequeue(w)
        self.in_flight[w.model] -= 1
        w.error = error
        w.done.set()

    def cancel(self, w: Waiter) -> bool:
        """`w`'s client went away while it waited; False when it was no longer waiting."""
        if w.done.is_set():
            return False
        self._dequeue(w)
        self.in_flight[w.model] -= 1
        return True

    def _dequeue(self, w: Waiter) -> None:
        queue = self._queues[w.model]
        if queue[0] is w:
            queue.popleft()
        else:
            queue.remove(w)
        if not queue:
            del self._queues[w.model]
        self.waiting -= 1
