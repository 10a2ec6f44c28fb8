"""The service behind the API: the store and queue in every process, and in exactly one process
(the holder of the store's `scheduler` lease) the runtime, monitor, engine and scheduler loop.

Every API worker runs a `Service`; each tries for the lease, one wins and schedules, the others
take over if it dies. The leader publishes its view (runtime, memory, loaded models, counters,
and the model registry) into the store twice a second, which is how /api/stats, /api/health and
/api/models answer the same from every worker.
"""
from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from config import Config
from counters import Counters
from execution_engine import ExecutionEngine
from jobs import ErrorKind
from log_setup import get_logger
from model_registry import DESIGN_CATALOG, ModelRegistry
from model_settings import ModelSettings
from queue_manager import QueueManager
from resource_monitor import ResourceMonitor, ResourceState
from resource_sampler import ResourceSampler, RunnerPids
from runtime_backends import Runtime, open_runtime
from runtime_client import RuntimeFailure
from scheduler_core import SchedulerCore
from store import JobStore, open_store
from vram_scheduler import Plan

log = get_logger("SCHEDULER")
syslog = get_logger("SYSTEM")

LEASE = "scheduler"
LEASE_TTL_S = 5.0
LEASE_RENEW_S = 1.0
PUBLISH_EVERY_S = 0.5
TAGS_EVERY_S = 30.0
PURGE_EVERY_S = 60.0
STATE_KEY = "scheduler"
REGISTRY_KEY = "registry"


