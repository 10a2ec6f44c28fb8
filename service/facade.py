"""The service behind the API, in every process: the store and the queue, the competition for
the scheduler lease (scheduling/leadership.py), the scheduler term while this process leads
(scheduling/term.py), and the facade the API calls, which is all the API sees of it.

Every API worker runs a `Service`; each competes for the lease, one wins and schedules, the
others take over if it dies. The leader publishes its view (runtime, memory, loaded models,
counters, and the model registry) into the store twice a second, which is how /api/stats,
/api/health and /api/models answer the same from every worker.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from config import Config
from execution_engine import ExecutionEngine
from jobs.model import FINISHED, JobDoc, JobStatus
from metering.sampler import ResourceSampler
from model_registry import ModelRegistry
from queue_manager import QueueManager
from resource_monitor import ResourceMonitor, ResourceState
from runtime.backends import Runtime
from scheduling.core import SchedulerCore
from scheduling.leadership import Leadership, new_owner
from scheduling.term import SchedulerTerm, TermContext
from scheduling.view import capacity_bytes
from service.answers import StreamHub, follow
from store import CancelOutcome, Idempotency, JobStore, QueueCounts, open_store
from store.retrying import RetryingStore
from telemetry.counters import Counters
from telemetry.logs import get_logger
from telemetry.process_metrics import ProcessMetrics

syslog = get_logger("SYSTEM")


class CompletionEvents:
    """Lets API requests in this process wait for a job to finish without polling the store
    much, at most `limit` at a time (each holds a request thread), and at most `per_tenant` of
    them for one tenant (a key's; callers without a key are one tenant, held only by `limit`)."""

    def __init__(self, limit: int, per_tenant: int | None = None):
        self.limit = limit
        self.per_tenant = per_tenant
        self._lock = threading.Lock()
        self._events: dict[str, list[threading.Event]] = {}
        self._owners: dict[threading.Event, str] = {}
        self._by_tenant: dict[str, int] = {}
        self._count = 0

    def register(self, job_id: str, tenant: str = "") -> threading.Event | None:
        """An event set when `job_id` finishes here; None when `limit` waiters already wait, or
        `per_tenant` of `tenant`'s."""
        event = threading.Event()
        with self._lock:
            if self._count >= self.limit or self._tenant_full(tenant):
                return None
            self._count += 1
            self._by_tenant[tenant] = self._by_tenant.get(tenant, 0) + 1
            self._owners[event] = tenant
            self._events.setdefault(job_id, []).append(event)
        return event

    def _tenant_full(self, tenant: str) -> bool:
        return bool(tenant) and self.per_tenant is not None and self._by_tenant.get(tenant, 0) >= self.per_tenant

    def tenant_full(self, tenant: str) -> bool:
        with self._lock:
            return self._tenant_full(tenant)

    def unregister(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            waiting = self._events.get(job_id, [])
            if event in waiting:
                waiting.remove(event)
                self._count -= 1
                tenant = self._owners.pop(event, "")
                left = self._by_tenant.get(tenant, 1) - 1
                if left > 0:
                    self._by_tenant[tenant] = left
                else:
                    self._by_tenant.pop(tenant, None)
            if not waiting:
                self._events.pop(job_id, None)

    def notify(self, job_id: str) -> None:
        with self._lock:
            for event in self._events.get(job_id, ()):
                event.set()

    @property
    def waiting(self) -> int:
        return self._count

    def waiting_for(self, tenant: str) -> int:
        with self._lock:
            return self._by_tenant.get(tenant, 0)


class Service:
    def __init__(self, config: Config, store: JobStore | None = None, clock: Callable[[], float] = time.time):
        self.config = config
        self.clock = clock
        self.raw_store = store if store is not None else open_store(config)
        self.store = RetryingStore(self.raw_store, config.STORE_RETRY_S)          # the scheduler's patience
        self.api_store = self.store.with_patience(config.API_STORE_WAIT_S)        # a client's
        self.queue = QueueManager(self.store, config.QUEUE_MAX_SIZE, config.QUEUE_AGING_S, on_submit=self.wake,
                                  submit_store=self.api_store, preload_window_s=config.PRELOAD_WINDOW_S,
                                  output_weight=config.FAIR_OUTPUT_WEIGHT, fair=config.FAIR_SHARE)
        self.owner = new_owner()
        self.metrics = ProcessMetrics()         # what /metrics counts of events in this process
        self.counters = Counters(observer=self.metrics)
        self.completions = CompletionEvents(config.MAX_WAITERS, config.MAX_WAITERS_PER_TENANT)
        self.answers = StreamHub()
        self.leadership = Leadership(self.raw_store, self.owner, self._elected, self._lost, clock=clock)
        self.term: SchedulerTerm | None = None
        self._term_lock = threading.Lock()
        self._stopping = False

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Begin competing for the scheduler lease (returns at once)."""
        self._stopping = False
        self.leadership.start()

    def stop(self) -> None:
        """Stop competing; a leading process ends its term: requests in flight are stopped and
        their jobs re-queued, for the next leader."""
        self._stopping = True
        self.leadership.stop()

    def wait_until_leading(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            term = self.term
            if term is not None and term.ready.wait(0.05):
                return True
            time.sleep(0.02)
        return False

    @property
    def leading(self) -> bool:
        term = self.term
        return term is not None and term.ready.is_set()

    def wake(self) -> None:
        term = self.term
        if term is not None:
            term.wake()

    def _elected(self, epoch: int) -> None:
        context = TermContext(self.config, self.store, self.queue, self.counters, self.owner,
                              on_job_done=self._job_done, on_fenced=self.leadership.lost, clock=self.clock,
                              answers=self.answers)
        with self._term_lock:
            self.term = SchedulerTerm(context, epoch)
            self.term.start()

    def _job_done(self, job_id: str) -> None:
        self.completions.notify(job_id)
        self.answers.finished(job_id)

    def _lost(self, reason: str) -> None:
        with self._term_lock:
            term, self.term = self.term, None
        if term is not None:
            term.stop(shutting_down=self._stopping)

    # --- the facade the API calls -----------------------------------------------------------------
    def submit(self, job: JobDoc, idempotency: Idempotency | None = None, tenant_max: int | None = None) -> int:
        return self.queue.submit(job, idempotency, tenant_max)

    def record_answered(self, job: JobDoc, idempotency: Idempotency | None = None) -> None:
        """Store a job that was answered without running (from the result cache), so that it
        can be polled and listed like any other (under `idempotency`'s key when given)."""
        self.api_store.enqueue(job, idempotency=idempotency)
        self.counters.job_finished(job["status"])

    def will_stream(self) -> str:
        """How a job submitted here will have its pieces streamed back: "local" when this
        process schedules (the hub has them at once), else "relay" (through the store)."""
        return "local" if self.leading else "relay"

    def listen(self, job_id: str, relay: bool):
        """Where the pieces of a job about to be queued will come from: the hub when the job
        runs here (subscribed before it is queued, so no piece is missed), else None (the store)."""
        return self.answers.subscribe(job_id) if self.leading and not relay else None

    def follow(self, job_id: str, inbox, relay: bool, gone: Callable[[], bool]):
        """The pieces of `job_id`'s answer as they come, then its end (answer_stream.follow):
        from `inbox` (see `listen`), or the store for a relayed stream, never both."""
        try:
            yield from follow(job_id, inbox, self.get, self.api_store.read_pieces if relay else None, gone)
        finally:
            if inbox is not None:
                self.answers.unsubscribe(job_id, inbox)

    def cached(self, key: str) -> dict[str, Any] | None:
        """The result cache's answer under `key`; counts the hit or miss."""
        answer = self.api_store.cache_get(key, self.clock())
        self._count("cache_hits" if answer is not None else "cache_misses")
        return answer

    def _count(self, name: str) -> None:
        try:
            self.api_store.with_patience(0.0).bump(name)
        except Exception as exc:        # a figure, not worth failing a request for
            syslog.debug("counter %s not counted (%s)", name, exc)

    def shared_counters(self) -> dict[str, int]:
        return self.api_store.read_counters()

    def key_record(self, key_hash: str) -> dict[str, Any] | None:
        return self.api_store.key_by_hash(key_hash)

    def take_rate(self, key_id: str, per_min: float) -> float:
        return self.api_store.take_rate(key_id, self.clock(), per_min)

    def get(self, job_id: str) -> JobDoc | None:
        return self.api_store.get(job_id)

    def wait_for(self, job_id: str, timeout: float, tenant: str = "",
                 gone: Callable[[], bool] | None = None) -> JobDoc | None:
        """The job, once finished, when `timeout` runs out or when `gone()` says the client that
        waits went away (its place is free at once); at once when MAX_WAITERS already wait, or
        MAX_WAITERS_PER_TENANT of `tenant`'s."""
        event = self.completions.register(job_id, tenant)
        if event is None:
            return self.get(job_id)
        deadline = time.monotonic() + timeout
        try:
            delay = 0.005
            while True:
                job = self.get(job_id)
                if job is None or job["status"] in FINISHED:
                    return job
                left = deadline - time.monotonic()
                if left <= 0 or (gone is not None and gone()):
                    return job
                if event.wait(min(delay, left)):   # set at once when a run of the job ends in this process
                    event.clear()       # a run that did not finish it (re-queued, preempted): wait for the next
                delay = min(delay * 2, 0.25)
        finally:
            self.completions.unregister(job_id, event)

    def cancel(self, job_id: str, reason: str = "cancelled by request") -> CancelOutcome:
        outcome = self.api_store.cancel(job_id, {"completed_at": self.clock(), "error": reason})
        if outcome.cancelled:
            self.counters.job_finished(JobStatus.CANCELLED.value)
            self.completions.notify(job_id)
            self.answers.finished(job_id)
            self.wake()
        return outcome

    def list_jobs(self, status: str | None, model: str | None, limit: int,
                  before: tuple[float, str] | None, tenant: str | None = None) -> list[JobDoc]:
        return self.api_store.list_jobs(status=status, model=model, limit=limit, before=before, tenant=tenant)

    def list_ledger(self, model: str | None, job_id: str | None, limit: int,
                    before: tuple[float, str] | None, tenant: str | None = None) -> list[dict[str, Any]]:
        return self.api_store.list_metrics(model=model, job_id=job_id, limit=limit, before=before, tenant=tenant)

    def usage_by_tenant(self, since: float) -> dict[str, dict[str, float]]:
        return self.api_store.usage_by_tenant(since)

    def counts(self) -> QueueCounts:
        return self.api_store.counts()

    # --- tasks and experiment results -----------------------------------------------------------
    def put_tasks(self, tasks: list[dict[str, Any]]) -> None:
        for task in tasks:
            self.api_store.put_task(task)

    def list_tasks(self, suite: str | None, limit: int) -> list[dict[str, Any]]:
        return self.api_store.list_tasks(suite, limit)

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        return self.api_store.get_task(task_id)

    def record_result(self, result: dict[str, Any]) -> None:
        self.api_store.record_result(result)

    def list_results(self, experiment: str | None, limit: int, tenant: str | None = None,
                     strategy: str | None = None) -> list[dict[str, Any]]:
        return self.api_store.list_results(experiment, limit, tenant, strategy)

    def published(self, key: str) -> tuple[dict[str, Any], float] | None:
        return self.api_store.get_state(key)

    def put_state(self, key: str, doc: dict[str, Any], now: float) -> None:
        self.api_store.put_state(key, doc, now)

    def live_view(self) -> dict[str, Any] | None:
        """The scheduler's view, when it runs in this process."""
        term = self.term
        if term is None or not term.ready.is_set() or term.state is None:
            return None
        return term.view()

    def live_registry(self) -> tuple[ModelRegistry, int] | None:
        """The registry and the capacity, when the scheduler runs in this process."""
        term = self.term
        if term is None or not term.ready.is_set() or term.state is None:
            return None
        registry = term.registry
        assert registry is not None         # a term is ready once set up, its registry made
        return registry, capacity_bytes(term)

    # --- the term's parts, for tools and tests ------------------------------------------------------
    # Each is None while this process does not lead (nor before __init__ has set `term`).
    def _term(self) -> SchedulerTerm | None:
        return self.__dict__.get("term")

    @property
    def runtime(self) -> Runtime | None:
        term = self._term()
        return term.runtime if term is not None else None

    @property
    def core(self) -> SchedulerCore | None:
        term = self._term()
        return term.core if term is not None else None

    @property
    def registry(self) -> ModelRegistry | None:
        term = self._term()
        return term.registry if term is not None else None

    @property
    def engine(self) -> ExecutionEngine | None:
        term = self._term()
        return term.engine if term is not None else None

    @property
    def state(self) -> ResourceState | None:
        term = self._term()
        return term.state if term is not None else None

    @property
    def sampler(self) -> ResourceSampler | None:
        term = self._term()
        return term.sampler if term is not None else None

    @property
    def monitor(self) -> ResourceMonitor | None:
        term = self._term()
        return term.monitor if term is not None else None

    def publish(self) -> None:
        term = self.term
        if term is not None:
            term.publish()
