"""A discrete-event run of the GPU simulator's physics in virtual time: thousands of jobs in
seconds, for comparing scheduling policies on the same job trace and for capacity planning.

The physics are the HTTP simulator's (`physics.py`): the jobs running at once share the GPU's
generation throughput, the loads in flight share its load bandwidth, and memory is checked at
every load. A loaded model has a number of slots, like an Ollama runner: it takes the weights
and the KV cache of every slot (`scheduling.model_memory.kv_cache_bytes`, NUM_CTX tokens each), and runs at
most that many jobs at once (a policy that starts more fails the run). A policy sees events
(arrivals, finished jobs, finished loads) and acts through the `Gpu` handle: start a load,
unload, start a job. The run records, per job, when it arrived, started and finished; per run,
loads, unloads, out-of-memory errors and peak memory.

A run may have several nodes (`nodes=`): each its own `Gpu` (memory, generation throughput,
load bandwidth), all on one virtual clock and one timer heap (`Clock`). A policy with
`attach_nodes` sees them all (and is told on which node a load finished); any other policy runs
on one node. With one node a run is exactly what it was before there were several.
"""
from __future__ import annotations

import functools
import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, cast

from scheduling.model_memory import ModelArch, kv_cache_bytes
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
    node: int | None = None   # index of the node that ran it
    tenant: str = ""          # whose it is (the fair share between tenants)
    resumable: bool = True    # preempted, it resumes (a chat); else it starts over (a generate)
    preempted: int = 0        # times it was stopped for more urgent work
    remaining: int | None = None   # tokens still to produce after a preemption (None: all of them)
    wasted: int = 0           # tokens thrown away by restarts


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
    names, shares = zip(*priorities, strict=False)
    t, jobs = 0.0, []
    sigma = 0.6
    mu = math.log(mean_tokens) - sigma ** 2 / 2
    for i in range(n):
        t += rng.expovariate(rate_per_s)
        model = rng.choices(models, weights)[0]
        tokens = max(8, min(1024, int(rng.lognormvariate(mu, sigma))))
        jobs.append(Job(i, model.name, rng.choices(names, shares)[0], t, tokens))
    return jobs


@dataclass(frozen=True)
class NodeSpec:
    """One node of a run: a GPU's memory, load bandwidth and generation throughput."""
    name: str
    total_bytes: int
    load_bytes_per_s: float
    tokens_per_s: float
    batch_gain: float


class Clock:
    """The virtual time of a run and its timers, shared by all its nodes."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self.timers, (self.now + delay, next(self._seq), fn))


class Policy(Protocol):
    """A one-node policy. A cluster-aware one has `attach_nodes(gpus)` instead of `attach`, and
    `on_load_done(model, gpu)`; `job.node` says where a finished job ran."""
    name: str

    def attach(self, gpu: Gpu) -> None: ...

    def on_arrival(self, job: Job) -> None: ...

    def on_job_done(self, job: Job) -> None: ...

    def on_load_done(self, model: str) -> None: ...

    def step(self) -> None:
        """Act on the current state (called after every batch of events at one instant)."""


class ClusterPolicy(Policy, Protocol):
    """A cluster-aware policy: it sees every node, and is told on which one a load finished."""

    def attach_nodes(self, gpus: list[Gpu]) -> None: ...

    def on_load_done(self, model: str, gpu: Gpu | None = None) -> None: ...


@dataclass(frozen=True)
class NodeFigures:
    """One node's share of a run."""
    name: str
    loads: int
    unloads: int
    oom_errors: int
    peak_bytes: int
    jobs_run: int
    bytes_loaded: int              # weights read by its loads
    unused_loads: int              # loads of a model that ran no job before it was unloaded (or the run ended)
    unused_load_bytes: int         # their weights
    log: tuple[tuple[float, str, str], ...] = ()    # (time, "load" / "loaded" / "unload", model)


