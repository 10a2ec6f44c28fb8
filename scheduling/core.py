"""One scheduler pass at a time: events in, decisions out through `Effects`.

`SchedulerCore` owns the scheduler's state: the table of resident models (`model_table`), each
model's record of failed loads, and the jobs it has started. A pass (`run_pass`) takes in the
events that effects reported since the last pass (a load finished, a job finished, ...), brings
the table in line with the runtime's latest reading, asks `vram_scheduler.plan` what to do, and
does it through `Effects`: unload, load, start jobs (each claimed from the queue first), cancel.
What to do when something goes wrong is `scheduling_policy`'s to say.

It never sleeps and starts no thread: the service calls `run_pass` from its loop, and tests call
it with a fake runtime behind `Effects` and a fake clock.
"""
from __future__ import annotations

import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from jobs.model import ErrorKind
from runtime.readings import ResourceState
from scheduling.cluster_plan import NodeState, plan_cluster
from scheduling.events import Effects, Event, JobFinished, LoadFinished, RunContext, UnloadFinished
from scheduling.gpu_placement import GpuSplit, place
from scheduling.model_memory import effective_ctx
from scheduling.model_table import ModelState, ModelTable
from scheduling.outlook import ModelOutlook, mean_job_s
from scheduling.policy import (
    FailureKind,
    LoadHealth,
    PolicyLimits,
    after_load_failure,
    after_load_success,
    backing_off,
    reading_is_stale,
)
from scheduling.preemption import PreemptLimits, Running, preemptions
from scheduling.snapshot import build_snapshot
from telemetry.counters import Counters
from telemetry.logs import get_logger
from vram_scheduler import Limits, Phase, Plan, Snapshot, plan

if TYPE_CHECKING:        # types only: the core does no I/O of its own (the queue and registry come in)
    from config import Config
    from model_registry import ModelRegistry
    from queue_manager import QueueManager

log = get_logger("SCHEDULER")


@dataclass(frozen=True)
class RunningJob:
    model: str
    incarnation: int
    granted: float = 0.0               # when it got its slot
    rank: int = 1                      # its priority (preemption)
    preempted: int = 0                 # times it was stopped before


