"""Scheduling policies for the discrete-event simulator (`des.py`): Ollama's own policy, as a
baseline in two configurations, and Model Manager's scheduler (`scheduling.cluster_plan.plan_cluster`, and
so `vram_scheduler.plan` on each node, with the queue manager's ordering), driven exactly as the
service drives it, on one node or several."""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

from jobs.model import Priority
from queue_manager import WaitingIndex
from scheduling.cluster_plan import NodeState, plan_cluster
from scheduling.fair_share import Who
from scheduling.model_memory import estimated_need
from scheduling.preemption import PreemptLimits, Running, preemptions
from scheduling.warm_pool import RecentArrivals
from simulator.des import Gpu, Job
from vram_scheduler import Limits, Phase, Plan, ResidentModel, Snapshot


@dataclass
class _Runner:
    model: str
    estimate: int
    ready: bool = False
    active: int = 0                                   # requests holding the runner (refCount)
    waiting: list[Job] = field(default_factory=list)  # requests queued inside the runner
    expire_at: float | None = None
    expiring: bool = False


class OllamaPolicy:
    """Ollama's own scheduler (server/sched.go), as its source (github.com/ollama/ollama, server/sched.go) does it: one pending
    request worked on at a time in FIFO order; a request for a loaded model goes to its runner,
    which runs NUM_PARALLEL at once; a model is loaded when its estimate (size + KV cache for
    NUM_PARALLEL slots) is at most 80% of free memory (free = total - loaded models' estimates)
    and fewer than MAX_LOADED_MODELS are loaded; otherwise the idle runner with the shortest
    keep_alive is unloaded (or, none idle, the first busy one once it finishes) while every
    pending request waits; while another model loads, the request goes to the back of the queue
    for 250 ms; idle runners expire after keep_alive."""

    def __init__(self, name: str, max_loaded: int, num_parallel: int, keep_alive_s: float = 300.0,
                 fit_fraction: float = 0.8, requeue_delay_s: float = 0.25):
        self.name = name
        self.max_loaded = max_loaded            # 0 = no cap
        self.num_parallel = num_parallel
        self.slots_per_model = num_parallel
        self.keep_alive_s = keep_alive_s
        self.fit_fraction = fit_fraction
        self.requeue_delay_s = requeue_delay_s
        self.pending: list[Job] = []
        self.runners: dict[str, _Runner] = {}
        self.waiting_for_unload: str | None = None

    def attach(self, gpu: Gpu) -> None:
        self.gpu = gpu

    def estimate(self, model: str) -> int:
        return self.gpu.footprint(model, self.num_parallel)

    def on_arrival(self, job: Job) -> None:
        self.pending.append(job)

    def on_load_done(self, model: str) -> None:
        self.runners[model].ready = True
        self._feed(self.runners[model])

    def on_job_done(self, job: Job) -> None:
        runner = self.runners[job.model]
        runner.active -= 1
        self._feed(runner)
        if runner.active == 0 and not runner.waiting:
            if runner.expiring:
                self._unload(runner)
            else:
                runner.expire_at = self.gpu.now + self.keep_alive_s
                self.gpu.after(self.keep_alive_s, functools.partial(self._maybe_expire, runner, runner.expire_at))

    def _maybe_expire(self, runner: _Runner, when: float) -> None:
        if self.runners.get(runner.model) is runner and runner.expire_at == when and runner.active == 0 \
                and not runner.waiting:
            self._unload(runner)

    def _unload(self, runner: _Runner) -> None:
        self.gpu.unload(runner.model)
        del self.runners[runner.model]
        if self.waiting_for_unload == runner.model:
            self.waiting_for_unload = None

    def _feed(self, runner: _Runner) -> None:
        """Start queued requests on a ready runner, NUM_PARALLEL at a time."""
        while runner.ready and runner.waiting and runner.active < self.num_parallel:
            runner.active += 1
            self.gpu.start(runner.waiting.pop(0))

    def _hand_to(self, runner: _Runner, job: Job) -> None:
        runner.expire_at = None
        runner.waiting.append(job)
        self._feed(runner)

    def _free(self) -> int:
        return self.gpu.memory.total_bytes - sum(r.estimate for r in self.runners.values())

    def step(self) -> None:
        while self.pending and self.waiting_for_unload is None:
            job = self.pending[0]
            runner = self.runners.get(job.model)
            if runner is not None:
                self.pending.pop(0)
                self._hand_to(runner, job)
                continue
            if self.max_loaded and len(self.runners) >= self.max_loaded:
                self._expire_one()
                continue
            estimate = self.estimate(job.model)
            if not self.runners or (not any(not r.ready for r in self.runners.values())
                                    and estimate <= self.fit_fraction * self._free()):
                self.pending.pop(0)
                runner = self.runners[job.model] = _Runner(job.model, estimate)
                if not self.gpu.load(job.model, self.num_parallel):
                    raise RuntimeError(f"{self.name}: out of memory loading {job.model}")
                self._hand_to(runner, job)
                continue
            if any(not r.ready for r in self.runners.values()):
                # another model is loading: back of the queue in 250 ms, go on with the next one
                self.pending.pop(0)
                self.gpu.after(self.requeue_delay_s, functools.partial(self.pending.append, job))
                continue
            self._expire_one()

    def _expire_one(self) -> None:
        """findRunnerToUnload: all share one keep_alive, so the first idle runner, else the first."""
        ordered = sorted(self.runners.values(), key=lambda r: r.model)
        victim = next((r for r in ordered if r.active == 0 and not r.waiting), ordered[0])
        self.waiting_for_unload = victim.model
        victim.expiring = True
        if victim.active == 0 and not victim.waiting:
            self._unload(victim)