@dataclass
class RunResult:
    policy: str
    jobs: list[Job]
    loads: int                     # over all nodes
    unloads: int
    oom_errors: int
    peak_bytes: int                # the most any one node held at once (one node: its peak)
    end_time: float
    nodes: tuple[NodeFigures, ...] = ()

    @property
    def makespan(self) -> float:
        return max(_ran(j.finished) for j in self.jobs) - min(j.arrival for j in self.jobs)

    @property
    def throughput(self) -> float:
        """Jobs per second over the makespan."""
        return len(self.jobs) / self.makespan

    @property
    def peak_bytes_summed(self) -> int:
        """The nodes' peaks added up (each at its own moment): an upper bound of the cluster's."""
        return sum(n.peak_bytes for n in self.nodes)

    @property
    def bytes_loaded(self) -> int:
        return sum(n.bytes_loaded for n in self.nodes)

    @property
    def unused_loads(self) -> int:
        return sum(n.unused_loads for n in self.nodes)

    @property
    def unused_load_bytes(self) -> int:
        return sum(n.unused_load_bytes for n in self.nodes)

    def waits(self, priority: str | None = None) -> list[float]:
        return [_ran(j.started) - j.arrival for j in self.jobs if priority is None or j.priority == priority]


def _ran(at: float | None) -> float:
    """When a job of a finished run started or finished (every one did both)."""
    assert at is not None
    return at


class Gpu:
    """What a policy may do, and the simulated clock."""

    def __init__(self, models: dict[str, SimModel], total_bytes: int, load_bytes_per_s: float,
                 tokens_per_s: float, batch_gain: float, num_ctx: int = DEFAULT_NUM_CTX,
                 name: str = "node-0", index: int = 0, clock: Clock | None = None):
        self.models = models
        self.num_ctx = num_ctx
        self.name = name
        self.index = index
        self.clock = clock or Clock()
        self.memory = VirtualGpu(total_bytes, load_bytes_per_s)
        self.generation: SharedThroughput[int] = SharedThroughput(tokens_per_s, batch_gain)     # by job id
        self.bandwidth: SharedThroughput[tuple[str, str]] = SharedThroughput(load_bytes_per_s, 0.0)  # loads in flight share it
        self.loaded: set[str] = set()
        self.loading: set[str] = set()
        self.slots: dict[str, int] = {}
        self.running: dict[int, Job] = {}
        self._running_on: dict[str, int] = {}
        self.jobs_run = 0
        self.bytes_loaded = 0
        self.unused_loads = 0
        self.unused_load_bytes = 0
        self._unused: set[str] = set()          # loaded (or loading) and no job started on it yet
        self.log: list[tuple[float, str, str]] = []

    @property
    def now(self) -> float:
        return self.clock.now

    @now.setter
    def now(self, value: float) -> None:
        self.clock.now = value

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
        self.bytes_loaded += self.models[model].size_bytes
        self._unused.add(model)
        self.log.append((self.now, "load", model))
        return True

    def unload(self, model: str) -> None:
        assert model in self.loaded and not self._running_on.get(model), model
        self.loaded.discard(model)
        self.slots.pop(model, None)
        self.memory.unload(model)
        self._count_if_unused(model)
        self.log.append((self.now, "unload", model))

    def _count_if_unused(self, model: str) -> None:
        if model in self._unused:
            self._unused.discard(model)
            self.unused_loads += 1
            self.unused_load_bytes += self.models[model].size_bytes

    def start(self, job: Job) -> None:
        assert job.model in self.loaded, job.model
        running = self._running_on.get(job.model, 0)
        assert running < self.slots[job.model], f"{job.model}: more jobs than its {self.slots[job.model]} slots"
        self._running_on[job.model] = running + 1
        self._unused.discard(job.model)
        self.jobs_run += 1
        if job.started is None:                  # a preempted job keeps its first start
            job.started = self.now
        job.node = self.index
        self.running[job.id] = job
        self.generation.add(job.id, job.tokens if job.remaining is None else job.remaining, self.now)

    def stop(self, job_id: int) -> Job:
        """Preempt a running job: it gives its slot back; what it produced is kept if it resumes
        (its `remaining` tokens), thrown away if it starts over (`wasted`)."""
        job = self.running.pop(job_id)
        self._running_on[job.model] -= 1
        produced = int(self.generation.produced(job_id))     # the run loop advanced it to now
        self.generation.remove(job_id, self.now)
        left = job.tokens if job.remaining is None else job.remaining
        job.preempted += 1
        if job.resumable:
            job.remaining = max(left - produced, 1)
        else:
            job.wasted += (job.tokens - left) + produced
            job.remaining = None
        self.log.append((self.now, "preempt", job.model))
        return job

    def job_done(self, job_id: int) -> Job:
        job = self.running.pop(job_id)
        self._running_on[job.model] -= 1
        job.finished = self.now
        return job

    def after(self, delay: float, fn: Callable[[], None]) -> None:
        self.clock.after(delay, fn)

    def figures(self) -> NodeFigures:
        """This node's share of the run; loads still unused at the end count as unused."""
        for model in sorted(self._unused):
            self._count_if_unused(model)
        m = self.memory
        return NodeFigures(self.name, m.loads, m.unloads, m.oom_errors, m.peak_bytes, self.jobs_run,
                           self.bytes_loaded, self.unused_loads, self.unused_load_bytes, tuple(self.log))


