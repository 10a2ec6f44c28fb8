"""What Ollama's and OpenAI's routes share: a request validated into a job, the job queued under
the caller's quotas (or answered from the result cache), and the wait for its answer, streamed
as it comes, with the job cancelled when the client goes away.

Such a request holds a thread while it waits, so at most MAX_WAITERS of them (with long polls)
wait in one process; past it the answer is 503 at once, before anything is queued.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

from flask import request
from pydantic import BaseModel

from front_door.delivery import Delivery
from front_door.job_shapes import storable_keys_error
from front_door.ollama_options import option_error
from jobs.model import JobDoc, JobKind, JobStatus, Priority, new_job
from routes.auth import caller
from routes.common import ApiError, client_gone_probe, config, load_json, parse_body, service, settings
from routes.submission import (
    check_model,
    check_priority,
    check_rate,
    default_priority,
    look_in_cache,
    queue_job,
    wants_cache,
)
from runtime.errors import refused_by_runtime
from scheduling.model_settings import settle_runner_options
from service.answers import End, Gone, Piece

PRIORITY_HEADER = "X-Priority"
METADATA_HEADER = "X-Job-Metadata"
JOB_ID_HEADER = "X-Job-Id"


def parse(model: type[BaseModel]) -> Any:
    # strict, as Ollama's and OpenAI's own servers: `"stream": "false"` or `"n": 1.0` is a 400, not a guess
    return parse_body(model, strict=True)


def _priority() -> Priority:
    raw = request.headers.get(PRIORITY_HEADER)
    if raw is None:
        return default_priority()
    try:
        return Priority(raw.strip().lower())
    except ValueError:
        raise ApiError(400, f"{PRIORITY_HEADER} must be one of {', '.join(p.value for p in Priority)}",
                       field=PRIORITY_HEADER) from None


def _metadata() -> dict[str, Any]:
    raw = request.headers.get(METADATA_HEADER)
    if not raw:
        return {}
    metadata = load_json(raw, METADATA_HEADER)
    if not isinstance(metadata, dict):
        raise ApiError(400, f"{METADATA_HEADER} must be a JSON object", field=METADATA_HEADER)
    problem = storable_keys_error(metadata)
    if problem:
        raise ApiError(400, f"{METADATA_HEADER}: {problem}", field=METADATA_HEADER)
    return metadata


def check_headers() -> None:
    """For a request that queues nothing (Ollama's load): its X-Priority and X-Job-Metadata are still checked."""
    _priority()
    _metadata()


@dataclass
class Admitted:
    """A front-door job: queued (and holding a waiter's place) or answered already."""
    job: JobDoc
    kind: JobKind
    answered: bool
    waiter: Any = None
    inbox: Any = None

    @property
    def job_id(self) -> str:
        return self.job["job_id"]

    def release(self) -> None:
        if self.waiter is not None:
            service().completions.unregister(self.job_id, self.waiter)
            self.waiter = None


def admit(kind: JobKind, model: str, fields: dict[str, Any], options: dict[str, Any], cache: bool,
          stream: bool, answer_limits: tuple[int | None, ...] = (), user: str | None = None) -> Admitted:
    """Check, then queue (or answer from the cache) the job a request asks for. `answer_limits`:
    more answer lengths the request names (OpenAI's max_tokens beside max_completion_tokens),
    each held to the model's context as options.num_predict is."""
    cfg = config()
    name = check_model(model, kind)
    check_front_options(name, options, answer_limits)
    options, problem = settle_runner_options(options, name, settings())
    if problem:
        raise ApiError(400, problem, field="options.num_ctx")
    priority = _priority()
    check_priority(priority)
    metadata = _metadata()
    problem = storable_keys_error(fields.get("messages"))   # stored as documents (the options: checked above)
    if problem:
        raise ApiError(400, f"messages: {problem}", field="messages")
    check_rate()
    job = new_job(model=name, kind=kind, priority=priority, submitted_at=time.time(), timeout_s=cfg.JOB_TIMEOUT_S,
                  options=options, metadata=metadata, tenant=caller().tenant)
    job.update(cast(JobDoc, fields))        # fields of the job document, as the request's shape names them
    if stream and kind is not JobKind.EMBED:
        job["stream"] = service().will_stream()
    if wants_cache(cache):
        answered = look_in_cache(job)
        if answered is not None:
            return Admitted(answered, kind, answered=True)
    waiter = service().completions.register(job["job_id"], caller().tenant)
    if waiter is None:
        if service().completions.tenant_full(caller().tenant):
            err = ApiError(503, f"server busy: this tenant already has {cfg.MAX_WAITERS_PER_TENANT} requests waiting "
                           "for answers in this process (MAX_WAITERS_PER_TENANT); try again",
                           max_waiters_per_tenant=cfg.MAX_WAITERS_PER_TENANT)
        else:
            err = ApiError(503, f"server busy: {cfg.MAX_WAITERS} requests already wait for answers in this process "
                           "(MAX_WAITERS); try again", max_waiters=cfg.MAX_WAITERS)
        err.headers["Retry-After"] = "1"
        raise err
    inbox = service().listen(job["job_id"], relay=job.get("stream") == "relay")
    try:
        queue_job(job, user=user)
    except BaseException:
        service().completions.unregister(job["job_id"], waiter)
        if inbox is not None:
            service().answers.unsubscribe(job["job_id"], inbox)
        raise
    return Admitted(job, kind, answered=False, waiter=waiter, inbox=inbox)


def check_front_options(name: str, options: dict[str, Any], answer_limits: tuple[int | None, ...] = ()) -> None:
    """400 for an option of the wrong type or range, or an answer longer than `name`'s context."""
    for limit in (options.get("num_predict"), *answer_limits):
        _check_answer_length({"num_predict": limit}, name)
    wrong = option_error(options)
    if wrong:
        raise ApiError(400, f"{wrong[0]} {wrong[1]}", field=wrong[0])
    problem = storable_keys_error(options)         # stored as a document (MongoDB's field names)
    if problem:
        raise ApiError(400, f"options: {problem}", field="options")


def _check_answer_length(options: dict[str, Any], model: str) -> None:
    """The request waits for its answer, and one longer than the model's context could only end in a
    timeout (a 500): refused first, as OpenAI refuses a max_tokens over the model's limit."""
    wanted, context = options.get("num_predict"), settings().ctx_for(model)
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > context:
        raise ApiError(400, f"num_predict (max_tokens) {wanted} is more than {model}'s context of {context} tokens "
                       "(NUM_CTX / MODEL_NUM_CTX)", field="options.num_predict")


def answer_events(admitted: Admitted, streamed: bool) -> Iterator[tuple[str, Any]]:
    """("piece", piece) as the answer comes (when `streamed`), then ("end", job): the finished
    job, with `rest` the piece that completes what was streamed. A client that leaves first
    cancels the job. Raises ApiError when the job ends without an answer."""
    job = admitted.job
    if admitted.answered:
        yield "end", (job, Delivery().rest(admitted.kind, job.get("result")))
        return
    gone = client_gone_probe()
    delivery = Delivery()
    finished = False
    try:
        for event in service().follow(admitted.job_id, admitted.inbox, relay=job.get("stream") == "relay", gone=gone):
            if isinstance(event, Piece):
                if streamed:
                    piece = delivery.accept(event.run_id, event.piece)
                    if piece is not None:
                        yield "piece", piece
            elif isinstance(event, Gone):
                return
            elif isinstance(event, End):
                finished = True
                done = _finished_job(event.job, admitted.job_id)
                rest = delivery.rest(admitted.kind, done.get("result"))
                if rest is None:
                    raise ApiError(500, "the job's run was interrupted and it ran again with another answer than "
                                   f"the one streamed; poll /api/job/{admitted.job_id} for the whole answer")
                yield "end", (done, rest)
                return
    except ApiError:
        raise
    except Exception as exc:            # the store, most likely: our failure, not the client's leaving
        finished = True
        raise ApiError(503, f"the answer could not be followed ({exc}); the job goes on: poll "
                       f"/api/job/{admitted.job_id}") from None
    finally:
        admitted.release()
        if not finished:
            _cancel_left(admitted.job_id)


def _cancel_left(job_id: str) -> None:
    try:
        service().cancel(job_id, "cancelled: the client went away")
    except Exception:       # the job runs to its end; nothing else to do for a client that left
        pass


def _finished_job(job: JobDoc | None, job_id: str) -> JobDoc:
    if job is not None and job["status"] == JobStatus.COMPLETE.value:
        return job
    if job is None:
        err = ApiError(500, f"job {job_id} is gone")
    elif job["status"] == JobStatus.CANCELLED.value:
        err = ApiError(500, f"job {job_id} was cancelled: {job.get('error') or ''}".rstrip(": "))
    elif refused_by_runtime(error := job.get("error")):      # the runtime refused what the client sent
        raise ApiError(400, error)
    else:
        err = ApiError(500, job.get("error") or f"job {job_id} failed")
    err.headers["x-should-retry"] = "false"     # the OpenAI client retries a 500: the job ran already
    raise err

