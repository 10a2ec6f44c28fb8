"""The simulated GPU's physics, with the clock passed in.

Used twice: by the simulator's HTTP server on the wall clock, and by the scheduling benchmark in
virtual time (thousands of jobs in seconds). Nothing here sleeps or reads a clock.

* Memory: a load reserves the model's size at once and takes size / load bandwidth; a load that
  would exceed the GPU's memory fails, as Ollama fails when a runner cannot allocate.
* Throughput: the jobs running at once share the GPU's generation throughput. With n jobs the
  GPU produces `tokens_per_s x (1 + batch_gain x log2 n)` tokens per second in all, split evenly:
  batching helps a little, so running more at once is not free.
* Energy (`EnergyMeter`): idle power while nothing generates, busy power while anything does.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from scheduling.gpu_placement import GpuSplit, place

OOM_MESSAGE = "llama runner process has terminated: cudaMalloc failed: out of memory"


class SimOutOfMemory(Exception):
    pass


K = TypeVar("K", bound=Hashable)     # what names a job (or a load)


class SharedThroughput(Generic[K]):
    """Processor sharing with equal shares: every running job advances at the same rate, so one
    counter of tokens served per job, and a heap of when each job will be done, say it all."""

    def __init__(self, tokens_per_s: float, batch_gain: float):
        self.tokens_per_s = tokens_per_s
        self.batch_gain = batch_gain
        self._served = 0.0               # tokens each running job has received since the start
        self._last: float | None = None
        self._targets: dict[K, tuple[float, float]] = {}   # key -> (served at done, tokens)
        self._heap: list[tuple[float, int, K]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._targets)

    def aggregate_rate(self, n: int) -> float:
        return self.tokens_per_s * (1.0 + self.batch_gain * math.log2(n)) if n > 0 else 0.0

    def per_job_rate(self, n: int | None = None) -> float:
        n = len(self._targets) if n is None else n
        return self.aggregate_rate(n) / n if n > 0 else 0.0

    def advance(self, now: float) -> list[K]:
        """Move to `now`; return the keys of jobs that finished (removed)."""
        if self._last is not None and now > self._last:
            self._served += self.per_job_rate() * (now - self._last)
        self._last = now if self._last is None else max(self._last, now)
        done: list[K] = []
        # relative tolerance: the counter may be large (bytes of loads), and the float sum that
        # reaches a job's target at its computed finish time may fall short by rounding
        while self._heap and self._heap[0][0] <= self._served + 1e-9 * max(1.0, abs(self._served)):
            _, _, key = heapq.heappop(self._heap)
            if key in self._targets:
                del self._targets[key]
                done.append(key)
        return done

    def add(self, key: K, tokens: float, now: float) -> list[K]:
        """Start a job of `tokens` tokens; returns jobs that finished on the way to `now`."""
        done = self.advance(now)
        target = self._served + max(tokens, 1e-9)
        self._targets[key] = (target, tokens)
        self._seq += 1
        heapq.heappush(self._heap, (target, self._seq, key))
        return done

    def remove(self, key: K, now: float) -> list[K]:
        done = self.advance(now)
        self._targets.pop(key, None)
        return done

    def produced(self, key: K) -> float:
        """Tokens `key` has received so far (as of the last advance)."""
        target, tokens = self._targets.get(key, (0.0, 0.0))
        return tokens - max(target - self._served, 0.0) if key in self._targets else tokens

    def next_finish(self) -> float | None:
        """When the next job will be done at the current rate (absolute time)."""
        while self._heap and self._heap[0][2] not in self._targets:
            heapq.heappop(self._heap)
        if not self._heap or self._last is None:
            return None
        rate = self.per_job_rate()
        return self._last + max(self._heap[0][0] - self._served, 0.0) / rate


@dataclass
class VirtualGpu:
    """Memory and load bandwidth of one simulated node: `gpus` GPUs sharing `total_bytes` evenly,
    each model placed on them as Ollama places it (`scheduling.gpu_placement.place`, by `split`)."""
    total_bytes: int
    load_bytes_per_s: float
    gpus: int = 1
    split: GpuSplit = GpuSplit.OLLAMA
    resident: dict[str, int] = field(default_factory=dict)    # loaded or loading, bytes
    placement: dict[str, tuple[int, ...]] = field(default_factory=dict)   # bytes on each GPU
    peak_bytes: int = 0
    loads: int = 0
    unloads: int = 0
    oom_errors: int = 0

    @property
    def used_bytes(self) -> int:
        return sum(self.resident.values())

    @property
    def gpu_totals(self) -> list[int]:
        share = self.total_bytes // self.gpus
        return [share] * (self.gpus - 1) + [self.total_bytes - share * (self.gpus - 1)]

    @property
    def gpu_used(self) -> list[int]:
        used = [0] * self.gpus
        for alloc in self.placement.values():
            for i, b in enumerate(alloc):
                used[i] += b
        return used

    def begin_load(self, name: str, size: int) -> float:
        """Reserve memory for `name`; return how long the load takes. Raises SimOutOfMemory."""
        if name in self.resident:
            return 0.0
        free = [t - u for t, u in zip(self.gpu_totals, self.gpu_used, strict=False)]
        alloc = place(size, free, self.split)
        if alloc is None:
            self.oom_errors += 1
            raise SimOutOfMemory(OOM_MESSAGE)
        self.resident[name] = size
        self.placement[name] = alloc
        self.loads += 1
        self.peak_bytes = max(self.peak_bytes, self.used_bytes)
        return size / self.load_bytes_per_s

    def unload(self, name: str) -> bool:
        if self.resident.pop(name, None) is None:
            return False
        self.placement.pop(name, None)
        self.unloads += 1
        return True


class EnergyMeter:
    """The simulated GPU's energy counter: `idle_w` watts while nothing generates, `busy_w` while
    anything does, integrated over time in joules (the way NVML's total energy counter grows)."""

    def __init__(self, idle_w: float, busy_w: float, now: float):
        self.idle_w = idle_w
        self.busy_w = busy_w
        self.joules = 0.0
        self.busy = False
        self._last = now

    @property
    def watts(self) -> float:
        return self.busy_w if self.busy else self.idle_w

    def update(self, now: float, busy: bool) -> float:
        """Count the energy up to `now` at the power so far, then switch to `busy`; the total."""
        if now > self._last:
            self.joules += self.watts * (now - self._last)
            self._last = now
        self.busy = busy
        return self.joules
