"""What a job is: its life cycle, priority and kind, and the document that stores it.

A job document is a plain dict (it crosses process and database boundaries as one), typed by
`JobDoc`; this module owns its shape. Times are stored as Unix seconds (floats) and shown as
ISO 8601 by `public_view`.
"""
from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypedDict


class JobDoc(TypedDict, total=False):
    """A job as the store keeps it."""
    job_id: str
    status: str                  # a JobStatus value
    model: str
    kind: str                    # a JobKind value
    priority: str                # a Priority value
    rank: int                    # Priority.rank, for ordering in the store
    prompt: str | None
    messages: list[dict[str, Any]] | None
    input: Any
    system: str | None
    options: dict[str, Any]
    images: list[str]
    metadata: dict[str, Any]
    format: Any
    think: Any
    tools: list[dict[str, Any]] | None
    timeout_s: float
    submitted_at: float
    started_at: float | None     # when its request got a slot on the runtime
    completed_at: float | None
    result: dict[str, Any] | None
    error: str | None
    error_kind: str | None       # an ErrorKind value
    metrics: dict[str, Any]
    attempts: int                # runs started (a claim counts one)
    oom_retries: int             # re-queues after a passing failure (out of memory, runtime busy)
    run_id: str | None           # the run that owns it while running
    node: str
    recovered: bool
    last_error: str
    tenant: str                  # the API key's tenant that submitted it ("" without a key)
    stream: str | None           # pieces of the answer wanted as they come: "local" (this process) or "relay" (store)
    preempted: int               # times it was stopped for more urgent work (scheduling/preemption.py)
    resume: dict[str, Any] | None   # what it had produced when last stopped: text, tokens (jobs/resume.py)
    wasted_tokens: int           # output thrown away by restarts after preemption
    wasted_s: float              # ... and the runtime's seconds spent on it
    share: dict[str, Any]        # its fair share's inputs: user, weight, prompt_tokens, answer_limit (scheduling/fair_share.py)
    cache_key: str | None        # where its answer goes in the result cache (service/result_cache.py), when cacheable
    suffix: str | None           # passed to the runtime as in Ollama's API: generate ...
    raw: bool | None
    template: str | None
    context: list[int] | None
    keep_context: bool           # ... and keep the runtime's `context` in the result (Ollama's /api/generate)
    truncate: bool | None        # ... embed
    dimensions: int | None


class JobStatus(StrEnum):
    PENDING = "pending"      # accepted and stored; the scheduler has not taken it yet
    QUEUED = "queued"        # in the scheduler's queue, waiting for its model and a slot
    RUNNING = "running"      # its request is with the runtime
    COMPLETE = "complete"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED


WAITING = (JobStatus.PENDING, JobStatus.QUEUED)
FINISHED = (JobStatus.COMPLETE, JobStatus.FAILED, JobStatus.CANCELLED)


class Priority(StrEnum):
    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"

    @property
    def rank(self) -> int:
        """Larger is more urgent; one rank is one level of aging (QUEUE_AGING_S)."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2}


class JobKind(StrEnum):
    GENERATE = "generate"
    CHAT = "chat"
    EMBED = "embed"

    @property
    def capability(self) -> str:
        """The Ollama capability (`/api/show`) a model needs to serve this kind."""
        return "embedding" if self is JobKind.EMBED else "completion"


class ErrorKind(StrEnum):
    """Why a job failed; counted under `errors` in /api/stats."""
    OOM = "oom"
    RUNTIME = "runtime"
    TIMEOUT = "timeout"


def new_job_id() -> str:
    return uuid.uuid4().hex


def new_job(*, model: str, kind: JobKind, priority: Priority, submitted_at: float,
            timeout_s: float, prompt: str | None = None, messages: list[dict[str, Any]] | None = None,
            input: Any = None, system: str | None = None, options: dict[str, Any] | None = None,
            images: list[str] | None = None, metadata: dict[str, Any] | None = None,
            job_id: str | None = None, tenant: str = "") -> JobDoc:
    return JobDoc(**{
        "job_id": job_id or new_job_id(),
        "status": JobStatus.PENDING.value,
        "model": model,
        "kind": kind.value,
        "priority": priority.value,
        "rank": priority.rank,
        "prompt": prompt,
        "messages": messages,
        "input": input,
        "system": system,
        "options": options or {},
        "images": images or [],
        "metadata": metadata or {},
        "timeout_s": timeout_s,
        "submitted_at": submitted_at,
        "started_at": None,
        "completed_at": None,
        "result": None,
        "error": None,
        "error_kind": None,
        "metrics": {},
        "attempts": 0,
        "oom_retries": 0,
        "tenant": tenant,
    })


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(timespec="milliseconds")


def public_view(doc: JobDoc, include_request: bool = False) -> dict[str, Any]:
    """The job as the API shows it."""
    view: dict[str, Any] = {
        "job_id": doc["job_id"],
        "status": doc["status"],
        "model": doc["model"],
        "kind": doc["kind"],
        "priority": doc["priority"],
        "result": doc.get("result"),
        "error": doc.get("error"),
        "submitted_at": iso(doc.get("submitted_at")),
        "started_at": iso(doc.get("started_at")),
        "completed_at": iso(doc.get("completed_at")),
        "metrics": doc.get("metrics") or {},
        "metadata": doc.get("metadata") or {},
        "attempts": doc.get("attempts", 0),
        "preempted": doc.get("preempted", 0),
        "tenant": doc.get("tenant") or "",
    }
    if include_request:
        for key in ("prompt", "messages", "input", "system", "options", "timeout_s"):
            view[key] = doc.get(key)
    return view