class SchedulerCore:
    def __init__(self, queue: QueueManager, registry: ModelRegistry, effects: Effects, config: Config,
                 counters: Counters, node: str, want_reading: Callable[[], None] = lambda: None,
                 owner: str = "", epoch: int | None = None):
        self.queue = queue
        self.owner = owner
        self.epoch = epoch                       # claims are fenced with it (None: not fenced)
        self.registry = registry
        self.effects = effects
        self.config = config
        self.counters = counters
        self.node = node
        self.want_reading = want_reading
        self.limits = Limits(config.MAX_RUNNING_JOBS, config.MAX_LOADED_MODELS, config.SWAP_MARGIN,
                             config.MIN_RESIDENCY_LOADS, config.QUEUE_AGING_S)
        self.policy = PolicyLimits(config.MAX_LOAD_FAILURES, config.LOAD_RETRY_DELAY_S, config.OOM_MAX_RETRIES)
        self.table = ModelTable()
        self.health: dict[str, LoadHealth] = {}
        self.running: dict[str, RunningJob] = {}
        self.distrusted_at = 0.0                 # when the runtime last contradicted the table
        self.budget_bytes = 0                    # what managed models may take now (0 while unknown)
        self.last_plan = Plan()
        self.passes = 0
        self._events: deque[Event] = deque()
        self._lock = threading.Lock()            # the table, for readers on other threads
        self._reconciled: ResourceState | None = None
        self.installed: frozenset[str] | None = None   # the models this node's runtime lists (None: not known)
        self.cluster = ClusterMemory({})         # the first core of a cluster carries it for all
        self.preempt_limits = PreemptLimits(config.PREEMPT_AFTER_S, config.PREEMPT_MAX, config.PREEMPTION)
        self.job_s: dict[str, float] = {}        # per model: mean seconds per completed job (outlook)
        self.load_s: dict[str, float] = {}       # per model: its last load's seconds (outlook)

    # --- what effects report (any thread) ---------------------------------------------------------
    def post(self, event: Event) -> None:
        self._events.append(event)

    def states(self) -> list[ModelState]:
        with self._lock:
            return self.table.states()

    def running_ids(self) -> list[str]:
        return list(self.running)

    def outlook(self, model: str, now: float) -> ModelOutlook | None:
        """What this node says of when `model` can start its waiting jobs (None: not here)."""
        with self._lock:
            state = self.table.get(model)
            if state is None:
                return None
            job_s = self.job_s.get(model)
            running = tuple(self.running.values())      # the pass's thread changes it: one copy
            ends = tuple(ran.granted + (job_s or 0.0) for ran in running if ran.model == model)
            load_s = self.load_s.get(model, 0.0)
            ready = now if state.phase is Phase.LOADED else max(state.load_started + load_s, now)
            return ModelOutlook(state.slots, ends, job_s, ready)

    # --- one pass ---------------------------------------------------------------------------------
    def run_pass(self, reading: ResourceState | None, now: float) -> Plan:
        """One pass with this node alone: take in events and the latest reading, plan, act."""
        return cluster_pass([self], {self.node: reading}, now).get(self.node, Plan())

    def prepare(self, reading: ResourceState | None, now: float) -> tuple[Snapshot, bool] | None:
        """Take in events and the latest reading: this node's snapshot without demand, and
        whether it may be acted on (a reading taken after the last surprise); None if not read yet."""
        with self._lock:
            self._take_events(now)
            if reading is not None and reading is not self._reconciled:
                self._reconcile(reading)
        self._check_cancellations()
        if reading is None:
            self.want_reading()
            return None
        fresh = not reading_is_stale(self.distrusted_at, reading.taken_at)
        if not fresh:
            self.want_reading()             # act again once the runtime has been read afresh
        with self._lock:
            resident = self.table.resident()
        return build_snapshot(reading, resident, [], self.registry.need_bytes, self.limits,
                              self.config.safety_margin_bytes, frozenset(self.last_plan.draining), now,
                              GpuSplit(self.config.gpu_split)), fresh

    def act(self, snapshot: Snapshot, now: float) -> Plan:
        """Plan this node's share of the work and carry the plan out."""
        held_back = backing_off(self.health, now)
        if held_back:
            snapshot = replace(snapshot, demand=tuple(d for d in snapshot.demand if d.model not in held_back),
                               wanted=tuple(m for m in snapshot.wanted if m not in held_back))
        decided = plan(snapshot)
        evicted = [m for m in (*decided.unloads, *decided.draining) if m not in self.last_plan.draining]
        self.last_plan = decided             # before acting: a drain chosen here holds even if acting fails
        for model in evicted:                # pushed out to make room (unloaded now, or once drained)
            self.counters.record("evict", model, self.node, now)
        for model in decided.never_fits:
            self._fail_never_fits(model, snapshot, now)
        for model in decided.unloads:
            self._unload(model, now)
        for model in decided.loads:
            self._load(model, now, decided.placements.get(model, ()))
        for model, n in decided.dispatch:
            self._dispatch(model, n, now)
        self._preempt(snapshot, decided, now)
        self.passes += 1
        if decided.loads or decided.unloads:
            log.info("plan on %s: load %s, unload %s, waiting for memory %s", self.node, decided.loads or "-",
                     decided.unloads or "-", decided.waiting_for_memory or "-")
        return decided

    # --- acting -----------------------------------------------------------------------------------
    def _unload(self, model: str, now: float) -> None:
        with self._lock:
            state = self.table.get(model)
            if state is None or not self.table.begin_unload(model, now):
                return
        log.info("unloading %s (%.0f MB)", model, state.bytes / 1e6)
        self.effects.unload(model)

    def _load(self, model: str, now: float, gpu_bytes: tuple[int, ...] = ()) -> None:
        need, slots = self.registry.need_bytes(model), self.registry.slots(model)
        with self._lock:
            if self.table.begin_load(model, need, slots, now, gpu_bytes if len(gpu_bytes) > 1 else ()) is None:
                return
        entry = self.registry.get(model)
        embedding_only = entry is not None and entry.spec.embedding_only
        log.info("loading %s (planned %.0f MB, %d slot%s)", model, need / 1e6, slots, "s" if slots > 1 else "")
        self.effects.load(model, self.registry.settings.load_options(model), embedding_only)

    def _dispatch(self, model: str, n: int, now: float) -> None:
        with self._lock:
            state = self.table.get(model)
            if state is None or state.running + n > state.slots:
                return
        jobs = self.queue.take(model, n, now, lambda job_id: (
            uuid.uuid4().hex, {"started_at": now, "node": self.node, "owner": self.owner}), self.epoch)
        for job in jobs:
            granted = max(now, float(job["submitted_at"]))      # submitted during this pass: not before
            with self._lock:
                self.table.job_started(model, granted)
            self.running[job["job_id"]] = RunningJob(model, state.incarnation, granted, int(job["rank"]),
                                                     int(job.get("preempted") or 0))
            try:
                self.effects.start(job, RunContext(state.bytes, state.slots, state.incarnation, granted,
                                                   state.load_started, state.load_finished))
            except Exception:
                log.exception("starting job %s failed; re-queued", job["job_id"])
                self.running.pop(job["job_id"], None)
                with self._lock:
                    self.table.job_finished(model, granted)
                run_id = job["run_id"]
                assert run_id is not None       # claimed under the run `take` gave it
                self.effects.requeue(job["job_id"], run_id)

    def _preempt(self, snapshot: Snapshot, decided: Plan, now: float) -> None:
        """Stop lower-priority running work that urgent waiting work has waited too long for."""
        if not self.preempt_limits.enabled:
            return
        slots = {m.name: m.slots for m in snapshot.resident if m.phase is Phase.LOADED}
        held = {m.name: m.bytes for m in snapshot.resident}
        free = snapshot.budget_bytes - sum(held.values())
        short_by = {m: snapshot.need_bytes.get(m, 0) - free for m in decided.waiting_for_memory}
        # jobs already being stopped (on any node: the queue is shared) count for the need they were stopped for
        stopping = self.queue.preempting
        needs = [replace(n, count=n.count - sum(1 for m in stopping.values() if m == n.model))
                 for n in self.queue.needs(now)]
        running = [Running(job_id, r.model, r.rank, r.granted, r.preempted) for job_id, r in self.running.items()
                   if job_id not in stopping]
        for job_id, needed_by in preemptions([n for n in needs if n.count > 0], running, slots, decided.draining,
                                             short_by, held, self.preempt_limits):
            stopping[job_id] = needed_by
            log.info("preempting job %s on %s for more urgent work", job_id, self.running[job_id].model)
            self.effects.preempt(job_id)

    def _check_cancellations(self) -> None:
        """Stop the requests of running jobs that were cancelled through the API."""
        if not self.running:
            return
        for job_id in self.effects.cancelled_among(list(self.running)):
            self.effects.cancel(job_id)

    def _fail_never_fits(self, model: str, snapshot: Snapshot, now: float) -> None:
        need = snapshot.need_bytes.get(model, 0)
        beside = sum(snapshot.capacities) - sum(snapshot.room_beside(snapshot.pinned))
        if beside and place(need, snapshot.capacities, snapshot.split) is not None:
            reason = (f"model {model} needs {need / 1e9:.2f} GB, which cannot fit beside the pinned models "
                      f"(PINNED_MODELS, {beside / 1e9:.2f} GB) on any node")
        else:
            reason = (f"model {model} needs {need / 1e9:.2f} GB but at most {snapshot.capacity_bytes / 1e9:.2f} GB "
                      f"can ever be used (memory minus VRAM_SAFETY_MARGIN_MB)")
        self._fail_model(model, reason, now)

    def _fail_model(self, model: str, reason: str, now: float) -> None:
        failed = self.queue.fail_model(model, {"error": reason, "error_kind": ErrorKind.RUNTIME.value,
                                               "completed_at": now})
        if failed:
            self.counters.job_finished("failed", n=failed)
            log.warning("failed %d waiting jobs: %s", failed, reason)

    # --- taking in what happened ------------------------------------------------------------------
    def _take_events(self, now: float) -> None:
        while self._events:
            event = self._events.popleft()
            if isinstance(event, JobFinished):
                self._job_finished(event)
            elif isinstance(event, LoadFinished):
                self._load_finished(event)
            else:
                self._unload_finished(event)

    def _job_finished(self, event: JobFinished) -> None:
        ran = self.running.pop(event.job_id, None)
        self.queue.preempting.pop(event.job_id, None)
        self.table.job_finished(event.model, event.at)
        if event.tokens is not None:
            self.queue.settle(event.job_id, *event.tokens)
            if ran is not None:
                self.job_s[event.model] = mean_job_s(self.job_s.get(event.model), max(event.at - ran.granted, 0.0))
        else:                                # failed, cancelled or put back: not charged
            self.queue.settle_unused(event.job_id)
        verdict = event.verdict
        if verdict is None:
            return
        if verdict.grow_need:
            self.counters.error(ErrorKind.OOM)
            self.registry.learn_oom(event.model, event.incarnation, self.budget_bytes, self.config.OOM_GROWTH)
        if verdict.distrust_table:
            self._distrust(event.model, event.at)

    def _load_finished(self, event: LoadFinished) -> None:
        model = event.model
        state = self.table.get(model)
        incarnation = state.incarnation if state is not None else 0
        if event.failure is None:
            self.table.load_succeeded(model, event.at)
            self.health[model] = after_load_success(self.health.get(model, LoadHealth()))
            self.counters.record("load", model, self.node, event.at)
            self.load_s[model] = event.at - (state.load_started if state else event.at)
            log.info("loaded %s in %.2fs", model, self.load_s[model])
            if self._reconciled is not None and len(self._reconciled.gpus) > 1:
                # where the runtime put it among the GPUs shows in the next reading: no more
                # loads (or anything else) on this node until then
                self.distrusted_at = max(self.distrusted_at, event.at)
            self.want_reading()
            return
        self.table.load_failed(model)
        verdict = after_load_failure(self.health.get(model, LoadHealth()), event.failure, event.message, model,
                                     event.at, self.policy)
        self.health[model] = verdict.health
        self.counters.error(ErrorKind.OOM if event.failure is FailureKind.OUT_OF_MEMORY else ErrorKind.RUNTIME)
        log.warning("loading %s failed (%s): %s", model, event.failure.value, event.message)
        if verdict.grow_need:
            self.registry.learn_oom(model, incarnation, self.budget_bytes, self.config.OOM_GROWTH)
        if verdict.distrust_table:
            self._distrust(model, event.at)
        if verdict.give_up:
            self._fail_model(model, verdict.give_up, event.at)
        self.want_reading()

    def _unload_finished(self, event: UnloadFinished) -> None:
        self.table.unload_finished(event.model, event.ok, event.at)
        if event.ok:
            self.counters.record("unload", event.model, self.node, event.at)
        else:
            log.warning("unload of %s failed: %s", event.model, event.message)
        self.want_reading()

    def _distrust(self, model: str, at: float) -> None:
        self.distrusted_at = max(self.distrusted_at, at)
        self.table.distrust(model)
        self.want_reading()

    def _reconcile(self, reading: ResourceState) -> None:
        self._reconciled = reading
        if reading.memory_total > 0:
            self.budget_bytes = reading.memory_total - self.config.safety_margin_bytes - reading.used_by_others
        self.table.reconcile(reading.loaded, reading.taken_at, self.registry.slots)
        settings = self.registry.settings
        for info in reading.loaded:
            entry = self.registry.get(info.name)
            arch = entry.spec.arch if entry is not None else None
            expected_ctx = effective_ctx(settings.ctx_for(info.name), arch)
            state = self.table.get(info.name)
            # Ollama reports the runner's whole context (per slot x slots); our runtimes, per slot.
            if info.footprint and (not info.context_length or info.context_length in (
                    expected_ctx, expected_ctx * self.registry.slots(info.name))):
                self.registry.learn(info.name, info.footprint,     # measured under our settings only
                                    state.incarnation if state is not None else None)


