"""Carrying out the scheduler's plans against a runtime, and collecting what each job used.

The engine owns the model table (what is loading, loaded, unloading, and how many jobs run on
each), runs loads and unloads on a few threads and jobs on a pool of MAX_RUNNING_JOBS threads,
and records every outcome in the store. It decides nothing: what to load, unload and run comes
from `vram_scheduler.plan`.

Failure handling, per job: a connection that cannot be made is retried once (in the client); a
timeout, a dropped connection or an error answer fails the job with the reason; an out-of-memory
answer is counted, teaches the registry a larger footprint, and puts the job back in the queue
(up to OOM_MAX_RETRIES times). Every path ends the job's `running` state.
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from config import Config
from jobs import ErrorKind, JobDoc, JobKind, JobStatus
from job_metrics import JobMeter, ledger_entry, run_metrics
from log_setup import get_logger
from model_registry import ModelRegistry
from queue_manager import QueueManager
from resource_monitor import LoadedModelInfo
from runtime_client import (ModelNotFound, OllamaClient, RequestCancelled, RuntimeFailure,
                            RuntimeOutOfMemory, RuntimeUnavailable)
from store.base import JobStore
from vram_scheduler import Phase, Plan, ResidentModel

log = get_logger("ENGINE")
LOAD_FAILURES_BEFORE_GIVING_UP = 3
LOAD_RETRY_DELAY_S = 2.0


@dataclass
class ModelSlot:
    name: str
    phase: Phase
    bytes: int
    running: int = 0
    last_used: float = 0.0
    changed_at: float = 0.0              # when `phase` last changed: ps older than this is stale
    load_started: float = 0.0
    load_finished: float = 0.0


@dataclass
class RunningJob:
    job_id: str
    model: str
    run_id: str
    cancel: threading.Event = field(default_factory=threading.Event)


class Counters:
    """Thread-safe event counts for /api/stats."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class ExecutionEngine:
    def __init__(self, client: OllamaClient, store: JobStore, registry: ModelRegistry,
                 queue: QueueManager, config: Config, counters: Counters, node: str,
                 meter: JobMeter | None = None,
                 on_change: Callable[[bool], None] = lambda models_changed: None,
                 on_job_done: Callable[[str], None] = lambda job_id: None,
                 clock: Callable[[], float] = time.time):
        self.client = client
        self.store = store
        self.registry = registry
        self.queue = queue
        self.config = config
        self.counters = counters
        self.node = node
        self.meter = meter
        self.on_change = on_change
        self.on_job_done = on_job_done
        self.clock = clock
        self._lock = threading.Lock()
        self._slots: dict[str, ModelSlot] = {}
        self._running: dict[str, RunningJob] = {}
        self._load_failures: Counter[str] = Counter()
        self._retry_after: dict[str, float] = {}
        self.surprised_at = 0.0    # when the runtime last contradicted the model table
        self._jobs = ThreadPoolExecutor(config.MAX_RUNNING_JOBS, thread_name_prefix="job")
        self._ops = ThreadPoolExecutor(4, thread_name_prefix="model-op")

    # --- the model table ------------------------------------------------------------------------
    def resident(self) -> tuple[ResidentModel, ...]:
        with self._lock:
            return tuple(ResidentModel(s.name, s.phase, s.bytes, s.running, s.last_used)
                         for s in self._slots.values())

    def slots(self) -> list[ModelSlot]:
        with self._lock:
            return [ModelSlot(**vars(s)) for s in self._slots.values()]

    def backing_off(self, now: float) -> set[str]:
        """Models whose last load failed a moment ago: not to be planned again just yet."""
        with self._lock:
            return {m for m, t in self._retry_after.items() if t > now}

    def surprised(self) -> None:
        """The runtime answered out of memory or dropped a request: the table may be wrong, so
        plan nothing until a reading taken after this moment has been reconciled."""
        with self._lock:
            self.surprised_at = self.clock()

    def reconcile(self, loaded: tuple[LoadedModelInfo, ...], sampled_at: float) -> None:
        """Bring the table in line with what the runtime says it has loaded."""
        seen = {m.name: m for m in loaded}
        with self._lock:
            for name, info in seen.items():
                slot = self._slots.get(name)
                if slot is None:     # loaded by someone else, or before a restart: it takes memory
                    self._slots[name] = ModelSlot(name, Phase.LOADED, info.footprint, changed_at=sampled_at)
                elif slot.phase is Phase.LOADED and slot.changed_at <= sampled_at:
                    slot.bytes = info.footprint or slot.bytes
            for name, slot in list(self._slots.items()):
                if name in seen or slot.changed_at > sampled_at or slot.phase is Phase.LOADING:
                    continue
                if slot.running == 0:    # unloaded (by us, keep_alive, or a crash)
                    del self._slots[name]
        for info in loaded:
            if info.size:
                self.registry.learn(info.name, info.size_vram if info.size_vram else info.size)

    # --- carrying out a plan --------------------------------------------------------------------
    def apply(self, plan: Plan, now: float) -> None:
        for name in plan.unloads:
            self._begin_unload(name, now)
        for name in plan.loads:
            self._begin_load(name, now)
        for name, n in plan.dispatch:
            self._dispatch(name, n, now)

    def _set_phase(self, slot: ModelSlot, phase: Phase) -> None:
        slot.phase = phase
        slot.changed_at = self.clock()

    def _begin_unload(self, name: str, now: float) -> None:
        with self._lock:
            slot = self._slots.get(name)
            if slot is None or slot.phase is not Phase.LOADED or slot.running:
                return
            self._set_phase(slot, Phase.UNLOADING)
        log.info("unloading %s (%.0f MB)", name, slot.bytes / 1e6)
        self._ops.submit(self._unload, name)

    def _unload(self, name: str) -> None:
        try:
            self.client.unload(name, timeout=self.config.LOAD_TIMEOUT_S)
            self.counters.add("unloads")
        except Exception as exc:   # whatever happened, the model must not stay "unloading" forever
            if not isinstance(exc, RuntimeFailure):
                log.exception("unload of %s crashed", name)
            log.warning("unload of %s failed: %s", name, exc)
            with self._lock:
                slot = self._slots.get(name)
                if slot is not None:
                    self._set_phase(slot, Phase.LOADED)
        else:
            with self._lock:    # stays UNLOADING until /api/ps no longer lists it
                slot = self._slots.get(name)
                if slot is not None:
                    slot.changed_at = self.clock()
        self.on_change(True)

    def _begin_load(self, name: str, now: float) -> None:
        with self._lock:
            if name in self._slots:
                return
            need = self.registry.need_bytes(name)
            self._slots[name] = ModelSlot(name, Phase.LOADING, need, changed_at=self.clock(),
                                          load_started=now)
        log.info("loading %s (planned %.0f MB)", name, need / 1e6)
        self._ops.submit(self._load, name)

    def _load(self, name: str) -> None:
        entry = self.registry.get(name)
        embedding_only = entry is not None and "completion" not in entry.spec.capabilities
        started = self.clock()
        try:
            self.client.load(name, self.config.MODEL_KEEP_ALIVE, timeout=self.config.LOAD_TIMEOUT_S,
                             embedding=embedding_only)
        except RuntimeFailure as exc:
            self._load_failed(name, exc)
        except Exception as exc:   # whatever happened, the model must not stay "loading" forever
            log.exception("load of %s crashed", name)
            self._load_failed(name, RuntimeFailure(f"internal error while loading: {exc}"))
        else:
            with self._lock:
                slot = self._slots.get(name)
                if slot is not None:
                    self._set_phase(slot, Phase.LOADED)
                    slot.load_finished = self.clock()
                    slot.last_used = slot.load_finished
                self._load_failures.pop(name, None)
            self.counters.add("loads")
            log.info("loaded %s in %.2fs", name, self.clock() - started)
        self.on_change(True)

    def _load_failed(self, name: str, exc: RuntimeFailure) -> None:
        with self._lock:
            self._slots.pop(name, None)
            self._load_failures[name] += 1
            failures = self._load_failures[name]
            self._retry_after[name] = self.clock() + LOAD_RETRY_DELAY_S
        if isinstance(exc, RuntimeOutOfMemory):
            self.counters.add("errors.oom")
            self.registry.learn_oom(name)
            self.surprised()
            log.warning("loading %s ran out of memory: %s", name, exc)
            return
        self.counters.add("errors.runtime")
        log.warning("loading %s failed (%d in a row): %s", name, failures, exc)
        if isinstance(exc, RuntimeUnavailable):
            # The runtime is down, not the model: its jobs wait for the runtime to come back.
            with self._lock:
                self._load_failures.pop(name, None)
            return
        if isinstance(exc, ModelNotFound) or failures >= LOAD_FAILURES_BEFORE_GIVING_UP:
            reason = (f"model {name} is not available on the runtime: {exc}" if isinstance(exc, ModelNotFound)
                      else f"model {name} failed to load {failures} times: {exc}")
            failed = self.queue.fail_model(name, self._failure_fields(reason, ErrorKind.RUNTIME))
            self._load_failures.pop(name, None)
            if failed:
                log.warning("failed %d waiting jobs of %s", failed, name)

    def _failure_fields(self, reason: str, kind: ErrorKind) -> dict[str, Any]:
        return {"error": reason, "error_kind": kind.value, "completed_at": self.clock()}

    def _dispatch(self, name: str, n: int, now: float) -> None:
        def run_fields(job_id: str) -> tuple[str, dict[str, Any]]:
            return uuid.uuid4().hex, {"started_at": self.clock(), "node": self.node}

        with self._lock:
            slot = self._slots.get(name)
            if slot is None or slot.phase is not Phase.LOADED:
                return
        jobs = self.queue.take(name, n, now, run_fields)
        if not jobs:
            return
        with self._lock:
            slot.running += len(jobs)
            slot.last_used = now
            for job in jobs:
                self._running[job["job_id"]] = RunningJob(job["job_id"], name, job["run_id"])
        for job in jobs:
            self._jobs.submit(self._run_job, job, slot)

    # --- running one job ------------------------------------------------------------------------
    def _request_body(self, job: JobDoc) -> dict[str, Any]:
        body: dict[str, Any] = {"model": job["model"], "keep_alive": self.config.MODEL_KEEP_ALIVE}
        if job.get("options"):
            body["options"] = job["options"]
        kind = JobKind(job["kind"])
        if kind is JobKind.EMBED:
            body["input"] = job.get("input") if job.get("input") is not None else job.get("prompt")
        elif kind is JobKind.CHAT:
            body["messages"] = job["messages"]
        else:
            body["prompt"] = job.get("prompt") or ""
            if job.get("system"):
                body["system"] = job["system"]
            if job.get("images"):
                body["images"] = job["images"]
        for key in ("format", "think", "tools"):
            if job.get(key) is not None:
                body[key] = job[key]
        return body

    def _run_job(self, job: JobDoc, slot: ModelSlot) -> None:
        job_id = job["job_id"]
        running = self._running[job_id]
        kind = JobKind(job["kind"])
        started = job.get("started_at") or self.clock()
        deadline = started + float(job.get("timeout_s") or self.config.JOB_TIMEOUT_S)
        first_token: list[float] = []
        sample = self.meter.start(job["model"]) if self.meter else None
        status, final, failure = JobStatus.COMPLETE, None, None
        try:
            body = self._request_body(job)
            if kind is JobKind.EMBED:
                final = self.client.embed(body, deadline)
            else:
                path = "/api/chat" if kind is JobKind.CHAT else "/api/generate"
                final = self.client.stream(path, body, deadline, should_stop=running.cancel.is_set,
                                           on_first_token=lambda: first_token.append(self.clock()))
        except RequestCancelled:
            status = JobStatus.CANCELLED
        except RuntimeFailure as exc:
            failure = exc
        except Exception as exc:  # a bug must still end the job, with the reason
            log.exception("job %s crashed", job_id)
            failure = RuntimeFailure(f"internal error: {exc}")
        finished = self.clock()
        usage = sample.stop() if sample else {}
        with self._lock:
            slot.running -= 1
            slot.last_used = finished
            self._running.pop(job_id, None)
        try:
            self._record(job, slot, status, final, failure, started, finished, first_token, usage)
        finally:
            self.on_job_done(job_id)
            # A failed request may mean the runtime dropped the model (crash, OOM): look again.
            self.on_change(failure is not None)

    def _record(self, job: JobDoc, slot: ModelSlot, status: JobStatus, final: dict | None,
                failure: RuntimeFailure | None, started: float, finished: float,
                first_token: list[float], usage: dict[str, Any]) -> None:
        job_id, run_id = job["job_id"], job["run_id"]
        metrics = run_metrics(job, final, started, finished, first_token[0] if first_token else None,
                              slot.load_started, slot.load_finished)
        metrics.update(usage)
        if isinstance(failure, (RuntimeOutOfMemory, RuntimeUnavailable)):
            self.surprised()
            with self._lock:   # the runtime may have dropped the model: let /api/ps say
                slot.changed_at = 0.0
        if failure is not None and isinstance(failure, RuntimeOutOfMemory):
            self.counters.add("errors.oom")
            self.registry.learn_oom(job["model"])
            retries = int(job.get("oom_retries") or 0)
            if retries < self.config.OOM_MAX_RETRIES:
                if self.store.requeue(job_id, run_id, {"oom_retries": retries + 1,
                                                       "attempts": int(job.get("attempts") or 0) + 1,
                                                       "last_error": str(failure)}):
                    log.warning("job %s ran out of memory on %s; re-queued (%d)", job_id, job["model"],
                                retries + 1)
                return
        fields: dict[str, Any] = {"completed_at": finished, "metrics": metrics,
                                  "attempts": int(job.get("attempts") or 0) + 1}
        if failure is not None:
            status = JobStatus.FAILED
            kind = failure.kind
            if kind is not ErrorKind.OOM:
                self.counters.add(f"errors.{kind.value}")
            fields.update(error=str(failure), error_kind=kind.value)
        elif status is JobStatus.COMPLETE:
            fields["result"] = _result(JobKind(job["kind"]), final or {})
        ledger = ledger_entry(job, status, fields, self.node, slot.bytes)
        if status is JobStatus.CANCELLED:
            log.info("job %s cancelled while running", job_id)
            self.counters.add("cancelled_running")
            self.store.record_metrics(ledger)
        elif self.store.finish(job_id, run_id, status.value, fields, ledger):
            self.counters.add(status.value)
            log.debug("job %s %s in %.3fs", job_id, status.value, finished - started)

    # --- cancellation ---------------------------------------------------------------------------
    def running_ids(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def check_cancellations(self) -> int:
        """Stop the requests of running jobs that were cancelled through the API."""
        ids = self.running_ids()
        if not ids:
            return 0
        cancelled = [i for i, s in self.store.statuses(ids).items() if s == JobStatus.CANCELLED.value]
        with self._lock:
            for job_id in cancelled:
                running = self._running.get(job_id)
                if running is not None:
                    running.cancel.set()
        return len(cancelled)

    def shutdown(self, wait: bool = True) -> None:
        with self._lock:
            for running in self._running.values():
                running.cancel.set()
        self._ops.shutdown(wait=wait, cancel_futures=True)
        self._jobs.shutdown(wait=wait, cancel_futures=True)


def _result(kind: JobKind, final: dict[str, Any]) -> dict[str, Any]:
    if kind is JobKind.EMBED:
        return {"embeddings": final.get("embeddings") or []}
    result: dict[str, Any] = {"done_reason": final.get("done_reason")}
    if kind is JobKind.CHAT:
        result["message"] = final.get("message") or {"role": "assistant", "content": ""}
    else:
        result["response"] = final.get("response", "")
        if final.get("thinking"):
            result["thinking"] = final["thinking"]
    return result
