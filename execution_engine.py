"""Carrying out the scheduler's decisions against a runtime, and recording what each job did.

The engine is the real `Effects` (scheduling/events.py): loads and unloads run on a few threads, jobs
on a pool of MAX_RUNNING_JOBS threads, and each reports its outcome back to the scheduler as an
event. It decides nothing: what to load, unload and run comes from the scheduler, and what a
failure means from `scheduling_policy`.

Per job: its request carries the model's fixed runner options (num_ctx) and is registered with
a `RequestHandle`, so that a cancel stops it at once and the deadline watch stops it exactly at
its timeout, counted from when it got its slot. A connection that cannot be made is retried once
(in the client); a failure for a passing reason (out of memory, runtime busy) re-queues the job
up to OOM_MAX_RETRIES times; any other failure fails it with the reason. Every path ends the
job's `running` state and reports it.
"""
from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from config import Config
from jobs.model import JobDoc, JobKind, JobStatus
from jobs.resume import Partial, after_preemption, prefix_of, resumed_body, whole_answer
from metering.ledger import JobMeter, ledger_entry, run_metrics
from runtime.client import NODE_DOWN, PREEMPTED, NodeDown, OllamaClient, RequestCancelled, RequestHandle, RuntimeFailure
from scheduling.events import Event, JobFinished, LoadFinished, RunContext, UnloadFinished
from scheduling.model_settings import ModelSettings
from scheduling.policy import FailureKind, JobVerdict, PolicyLimits, after_job_failure
from service.answers import PieceWriter, StreamHub
from service.result_cache import cached_answer
from store.retrying import StoreLike
from telemetry.counters import Counters
from telemetry.logs import get_logger

log = get_logger("ENGINE")
RUNTIME_PROBE_S = 1.0        # after a dropped connection: does the runtime answer at all?


