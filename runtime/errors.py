"""What a runtime's failures mean: the `RuntimeFailure` subclasses, each with the `FailureKind`
the scheduling policy acts on, and the reading of Ollama's error answers into them (not found
first, then out of memory by Ollama's own wording, then by HTTP status)."""
from __future__ import annotations

from typing import TypeGuard

from scheduling.policy import FailureKind

# Ollama's own list (llm/status.go), plus the wording of older releases' load errors.
OOM_MARKERS = ("out of memory", "out of device memory", "cudamalloc failed", "hipmalloc failed", "failed to allocate",
               "allocation failed", "not enough memory", "insufficient memory", "vk_error_out_of_device_memory",
               "erroroutofmemory", "requires more system memory", "unable to allocate")
NOT_FOUND_MARKERS = ("not found", "no such file")


class RuntimeFailure(Exception):
    """A request to the runtime failed."""
    failure = FailureKind.OTHER

    @property
    def kind(self):
        return self.failure.error_kind


class RuntimeUnavailable(RuntimeFailure):
    """The runtime did not answer (refused, reset or dropped the connection)."""
    failure = FailureKind.UNAVAILABLE


NODE_DOWN = "node down"          # why a node's requests were stopped (RequestHandle.stop)
PREEMPTED = "preempted"          # why a job's request was stopped for more urgent work


class NodeDown(RuntimeUnavailable):
    """The node stopped answering, so its requests were stopped: the runtime is gone."""


class RuntimeTimeout(RuntimeFailure):
    failure = FailureKind.TIMEOUT


class ModelNotFound(RuntimeFailure):
    """The runtime does not have the model (HTTP 404)."""
    failure = FailureKind.NOT_FOUND


class RuntimeOutOfMemory(RuntimeFailure):
    failure = FailureKind.OUT_OF_MEMORY


class RuntimeBusy(RuntimeFailure):
    """The runtime's own queue is full (HTTP 503)."""
    failure = FailureKind.BUSY


class RuntimeRefused(RuntimeFailure):
    """The runtime refused the request as malformed or unsupported (HTTP 4xx)."""
    failure = FailureKind.REFUSED


REFUSED_PREFIX = "runtime answered HTTP "


def refused_by_runtime(error: str | None) -> TypeGuard[str]:
    """Whether a job's recorded error is the runtime refusing its request (a 4xx): the job's own input."""
    if not error or not error.startswith(REFUSED_PREFIX):
        return False
    status = error[len(REFUSED_PREFIX):len(REFUSED_PREFIX) + 3]
    return status.isdigit() and 400 <= int(status) < 500 and status != "408"


def is_oom_message(message: str) -> bool:
    lowered = message.lower()
    if any(marker in lowered for marker in NOT_FOUND_MARKERS):
        return False                     # `model "bloom" not found` is not out of memory
    return any(marker in lowered for marker in OOM_MARKERS)


def failure_from_answer(status: int, message: str) -> RuntimeFailure:
    """The failure an error answer means: not found first, then out of memory, then by status."""
    lowered = message.lower()
    if status == 404 or (status >= 400 and any(m in lowered for m in NOT_FOUND_MARKERS) and "model" in lowered):
        return ModelNotFound(message)
    if is_oom_message(message):
        return RuntimeOutOfMemory(message)
    if status == 503:
        return RuntimeBusy(message)
    if 400 <= status < 500 and status != 408:
        return RuntimeRefused(f"{REFUSED_PREFIX}{status}: {message}")
    return RuntimeFailure(f"{REFUSED_PREFIX}{status}: {message}")