@dataclass
class ClusterMemory:
    """What a cluster pass carries from one pass to the next: where each model not yet loaded
    was sent (so that two nodes do not both make room for it)."""
    placed: dict[str, str]


def cluster_pass(cores: list[SchedulerCore], readings: dict[str, ResourceState | None], now: float,
                 down: frozenset[str] = frozenset(), predicted: list[str] | None = None) -> dict[str, Plan]:
    """One scheduler pass over every node: which node serves what (cluster_plan), then each
    node's plan, carried out by its core. The cores share the queue and the registry."""
    first = cores[0]
    queue, registry, config = first.queue, first.registry, first.config
    queue.sync()
    nodes, acting = [], []
    for core in cores:
        prepared = core.prepare(readings.get(core.node), now)
        reading = readings.get(core.node)
        ok = prepared is not None and reading is not None and reading.runtime_ok and core.node not in down
        if prepared is not None:
            nodes.append(NodeState(core.node, ok, prepared[0], core.installed))
            if prepared[1]:
                acting.append(core)
    if not any(n.ok for n in nodes):
        return {}
    demand = queue.demand(now)
    known = registry.get                # a pinned or predicted model the registry does not know is not loaded
    pinned = frozenset(m for m in registry.settings.pinned if known(m) is not None)
    if predicted is None:
        resident = {m.name for n in nodes for m in n.snapshot.resident}
        predicted = [m for m in queue.arrivals.predicted(now, config.PRELOAD_LIMIT, resident | {d.model for d in demand})
                     if known(m) is not None]
    wanted = {d.model for d in demand} | set(pinned) | set(predicted)
    needs = {name: registry.need_bytes(name) for name in wanted}
    decided = plan_cluster(nodes, demand, needs, first.cluster.placed, config.REPLICA_AFTER, pinned, predicted,
                           config.REPLICA_WAIT_S)
    first.cluster.placed = decided.placed
    return {core.node: core.act(decided.snapshots[core.node], now) for core in acting if core.node in decided.snapshots}