@dataclass
class _Node:
    """What the manager keeps about one node (as the service keeps it about its runtime)."""
    gpu: Gpu
    running: dict[str, int] = field(default_factory=dict)
    last_used: dict[str, float] = field(default_factory=dict)
    loaded_at: dict[str, float] = field(default_factory=dict)
    draining: frozenset[str] = frozenset()


class ManagerPolicy:
    """Model Manager's scheduler: every event is followed by a pass of `scheduling.cluster_plan.plan_cluster`
    (one node: just `vram_scheduler.plan`) over the waiting index (priority with aging, grouping
    by model), and each node's plan is carried out on that node; each model has
    `slots_per_model` slots and is never given more jobs than that; a model's need is its size x
    the estimation multiplier plus the KV cache of its slots until it has been loaded once, then
    what the load really took (as `/api/ps` would report it). `pinned` models are kept loaded;
    with `preload_window_s` and `preload_limit`, up to that many models that had jobs arrive in
    the window and are neither loaded nor waiting are loaded into memory no waiting work needs
    (`scheduling.warm_pool.RecentArrivals`)."""

    def __init__(self, name: str = "model-manager", margin_bytes: int = 1024 ** 3, multiplier: float = 1.3,
                 aging_s: float = 60.0, limits: Limits = Limits(), slots_per_model: int = 4,
                 pinned: frozenset[str] = frozenset(), preload_window_s: float = 0.0, preload_limit: int = 0,
                 replica_after: int = 8, fair: bool = True, preempt: PreemptLimits | None = None):
        self.name = name
        self.margin_bytes = margin_bytes
        self.multiplier = multiplier
        self.limits = limits
        self.slots_per_model = slots_per_model
        self.pinned = frozenset(pinned)
        self.preload_window_s = preload_window_s
        self.preload_limit = preload_limit
        self.replica_after = replica_after
        self.index = WaitingIndex(aging_s, fair=fair)
        self.preempt = preempt or PreemptLimits(enabled=False)     # the service's default is on: see bench/sharing.py
        self.running_jobs: dict[int, Job] = {}
        self.recent = RecentArrivals(preload_window_s if preload_limit > 0 else 0.0)
        self.jobs: dict[int, Job] = {}
        self.learned: dict[str, int] = {}
        self.placed: dict[str, str] = {}        # plan_cluster's homes, passed back for stickiness
        self.nodes: list[_Node] = []
        self.replica_loads = 0                  # loads of a model already on another node
        self.max_copies = 0                     # most nodes holding one model at once
        self.warm_loads = 0                     # loads without waiting work: pinned or predicted models
        self.preemptions = 0
        self._stopped = False                   # a pass stopped jobs: plan again with their slots

    def attach(self, gpu: Gpu) -> None:
        self.attach_nodes([gpu])

    def attach_nodes(self, gpus: list[Gpu]) -> None:
        self.nodes = [_Node(g) for g in gpus]
        self.gpu = gpus[0]

    def on_arrival(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.index.add(str(job.id), job.model, Priority(job.priority).rank, job.arrival, Who(job.tenant))
        self.recent.add(job.arrival, job.model)

    def on_job_done(self, job: Job) -> None:
        self.running_jobs.pop(job.id, None)
        node = self.nodes[job.node or 0]
        node.running[job.model] -= 1
        node.last_used[job.model] = node.gpu.now
        self.index.settle(str(job.id), 0, job.tokens)

    def on_load_done(self, model: str, gpu: Gpu | None = None) -> None:
        node = self.nodes[gpu.index if gpu is not None else 0]
        self.learned[model] = node.gpu.memory.resident[model]          # what /api/ps reports
        node.last_used[model] = node.gpu.now
        node.loaded_at[model] = node.gpu.now

    def need(self, model: str) -> int:
        if model in self.learned:
            return self.learned[model]
        m = self.gpu.models[model]
        return estimated_need(m.size_bytes, self.multiplier, m.arch, self.gpu.num_ctx, self.slots_per_model)

    def _state(self, node: _Node) -> NodeState:
        """The node as its own scheduler would see it, without demand."""
        gpu = node.gpu
        resident = tuple(
            ResidentModel(m, Phase.LOADED if m in gpu.loaded else Phase.LOADING,
                          gpu.memory.resident[m] if m in gpu.loaded else self.need(m),
                          node.running.get(m, 0), node.last_used.get(m, 0.0), self.slots_per_model,
                          node.loaded_at.get(m, 0.0), gpu.models[m].size_bytes / gpu.memory.load_bytes_per_s)
            for m in gpu.loaded | gpu.loading)
        capacity = gpu.memory.total_bytes - self.margin_bytes
        return NodeState(gpu.name, True, Snapshot(capacity, capacity, resident, (), {}, self.limits,
                                                  node.draining & gpu.loaded, gpu.now))

    def _predicted(self, now: float, demand) -> tuple[str, ...]:
        if self.preload_limit <= 0 or self.preload_window_s <= 0:
            return ()
        present = {d.model for d in demand}
        for node in self.nodes:
            present |= node.gpu.loaded | node.gpu.loading
        return tuple(self.recent.predicted(now, self.preload_limit, present))

    def step(self) -> None:
        now = self.gpu.now
        demand = self.index.demand(now)
        need = {d.model: self.need(d.model) for d in demand}
        predicted = self._predicted(now, demand)
        for model in (*self.pinned, *predicted):
            need.setdefault(model, self.need(model))
        decided = plan_cluster([self._state(n) for n in self.nodes], demand, need, self.placed,
                               self.replica_after, self.pinned, predicted)
        self.placed = decided.placed
        unloaded = False
        for node in self.nodes:
            name = node.gpu.name
            self._carry_out(node, decided.plans[name], frozenset(decided.snapshots[name].wanted))
            unloaded = unloaded or bool(decided.plans[name].unloads)
        if unloaded or self._stopped:
            self._stopped = False
            self.step()                    # unloads and stops are instant here: plan again with the room freed

    def _carry_out(self, node: _Node, decided: Plan, wanted: frozenset[str]) -> None:
        gpu = node.gpu
        node.draining = frozenset(decided.draining)
        if decided.never_fits:
            raise RuntimeError(f"models that can never fit: {decided.never_fits}")
        for model in decided.unloads:
            if model in self.pinned and not any(model in n.gpu.loaded | n.gpu.loading for n in self.nodes if n is not node):
                raise RuntimeError(f"{self.name}: the plan unloads the last copy of pinned {model}")
            gpu.unload(model)
        for model in decided.loads:
            copies = sum(model in n.gpu.loaded or model in n.gpu.loading for n in self.nodes)
            if not gpu.load(model, self.slots_per_model):
                raise RuntimeError(f"{self.name}: out of memory loading {model} on {gpu.name}")
            self.replica_loads += copies > 0
            self.warm_loads += model in wanted
            self.max_copies = max(self.max_copies, copies + 1)
        for model, n in decided.dispatch:
            for _ in range(n):
                job_id = self.index.pop(model, gpu.now)
                if job_id is None:          # another node's plan took the last of them
                    break
                node.running[model] = node.running.get(model, 0) + 1
                node.last_used[model] = gpu.now
                gpu.start(self.jobs[int(job_id)])
                self.running_jobs[int(job_id)] = self.jobs[int(job_id)]
        self._preempt(node, decided)

    def _preempt(self, node: _Node, decided: Plan) -> None:
        """As the service's core does (scheduling/preemption.py): stop lower-priority work that
        urgent work has waited PREEMPT_AFTER_S for; the stopped jobs go back in line."""
        if not self.preempt.enabled:
            return
        gpu = node.gpu
        state = self._state(node).snapshot
        held = {m.name: m.bytes for m in state.resident}
        free = state.budget_bytes - sum(held.values())
        short_by = {m: self.need(m) - free for m in decided.waiting_for_memory}
        running = [Running(str(j.id), j.model, Priority(j.priority).rank, _first(j.started), j.preempted)
                   for j in self.running_jobs.values() if j.node == gpu.index]
        slots = {m: gpu.slots[m] for m in gpu.loaded}
        for job_id, _ in preemptions(self.index.needs(gpu.now), running, slots, decided.draining, short_by, held,
                                     self.preempt):        # stops are instant here: none is in flight
            job = gpu.stop(int(job_id))
            del self.running_jobs[job.id]
            node.running[job.model] -= 1
            self.index.add(job_id, job.model, Priority(job.priority).rank, job.arrival, Who(job.tenant))
            self.preemptions += 1
            self._stopped = True


def _first(started: float | None) -> float:
    assert started is not None          # a running job has started
    return started