def node_specs(nodes: int | Sequence[NodeSpec], total_bytes: int, load_bytes_per_s: float, tokens_per_s: float,
               batch_gain: float) -> list[NodeSpec]:
    """`nodes` identical nodes named node-0, node-1, ..., or the nodes given."""
    if isinstance(nodes, int):
        return [NodeSpec(f"node-{i}", total_bytes, load_bytes_per_s, tokens_per_s, batch_gain) for i in range(nodes)]
    return list(nodes)


def run(policy: Policy, trace: list[Job], models: list[SimModel], total_bytes: int, load_bytes_per_s: float,
        tokens_per_s: float, batch_gain: float, num_ctx: int = DEFAULT_NUM_CTX, time_limit: float = 1e7,
        nodes: int | Sequence[NodeSpec] = 1) -> RunResult:
    """Run `trace` under `policy` on `nodes` nodes (a count of nodes like the one described by
    `total_bytes` ... `batch_gain`, or each node's own `NodeSpec`)."""
    jobs = [Job(j.id, j.model, j.priority, j.arrival, j.tokens, tenant=j.tenant, resumable=j.resumable) for j in trace]
    clock = Clock()
    catalog = {m.name: m for m in models}
    gpus = [Gpu(catalog, s.total_bytes, s.load_bytes_per_s, s.tokens_per_s, s.batch_gain, num_ctx, s.name, i, clock)
            for i, s in enumerate(node_specs(nodes, total_bytes, load_bytes_per_s, tokens_per_s, batch_gain))]
    if not gpus:
        raise ValueError("a run needs at least one node")
    load_done: Callable[[str, Gpu], None]
    if hasattr(policy, "attach_nodes"):
        cluster = cast(ClusterPolicy, policy)      # what a policy with attach_nodes is
        cluster.attach_nodes(gpus)
        load_done = cluster.on_load_done
    elif len(gpus) == 1:
        policy.attach(gpus[0])

        def load_one(model: str, gpu: Gpu) -> None:
            policy.on_load_done(model)
        load_done = load_one
    else:
        raise ValueError(f"{policy.name} runs on one node, not {len(gpus)}")
    for job in jobs:
        clock.after(job.arrival, functools.partial(policy.on_arrival, job))
    done = 0
    while done < len(jobs):
        candidates = [t for g in gpus for t in (g.generation.next_finish(), g.bandwidth.next_finish()) if t is not None]
        if clock.timers:
            candidates.append(clock.timers[0][0])
        if not candidates:
            raise RuntimeError(f"{policy.name}: stuck with {len(jobs) - done} jobs unfinished at t={clock.now:.1f}")
        clock.now = max(clock.now, min(candidates))
        if clock.now > time_limit:
            raise RuntimeError(f"{policy.name}: ran past the time limit")
        for gpu in gpus:
            for key in gpu.bandwidth.advance(clock.now):
                model = key[1]
                gpu.loading.discard(model)
                gpu.loaded.add(model)
                gpu.log.append((clock.now, "loaded", model))
                load_done(model, gpu)
        for gpu in gpus:
            for job_id in gpu.generation.advance(clock.now):
                job = gpu.job_done(job_id)
                done += 1
                policy.on_job_done(job)
        while clock.timers and clock.timers[0][0] <= clock.now:
            _, _, fn = heapq.heappop(clock.timers)
            fn()
        policy.step()
    figures = tuple(g.figures() for g in gpus)
    return RunResult(policy.name, jobs, sum(f.loads for f in figures), sum(f.unloads for f in figures),
                     sum(f.oom_errors for f in figures), max(f.peak_bytes for f in figures), clock.now, figures)
