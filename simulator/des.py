"""A discrete-event run of the GPU simulator's physics in virtual time: thousands of jobs in
seconds, for comparing scheduling policies on the same job trace and for capacity planning.

The physics are the HTTP simulator's (`physics.py`): the jobs running at once share the GPU's
generation throughput, the loads in flight share its load bandwidth, and memory is checked at
every load. A loaded model has a number of slots, like an Ollama runner: it takes the weights
and the KV cache of every slot (`model_memory.kv_cache_bytes`, NUM_CTX tokens each), and runs at
most that many jobs at once (a policy that starts more fails the run). A policy sees events
(arrivals, finished jobs, finished loads) and acts through the `Gpu` handle: start a load,
unload, start a job. The run records, per job, when it arrived, started and finished; per run,
loads, unloads, out-of-memory errors and peak memory.
"""
from __future__ import annotations

import heapq
import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from model_memory import ModelArch, kv_cache_bytes
from simulator.physics import SharedThroughput, SimOutOfMemory, VirtualGpu

DEFAULT_NUM_CTX = 2048


@dataclass
class Job:
    id: int
    model: str
    priority: str             # "high", "normal", "low"
    arrival: float
    tokens: int
    started: float | None = None
    finished: float | None = None


@dataclass(frozen=True)
class SimModel:
    name: str
    size_bytes: int                  # weights
    arch: ModelArch | None = None    # sizes the KV cache


def make_trace(models: list[SimModel], n: int, rate_per_s: float, seed: int = 1, zipf_s: float = 1.1,
               priorities: tuple[tuple[str, float], ...] = (("high", 0.15), ("normal", 0.5), ("low", 0.35)),
               mean_tokens: float = 100.0) -> list[Job]:
    """`n` jobs arriving as a Poisson process at `rate_per_s`; model popularity Zipf(`zipf_s`) over
    `models` (first = most popular); output lengths log-normal around `mean_tokens`."""
    rng = random.Random(seed)
    weights = [1.0 / (rank ** zipf_s) for rank in range(1, len(models) + 1)]
    names, shares = zip(*priorities)
    t, jobs = 0.0, []
    sigma = 0.6
    mu = math.log(mean_tokens) - sigma ** 2 / 2
    for i in range(n):
        t += rng.expovariate(rate_per_s)
        model = rng.choices(models, weights)[0]
        tokens = max(8, min(1024, int(rng.lognormvariate(mu, sigma))))
        jobs.append(Job(i, model.name, rng.choices(names, shares)[0], t, tokens))
    return jobs


class Policy(Protocol):
    name: str

    def attach(self, gpu: Gpu) -> None: ...

    def on_arrival(self, job: Job) -> None: ...

    def on_job_done(self, job: Job) -> None: ...

    def on_load_done(self, model: str) -> None: ...

    def step(self) -> None:
        """Act on the current state (called after every batch of events at one instant)."""


@dataclass
class RunResult:
    policy: str
    jobs: list[Job]
    loads: int
    unloads: int
    oom_errors: int
    peak_bytes: int
    end_time: float

    @property
    def makespan(self) -> float:
        return max(j.finished for j in self.jobs) - min(j.arrival for j in self.jobs)

    def waits(self, priority: str | None = None) -> list[float]:
        return [j.started - j.arrival for j in self.jobs if priority is None or j.priority == priority]


class Gpu:
    """What a policy may do, and the simulated clock."""

    def __init__(self, models: dict[str, SimModel], total_bytes: int, load_bytes_per_s: float,
                 tokens_per_s: float, batch_gain: float, num_ctx: int = DEFAULT_NUM_CTX):
        self.models = models
        self.num_ctx = num_ctx
        self.memory = VirtualGpu(total_bytes, load_bytes_per_s)
        self.generation = SharedThroughput(tokens_per_s, batch_gain)
        self.bandwidth = SharedThroughput(load_bytes_per_s, 0.0)    # loads in flight share it
        self.now = 0.0
        self.loaded: set[str] = set()
        self.loading: set[str] = set()
        self.slots: dict[str, int] = {}
        self.running: dict[int, Job] = {}
        self._running_on: dict[str, int] = {}
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    @property
    def used_bytes(self) -> int:
        return self.memory.used_bytes

    def footprint(self, model: str, slots: int) -> int:
        """Weights and the KV cache of `slots` slots: what a load of `model` takes."""
        m = self.models[model]
        return m.size_bytes + kv_cache_bytes(m.arch, self.num_ctx, slots, m.size_bytes)

    def load(self, model: str, slots: int = 1) -> bool:
        """Start loading `model` with `slots` slots; False (an out-of-memory error) when it does not fit."""
        try:
            self.memory.begin_load(model, self.footprint(model, slots))
        except SimOutOfMemory:
            return False
        self.slots[model] = slots
        self.loading.add(model)
        self.bandwidth.add(("load", model), self.models[model].size_bytes, self.now)
        return True

    def unload(self, model: str) -> None:
        assert model in self.loaded and not self._running_on.get(model), model
        self.loaded.discard(model)
        self.slots.pop(model, None)
        self.memory.unload(model)

    def start(self, job: Job) -> None:
        assert job.model in self.loaded, job.model
        running = self._running_on.get(job.model, 0)
        assert running < self.slots[job.model], f"{job.model}: more jobs than its {self.slots[job.model]} slots"
        self._running_on[job.model] = running + 1
        job.started = self.now
        self.running[job.id] = job
        self.generation.add(job.id, job.tokens, self.now)

    def running_on(self, model: str) -> int:
        return self._running_on.get(model, 0)

    def job_done(self, job_id: int) -> Job:
        job = self.running.pop(job_id)
        self._running_on[job.model] -= 1
        job.finished = self.now
        return job

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (self.now + delay, next(self._seq), fn))


def run(policy: Policy, trace: list[Job], models: list[SimModel], total_bytes: int, load_bytes_per_s: float,
        tokens_per_s: float, batch_gain: float, num_ctx: int = DEFAULT_NUM_CTX, time_limit: float = 1e7) -> RunResult:
    jobs = [Job(j.id, j.model, j.priority, j.arrival, j.tokens) for j in trace]
    gpu = Gpu({m.name: m for m in models}, total_bytes, load_bytes_per_s, tokens_per_s, batch_gain, num_ctx)
    policy.attach(gpu)
    for job in jobs:
        gpu.after(job.arrival, lambda job=job: policy.on_arrival(job))
    done = 0
    while done < len(jobs):
        candidates = [t for t in (gpu.generation.next_finish(), gpu.bandwidth.next_finish()) if t is not None]
        if gpu._timers:
            candidates.append(gpu._timers[0][0])
        if not candidates:
            raise RuntimeError(f"{policy.name}: stuck with {len(jobs) - done} jobs unfinished at t={gpu.now:.1f}")
        gpu.now = max(gpu.now, min(candidates))
        if gpu.now > time_limit:
            raise RuntimeError(f"{policy.name}: ran past the time limit")
        for key in gpu.bandwidth.advance(gpu.now):
            model = key[1]
            gpu.loading.discard(model)
            gpu.loaded.add(model)
            policy.on_load_done(model)
        for job_id in gpu.generation.advance(gpu.now):
            job = gpu.job_done(job_id)
            done += 1
            policy.on_job_done(job)
        while gpu._timers and gpu._timers[0][0] <= gpu.now:
            _, _, fn = heapq.heappop(gpu._timers)
            fn()
        policy.step()
    return RunResult(policy.name, jobs, gpu.memory.loads, gpu.memory.unloads, gpu.memory.oom_errors,
                     gpu.memory.peak_bytes, gpu.now)
