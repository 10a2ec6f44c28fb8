"""Fault injection for tests: the GPU simulator misbehaves on request, as a real runtime
sometimes does, so that tests can see how a manager copes.

`POST /api/sim/faults` with any of these keys sets how many of the next requests misbehave:

* `stall`: generate/chat requests get their slot, stream their first chunk, then send nothing
  more and never finish until the client disconnects;
* `error` (with `status`, default 500, and `message`): inference requests (generate, chat,
  embed) are answered at once with that HTTP status and `{"error": message}`;
* `garbage`: streamed generate/chat requests send a line that is not JSON after their first
  chunk, then end without a final object;
* `drop`: streamed generate/chat requests close the connection after their first chunk.

`{"clear": true}` clears them all. A request takes at most one fault, in the order above.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from runtime import ollama_protocol as proto

KINDS = ("error", "stall", "garbage", "drop")
DEFAULT_ERROR_STATUS = 500
DEFAULT_ERROR_MESSAGE = "llama runner process has terminated: exit status 2"


@dataclass(frozen=True)
class Fault:
    kind: str
    status: int = DEFAULT_ERROR_STATUS
    message: str = DEFAULT_ERROR_MESSAGE


def _count(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise proto.BadRequest(f"{key} must be a non-negative integer")
    return value


class Faults:
    """Fault injection for tests: the faults still to inject, taken by the next requests."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending = dict.fromkeys(KINDS, 0)
        self._status = DEFAULT_ERROR_STATUS
        self._message = DEFAULT_ERROR_MESSAGE

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        """Apply a `POST /api/sim/faults` body (raises proto.BadRequest); returns what is pending."""
        counts = {kind: _count(body, kind) for kind in KINDS}
        status = body.get("status", DEFAULT_ERROR_STATUS)
        if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
            raise proto.BadRequest("status must be an HTTP error status (400 to 599)")
        message = body.get("message", DEFAULT_ERROR_MESSAGE)
        if not isinstance(message, str) or not message:
            raise proto.BadRequest("message must be a non-empty string")
        with self._lock:
            if body.get("clear"):
                self._pending = dict.fromkeys(KINDS, 0)
            self._pending.update({kind: n for kind, n in counts.items() if n is not None})
            if counts["error"] is not None:
                self._status, self._message = status, message
        return self.pending()

    def pending(self) -> dict[str, Any]:
        with self._lock:
            return {**self._pending, "status": self._status, "message": self._message}

    def take(self, endpoint: str, streaming: bool) -> Fault | None:
        """The fault the next inference request on `endpoint` (generate, chat, embed) is to show."""
        with self._lock:
            for kind in self._applicable(endpoint, streaming):
                if self._pending[kind] > 0:
                    self._pending[kind] -= 1
                    return Fault(kind, self._status, self._message)
        return None

    @staticmethod
    def _applicable(endpoint: str, streaming: bool) -> tuple[str, ...]:
        if endpoint == "embed":
            return ("error",)
        return KINDS if streaming else ("error", "stall")
