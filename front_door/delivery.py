"""What a streamed answer has sent so far, and the rest of it once the job has finished.

A stream sends the pieces of one run of the job (the first it hears from), and of a run that
resumes it after a preemption (whose first piece carries the answer so far). The finished job's
result holds the whole answer, so the end sends whatever the pieces missed (a relayed batch not
yet written, say). When the answer that finished is not the one streamed (the run was stopped
and the job ran again with another sampling), what was sent cannot be taken back: the stream
ends with an error instead of a wrong answer.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.model import JobKind


@dataclass
class Delivery:
    run_id: str | None = None
    text: str = ""
    thinking: str = ""
    tool_calls: list[Any] = field(default_factory=list)

    def accept(self, run_id: str, piece: dict[str, Any]) -> dict[str, Any] | None:
        """The piece to send, or None when it belongs to another run than the one streamed. A
        run that resumes a preempted one says in its first piece how the answer starts
        (`prefix`, jobs/resume.py): when that continues what was sent, the stream follows the new
        run, sending first whatever of the prefix the client has not had."""
        prefix = piece.get("prefix")
        piece = {k: v for k, v in piece.items() if k != "prefix"}
        if run_id != self.run_id:
            if self.run_id is not None and (prefix is None or self.thinking or self.tool_calls):
                return None
            if prefix is not None:
                if not prefix.startswith(self.text):
                    return None
                piece["text"] = prefix[len(self.text):] + (piece.get("text") or "")
            self.run_id = run_id
        self.text += piece.get("text") or ""
        self.thinking += piece.get("thinking") or ""
        self.tool_calls.extend(piece.get("tool_calls") or [])
        return piece

    def rest(self, kind: JobKind, result: dict[str, Any] | None) -> dict[str, Any] | None:
        """The part of the finished answer not sent yet, as a piece (empty text when nothing is
        left); None when what was sent is not the start of the answer."""
        text, thinking, calls = answer_parts(kind, result)
        if not (text.startswith(self.text) and thinking.startswith(self.thinking)):
            return None
        piece: dict[str, Any] = {"text": text[len(self.text):]}
        if len(thinking) > len(self.thinking):
            piece["thinking"] = thinking[len(self.thinking):]
        if calls[:len(self.tool_calls)] != self.tool_calls:
            return None
        if len(calls) > len(self.tool_calls):
            piece["tool_calls"] = calls[len(self.tool_calls):]
        return piece


def answer_parts(kind: JobKind, result: dict[str, Any] | None) -> tuple[str, str, list[Any]]:
    """(text, thinking, tool calls) of a generate or chat result."""
    result = result or {}
    if kind is JobKind.CHAT:
        message = result.get("message") or {}
        return message.get("content") or "", message.get("thinking") or "", list(message.get("tool_calls") or [])
    return result.get("response") or "", result.get("thinking") or "", []