class CompletionEvents:
    """Lets an API request in this process wait for a job to finish without polling."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: dict[str, list[threading.Event]] = {}

    def register(self, job_id: str) -> threading.Event:
        event = threading.Event()
        with self._lock:
            self._events.setdefault(job_id, []).append(event)
        return event

    def unregister(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            waiting = self._events.get(job_id, [])
            if event in waiting:
                waiting.remove(event)
            if not waiting:
                self._events.pop(job_id, None)

    def notify(self, job_id: str) -> None:
        with self._lock:
            for event in self._events.get(job_id, ()):
                event.set()


@dataclass
class LoopStats:
    last_pass_ms: float = 0.0


class Service:
    def __init__(self, config: Config, store: JobStore | None = None,
                 clock: Callable[[], float] = time.time):
        self.config = config
        self.store = store if store is not None else open_store(config)
        self.clock = clock
        self.queue = QueueManager(self.store, config.QUEUE_MAX_SIZE, config.QUEUE_AGING_S)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._leading = threading.Event()
        self._thread: threading.Thread | None = None
        self.queue.set_submit_listener(self.wake)
        self.completions = CompletionEvents()
        # Set while leading:
        self.runtime: Runtime | None = None
        self.registry: ModelRegistry | None = None
        self.engine: ExecutionEngine | None = None
        self.core: SchedulerCore | None = None
        self.monitor: ResourceMonitor | None = None
        self.sampler: ResourceSampler | None = None
        self.counters = Counters()
        self.loop = LoopStats()
        self.state: ResourceState | None = None
        self._sample_now = threading.Event()
        self._lease_lost = threading.Event()
        self._housekeeping_stop = threading.Event()

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Begin competing for the scheduler lease (returns at once)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._candidate, name="scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 15.0) -> None:
        self._stop.set()
        self.wake()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_until_leading(self, timeout: float) -> bool:
        return self._leading.wait(timeout)

    @property
    def leading(self) -> bool:
        return self._leading.is_set()

    def wake(self) -> None:
        self._wake.set()

    def _want_reading(self) -> None:
        self._sample_now.set()          # look at the runtime again: a model came or went

    # --- leadership -----------------------------------------------------------------------------
    def _candidate(self) -> None:
        while not self._stop.is_set():
            if self.store.acquire_lease(LEASE, self.owner, LEASE_TTL_S, self.clock()):
                try:
                    self._lead()
                except Exception:
                    syslog.exception("scheduler stopped by an error; trying again")
                    self._stop.wait(1.0)
                finally:
                    self._leading.clear()
                    self.store.release_lease(LEASE, self.owner)
            else:
                self._stop.wait(LEASE_RENEW_S)

    def _lead(self) -> None:
        config = self.config
        syslog.info("scheduler %s taking over", self.owner)
        self.runtime = open_runtime(config)
        try:
            settings = ModelSettings.from_config(config, self.runtime.num_parallel)
            self.registry = ModelRegistry(config.VRAM_ESTIMATION_MULTIPLIER, self.store,
                                          DESIGN_CATALOG + self.runtime.catalog, settings)
            self.monitor = ResourceMonitor(self.runtime.client, self.runtime.memory, self.clock)
            self.sampler = ResourceSampler(RunnerPids(self.runtime.client, lambda: self.state),
                                           self.runtime.memory.energy_source)
            node = f"{socket.gethostname()}/{self.runtime.kind}@{self.runtime.url}"
            self.engine = ExecutionEngine(
                self.runtime.client, self.store, config, settings, self.counters, node, post=self._post,
                meter=self.sampler, on_job_done=self.completions.notify, clock=self.clock)
            self.core = SchedulerCore(self.queue, self.registry, self.engine, config, self.counters, node,
                                      want_reading=self._want_reading)
            self._recover()
            self._refresh_tags()
            self._lease_lost.clear()
            self._housekeeping_stop.clear()
            self._leading.set()
            self._run_loop()
        finally:
            self.queue.stop()
            if self.engine is not None:
                self.engine.shutdown(wait=True)
            if self.sampler is not None:
                self.sampler.close()
            self.runtime.stop()
            syslog.info("scheduler %s stopped", self.owner)

    def _recover(self) -> None:
        requeue = self.config.RECOVER_RUNNING == "requeue"
        fields: dict[str, Any] = {"recovered": True}
        if not requeue:
            fields.update(error="the scheduler running this job stopped (service restarted)",
                          error_kind=ErrorKind.RUNTIME.value, completed_at=self.clock())
        ids = self.store.recover_running(requeue, fields)
        if ids:
            syslog.warning("%d jobs were running when the last scheduler stopped: %s", len(ids),
                           "re-queued" if requeue else "failed")
        self.queue.start()

    def _post(self, event) -> None:
        self.core.post(event)
        self._wake.set()

    def _refresh_tags(self) -> None:
        """The runtime's models, and the architecture of any whose KV cache cannot be sized yet."""
        client = self.runtime.client
        try:
            self.registry.update_from_runtime(client.tags())
        except Exception as exc:   # a runtime that is down must not stop the scheduler
            log.warning("cannot list the runtime's models: %s", exc)
            return
        for name in self.registry.names():
            entry = self.registry.get(name)
            if entry is None or entry.on_runtime is not True or entry.spec.arch is not None:
                continue
            try:
                self.registry.learn_architecture(name, client.show(name).get("model_info") or {})
            except RuntimeFailure as exc:
                log.debug("cannot describe %s: %s", name, exc)

    def _run_loop(self) -> None:
        """Scheduler passes, on every wake-up and every SCHEDULER_LOOP_INTERVAL; everything slower
        (reading the runtime and GPU, the lease, publishing, clean-up) runs beside it in
        `_housekeeping`, so that a pass never waits for I/O it does not need."""
        self._sample()
        self.publish()                  # other workers see the new scheduler at once
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
        try:
            while not self._stop.is_set() and not self._lease_lost.is_set():
                try:
                    self.run_pass()
                except Exception:   # one bad pass (a store hiccup, say) must not stop scheduling
                    log.exception("scheduler pass failed; trying again")
                    self._stop.wait(0.5)
                self._wake.wait(self.config.SCHEDULER_LOOP_INTERVAL)
                self._wake.clear()
        finally:
            self._housekeeping_stop.set()
            self._sample_now.set()
            housekeeping.join(30)

    def _sample(self) -> None:
        """Read the runtime's loaded models, memory and the host; the next pass reconciles."""
        state = self.monitor.sample()
        self.state = state
        self.sampler.observe(state)
        self._wake.set()

    def _housekeeping(self) -> None:
        last_renew = last_publish = last_tags = last_purge = self.clock()
        published_registry = -1
        while not self._housekeeping_stop.is_set():
            self._sample_now.wait(min(self.config.RUNTIME_POLL_INTERVAL, PUBLISH_EVERY_S))
            sample_now = self._sample_now.is_set()
            self._sample_now.clear()
            now = self.clock()
            try:
                if now - last_renew >= LEASE_RENEW_S:
                    if not self.store.acquire_lease(LEASE, self.owner, LEASE_TTL_S, now):
                        syslog.warning("lost the scheduler lease; stepping down")
                        self._lease_lost.set()
                        self._wake.set()
                        return
                    last_renew = now
                if not self._stop.is_set() and self.runtime.restart_if_dead():
                    sample_now, last_tags = True, 0.0
                if sample_now or now - self.state.taken_at >= self.config.RUNTIME_POLL_INTERVAL:
                    self._sample()
                if now - last_tags >= TAGS_EVERY_S:
                    self._refresh_tags()
                    last_tags = now
                if now - last_purge >= PURGE_EVERY_S:
                    purged = self.store.purge_finished(now - self.config.JOB_RETENTION_S)
                    if purged:
                        log.info("deleted %d finished jobs past retention", purged)
                    last_purge = now
                if now - last_publish >= PUBLISH_EVERY_S or self.registry.version != published_registry:
                    published_registry = self.publish()
                    last_publish = now
            except Exception:
                log.exception("housekeeping failed; trying again")
                self._housekeeping_stop.wait(0.5)

    # --- one pass -------------------------------------------------------------------------------
    def run_pass(self) -> Plan:
        started = time.perf_counter()
        decided = self.core.run_pass(self.state, self.clock())
        self.loop.last_pass_ms = (time.perf_counter() - started) * 1000
        return decided

    # --- what the API workers read --------------------------------------------------------------
    def capacity_bytes(self) -> int:
        """The most memory any one model could ever have here (0 while unknown)."""
        state = self.state
        if state is None or state.memory_total <= 0:
            return 0
        return state.memory_total - self.config.safety_margin_bytes

    def scheduler_view(self) -> dict[str, Any]:
        state, core, runtime = self.state, self.core, self.runtime
        models = core.states()
        capacity = self.capacity_bytes()
        loaded_info = {m.name: m for m in state.loaded} if state else {}
        counters = self.counters.snapshot()
        return {
            "owner": self.owner,
            "runtime": {"kind": runtime.kind, "url": runtime.url, "ok": bool(state and state.runtime_ok),
                        "error": state.runtime_error if state else "not read yet"},
            "resources": {
                "vram": {"total": state.memory_total if state else 0,
                         "used": state.memory_used if state else 0,
                         "free": state.memory_free if state else 0,
                         "budget": capacity - state.used_by_others if capacity else 0,
                         "capacity": capacity,
                         "used_by_others": state.used_by_others if state else 0,
                         "source": state.memory_source if state else runtime.memory.name},
                "gpus": [vars(g) for g in state.gpus] if state else [],
                "loaded_models": [{
                    "name": m.name, "phase": m.phase.value, "running": m.running, "slots": m.slots,
                    "size": loaded_info[m.name].size if m.name in loaded_info else m.bytes,
                    "size_vram": loaded_info[m.name].size_vram if m.name in loaded_info else 0,
                    "planned_bytes": m.bytes,
                    "context_length": loaded_info[m.name].context_length if m.name in loaded_info else None,
                    "idle_since": m.last_used if m.running == 0 else None,
                    "expires_at": loaded_info[m.name].expires_at if m.name in loaded_info else None,
                } for m in sorted(models, key=lambda m: m.name)],
                "host": vars(state.host) if state and state.host else {},
            },
            "scheduler": {
                "passes": core.passes, "last_pass_ms": round(self.loop.last_pass_ms, 3),
                "loads": counters.get("loads", 0), "unloads": counters.get("unloads", 0),
                "waiting_for_memory": core.last_plan.waiting_for_memory,
                "draining": core.last_plan.draining,
                "slots_in_use": sum(m.running for m in models),
                "slots_total": sum(m.slots for m in models),
                "requeued": counters.get("requeued", 0),
                "queued_in_scheduler": self.queue.waiting(),
                "sampler": self.sampler.cost() if self.sampler else {},
            },
            "errors": {k.value: counters.get(f"errors.{k.value}", 0) for k in ErrorKind},
            "jobs": {k: counters.get(k, 0) for k in ("complete", "failed", "cancelled_running", "requeued")},
        }

    def publish(self) -> int:
        """Put the scheduler's view and the registry where every API worker can read them."""
        now = self.clock()
        view = self.scheduler_view()
        self.store.put_state(STATE_KEY, view, now)
        version = self.registry.version
        self.store.put_state(REGISTRY_KEY, {"version": version, "models": self.registry.describe(),
                                            "capacity_bytes": self.capacity_bytes(),
                                            "multiplier": self.registry.multiplier}, now)
        return version