class DeadlineWatch:
    """One thread that stops each request when its deadline (wall-clock seconds) passes, stalled
    or not."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, RequestHandle]] = []
        self._live: set[int] = set()          # ids of handles whose request has not ended
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="deadline-watch", daemon=True)
        self._thread.start()

    def add(self, handle: RequestHandle) -> None:
        with self._cond:
            heapq.heappush(self._heap, (handle.deadline, next(self._seq), handle))
            self._live.add(id(handle))
            self._cond.notify()

    def discard(self, handle: RequestHandle) -> None:
        """The request ended: forget it (the heap is rebuilt when mostly ended ones are left)."""
        with self._cond:
            self._live.discard(id(handle))
            if len(self._heap) > 64 and len(self._heap) > 4 * len(self._live):
                self._heap = [e for e in self._heap if id(e[2]) in self._live]
                heapq.heapify(self._heap)

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.time()
                while self._heap and self._heap[0][0] <= now:
                    _, _, handle = heapq.heappop(self._heap)
                    if id(handle) in self._live:
                        handle.stop("timeout")
                        self._live.discard(id(handle))
                wait = self._heap[0][0] - now if self._heap else None
                self._cond.wait(wait)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()


class ExecutionEngine:
    def __init__(self, client: OllamaClient, store: StoreLike, config: Config, settings: ModelSettings,
                 counters: Counters, node: str, post: Callable[[Event], None],
                 meter: JobMeter | None = None,
                 on_job_done: Callable[[str], None] = lambda job_id: None,
                 clock: Callable[[], float] = time.time, answers: StreamHub | None = None):
        # Results are recorded with more patience than other writes: losing one would mean
        # running its job again, which may serve its prompt twice. Streamed pieces in relay are
        # not waited for at all (the result carries the whole answer anyway).
        self.result_store: StoreLike = store
        self.relay_store: StoreLike = store
        if hasattr(store, "with_patience"):
            self.result_store = store.with_patience(config.RESULT_RETRY_S)
            self.relay_store = store.with_patience(0.0)
        self.answers = answers
        self.client = client
        self.store = store
        self.config = config
        self.settings = settings
        self.counters = counters
        self.node = node
        self.post = post
        self.meter = meter
        self.on_job_done = on_job_done
        self.clock = clock
        self.policy = PolicyLimits(config.MAX_LOAD_FAILURES, config.LOAD_RETRY_DELAY_S, config.OOM_MAX_RETRIES)
        self._handles: dict[str, RequestHandle] = {}
        self._lock = threading.Condition()
        self._watch = DeadlineWatch()
        self._jobs = ThreadPoolExecutor(config.MAX_RUNNING_JOBS, thread_name_prefix="job")
        self._ops = ThreadPoolExecutor(4, thread_name_prefix="model-op")

    # --- Effects --------------------------------------------------------------------------------
    def load(self, model: str, options: dict[str, Any], embedding_only: bool) -> None:
        self._ops.submit(self._load, model, options, embedding_only)

    def unload(self, model: str) -> None:
        self._ops.submit(self._unload, model)

    def start(self, job: JobDoc, run: RunContext) -> None:
        timeout = float(job.get("timeout_s") or self.config.JOB_TIMEOUT_S)
        handle = RequestHandle(run.granted_at + timeout)
        with self._lock:
            self._handles[job["job_id"]] = handle
        self._watch.add(handle)
        self._jobs.submit(self._run_job, job, run, handle)

    def cancel(self, job_id: str, reason: str = "cancelled") -> None:
        with self._lock:
            handle = self._handles.get(job_id)
        if handle is not None:
            handle.stop(reason)

    def preempt(self, job_id: str) -> None:
        self.cancel(job_id, PREEMPTED)

    def requeue(self, job_id: str, run_id: str) -> None:
        self.store.requeue(job_id, run_id, {})

    def cancelled_among(self, job_ids: list[str]) -> list[str]:
        statuses = self.store.statuses(job_ids)
        return [job_id for job_id, status in statuses.items() if status == JobStatus.CANCELLED]

    def interrupt_all(self, reason: str = "shutdown") -> None:
        """Stop every request; their jobs go back to the queue. `shutdown`: the scheduler stops
        (not the job's fault, not counted); NODE_DOWN: the node stopped answering (counted, like
        a connection dropped by a runtime that is gone)."""
        with self._lock:
            handles = list(self._handles.values())
        for handle in handles:
            handle.stop(reason)

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no job runs here (each ended and was recorded); False if `timeout` ran out."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._handles, timeout)

    def shutdown(self, wait: bool = True) -> None:
        self.interrupt_all()
        self._ops.shutdown(wait=wait, cancel_futures=True)
        self._jobs.shutdown(wait=wait, cancel_futures=True)
        self._watch.close()

    # --- models ---------------------------------------------------------------------------------
    def _load(self, model: str, options: dict[str, Any], embedding_only: bool) -> None:
        failure, message = None, ""
        try:
            self.client.load(model, self.settings.keep_alive_for(model), timeout=self.config.LOAD_TIMEOUT_S,
                             embedding=embedding_only, options=options)
        except RuntimeFailure as exc:
            failure, message = exc.failure, str(exc)
        except Exception as exc:   # whatever happened, the model must not stay "loading" forever
            log.exception("load of %s crashed", model)
            failure, message = FailureKind.OTHER, f"internal error while loading: {exc}"
        self.post(LoadFinished(model, self.clock(), failure, message))

    def _unload(self, model: str) -> None:
        ok, message = True, ""
        try:
            self.client.unload(model, timeout=self.config.LOAD_TIMEOUT_S)
        except Exception as exc:   # whatever happened, the model must not stay "unloading" forever
            if not isinstance(exc, RuntimeFailure):
                log.exception("unload of %s crashed", model)
            ok, message = False, str(exc)
        self.post(UnloadFinished(model, self.clock(), ok, message))

    # --- running one job ------------------------------------------------------------------------
    def _runtime_answers(self) -> bool:
        """Whether the runtime answers at all (after a dropped connection: gone, or one request cut)."""
        try:
            self.client.version(timeout=RUNTIME_PROBE_S)
            return True
        except RuntimeFailure:
            return False

    def _request_body(self, job: JobDoc) -> dict[str, Any]:
        body: dict[str, Any] = {"model": job["model"], "keep_alive": self.settings.keep_alive_for(job["model"]),
                                "options": self.settings.request_options(job["model"], job.get("options"))}
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
        for key in _PASSED_THROUGH[kind]:
            value = job.get(key)
            if value is not None:
                body[key] = value
        return body

    def _run_job(self, job: JobDoc, run: RunContext, handle: RequestHandle) -> None:
        """Run one job and record it; whatever happens, the scheduler hears that it ended."""
        job_id = job["job_id"]
        verdict, failure_kind, tokens, put_back = None, None, None, None
        try:
            verdict, failure_kind, tokens, put_back = self._run_and_record(job, run, handle)
        except Exception:
            log.exception("job %s ended in an internal error", job_id)
        finally:
            self._watch.discard(handle)
            self.post(JobFinished(job_id, job["model"], self.clock(), run.incarnation, verdict, failure_kind, tokens))
            with self._lock:
                self._handles.pop(job_id, None)
                self._lock.notify_all()
            if put_back is not None:    # preempted: back in line only once this run is gone everywhere
                self._put_back(job, put_back)
            self.on_job_done(job_id)

    def _run_and_record(self, job: JobDoc, run: RunContext, handle: RequestHandle
                        ) -> tuple[JobVerdict | None, FailureKind | None, tuple[int, int] | None,
                                   dict[str, Any] | None]:
        kind = JobKind(job["kind"])
        first_token: list[float] = []
        sample = None
        failure: RuntimeFailure | None
        status, final, failure = JobStatus.COMPLETE, None, None
        writer = None
        if job.get("stream") and self.answers is not None:
            run_id = job["run_id"]
            assert run_id is not None           # a claimed job: its claim made its run
            writer = PieceWriter(self.answers, self.relay_store, job["job_id"], run_id,
                                 relay=job["stream"] == "relay", clock=self.clock)
        partial, prefix = Partial(), [prefix_of(job)]

        def on_piece(piece: dict[str, Any]) -> None:
            partial.add(piece)
            if writer is not None:
                if prefix[0] is not None:        # a resumed answer: its first piece says how it starts
                    piece, prefix[0] = {**piece, "prefix": prefix[0]}, None
                writer.add(piece)
        preempted = None
        began = self.clock()
        try:
            sample = self.meter.start(job["model"]) if self.meter else None
            body = resumed_body(job, self._request_body(job))
            if kind is JobKind.EMBED:
                final = self.client.embed(body, handle.deadline, handle)
            else:
                path = "/api/chat" if kind is JobKind.CHAT else "/api/generate"
                final = whole_answer(job, self.client.stream(path, body, handle.deadline, handle,
                                                             on_first_token=lambda: first_token.append(self.clock()),
                                                             on_piece=on_piece))
        except RequestCancelled as exc:
            if exc.reason == NODE_DOWN:
                failure = NodeDown(f"the node stopped answering (NODE_DOWN_AFTER_S = {self.config.NODE_DOWN_AFTER_S:g})")
            else:
                status = JobStatus.CANCELLED if exc.reason == "cancelled" else JobStatus.PENDING
                if exc.reason == PREEMPTED:
                    preempted = after_preemption(job, partial, self.clock() - began)
        except RuntimeFailure as exc:
            failure = exc
        except Exception as exc:  # a bug must still end the job, with the reason
            log.exception("job %s crashed", job["job_id"])
            failure = RuntimeFailure(f"internal error: {exc}")
        finished = self.clock()
        usage: dict[str, Any] = {}
        if sample is not None:
            try:
                usage = sample.stop()
            except Exception:
                log.exception("resource figures of job %s could not be read", job["job_id"])
        verdict = None
        if failure is not None:
            down = isinstance(failure, NodeDown) or (
                failure.failure is FailureKind.UNAVAILABLE and not self._runtime_answers())
            verdict = after_job_failure(failure.failure, int(job.get("oom_retries") or 0), self.policy, down)
        if preempted is not None:
            return None, None, None, preempted
        self._record(job, run, status, final, failure, verdict, finished, first_token, usage)
        tokens = None
        if status is JobStatus.COMPLETE and failure is None and final is not None:   # what its tenant is charged
            tokens = (_count(final.get("prompt_eval_count")), _count(final.get("eval_count")))
        return verdict, failure.failure if failure else None, tokens, None

    def _record(self, job: JobDoc, run: RunContext, status: JobStatus, final: dict | None,
                failure: RuntimeFailure | None, verdict: JobVerdict | None, finished: float,
                first_token: list[float], usage: dict[str, Any]) -> None:
        job_id, run_id = job["job_id"], job["run_id"]
        assert run_id is not None               # a claimed job: its claim made its run
        store = self.result_store
        if status is JobStatus.PENDING:           # interrupted by a shutdown: run again by whoever leads next
            if store.requeue(job_id, run_id, {"interrupted": True}):
                log.info("job %s interrupted by the shutdown; re-queued", job_id)
            return
        if failure is not None and verdict is not None and verdict.requeue:
            if store.requeue(job_id, run_id, {"oom_retries": verdict.retries, "last_error": str(failure)}):
                self.counters.add("requeued")
                log.warning("job %s on %s failed for a passing reason (%s); re-queued (%d)", job_id, job["model"],
                            failure.failure.value, verdict.retries)
            return
        metrics = run_metrics(job, final, run.granted_at, finished, first_token[0] if first_token else None,
                              run.load_started, run.load_finished)
        metrics.update(usage)
        if job.get("preempted"):                  # the ledger counts what preemption cost it
            metrics.update(preemptions=job["preempted"], wasted_tokens=int(job.get("wasted_tokens") or 0),
                           wasted_s=float(job.get("wasted_s") or 0.0))
            before = int((job.get("resume") or {}).get("tokens") or 0)
            out = metrics.get("output_tokens")
            if before and isinstance(out, int) and out > 0 and metrics.get("tokens_per_s"):
                # output_tokens is the whole answer's; the speed is this run's own
                metrics["tokens_per_s"] = round(metrics["tokens_per_s"] * max(out - before, 0) / out, 2)
        fields: dict[str, Any] = {"completed_at": finished, "metrics": metrics}
        if failure is not None:
            status = JobStatus.FAILED
            if failure.failure is not FailureKind.OUT_OF_MEMORY:   # the scheduler counts those
                self.counters.error(failure.kind)
            fields.update(error=str(failure), error_kind=failure.kind.value)
            if verdict is not None:
                fields["oom_retries"] = verdict.retries
        elif status is JobStatus.COMPLETE:
            fields["result"] = _result(JobKind(job["kind"]), final or {}, bool(job.get("keep_context")))
        ledger = ledger_entry(job, status, {**fields, "attempts": job.get("attempts")}, self.node, run.model_bytes,
                              run.slots)
        if status is JobStatus.CANCELLED:
            log.info("job %s cancelled while running", job_id)
            self.counters.add("cancelled_running")
            store.record_metrics(ledger)
        else:
            if status is JobStatus.COMPLETE and job.get("cache_key"):
                # cached before the job shows as complete, so that a client that saw it finish
                # and asks again is answered from the cache (a reproducible answer is good to
                # keep even if this run then turns out to have lost its lease)
                self._remember(job, fields, finished)
            if store.finish(job_id, run_id, status.value, fields, ledger):
                self.counters.add(status.value)
                self.counters.job_finished(status.value, job, metrics)
                log.debug("job %s %s in %.3fs", job_id, status.value, finished - run.granted_at)
        if job.get("stream") == "relay":
            self._forget_pieces(job_id)

    def _put_back(self, job: JobDoc, fields: dict[str, Any]) -> None:
        """A preempted job goes back to its place in line, to resume (jobs/resume.py)."""
        run_id = job["run_id"]
        assert run_id is not None               # a claimed job: its claim made its run
        try:
            if self.result_store.requeue(job["job_id"], run_id, fields):
                self.counters.add("preempted")
                log.info("job %s preempted (%d); it %s", job["job_id"], fields["preempted"],
                         "resumes from its partial answer" if fields["resume"] else "starts over")
        except Exception:                       # left running in the store: recovered like a run whose leader left
            log.exception("preempted job %s could not be put back in line", job["job_id"])

    def _remember(self, job: JobDoc, fields: dict[str, Any], finished: float) -> None:
        """Put a finished answer in the result cache (a cache that fails costs only a miss)."""
        cache_key = job["cache_key"]
        assert cache_key is not None            # only jobs with a cache key are remembered
        try:
            self.relay_store.cache_put(cache_key, cached_answer(job, fields), finished + self.config.RESULT_CACHE_TTL_S)
        except Exception as exc:
            log.warning("job %s: its answer could not be cached (%s)", job["job_id"], exc)

    def _forget_pieces(self, job_id: str) -> None:
        try:
            self.relay_store.drop_pieces(job_id)
        except Exception as exc:        # left for retention
            log.debug("streamed pieces of job %s not dropped (%s)", job_id, exc)


# Request fields passed to the runtime as the job has them, by kind (Ollama's API).
_PASSED_THROUGH = {
    JobKind.GENERATE: ("format", "think", "suffix", "raw", "template", "context"),
    JobKind.CHAT: ("format", "think", "tools"),
    JobKind.EMBED: ("truncate", "dimensions"),
}


def _result(kind: JobKind, final: dict[str, Any], keep_context: bool = False) -> dict[str, Any]:
    if kind is JobKind.EMBED:
        return {"embeddings": final.get("embeddings") or []}
    result: dict[str, Any] = {"done_reason": final.get("done_reason")}
    if kind is JobKind.CHAT:
        result["message"] = final.get("message") or {"role": "assistant", "content": ""}
    else:
        result["response"] = final.get("response", "")
        if final.get("thinking"):
            result["thinking"] = final["thinking"]
        if keep_context and final.get("context") is not None:
            result["context"] = final["context"]
    return result


def _count(value: Any) -> int:
    """A token count from the runtime's answer (0 when it gave none)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
