"""How a preempted job goes on (scheduling/preemption.py decides when one is stopped). Pure.

A stopped job goes back to its place in line with what it had produced (`resume` in the job):

* a chat resumes from its partial answer, sent as the final assistant message: Ollama and
  llama.cpp's server both continue such a message rather than start a new one;
* a generate in raw mode resumes from its prompt followed by its partial answer, which is exact
  (no template comes between them); any other generate starts over;
* an answer that had begun thinking or calling tools, or is held to a format, starts over (its
  partial answer cannot be handed back as plain text).

The answer's length limit (`num_predict`) counts what was produced already; the finished
answer is the partial one followed by the rest, so a client following the stream sees one
continuous answer. Output thrown away (a restart) is counted in `wasted_tokens`/`wasted_s`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from jobs.model import JobDoc, JobKind


@dataclass
class Partial:
    """What one run produced before it was stopped."""
    text: str = ""
    thinking: str = ""
    tool_calls: int = 0
    tokens: int = 0                  # pieces received: Ollama and llama.cpp stream one token a piece
    pieces: list[str] = field(default_factory=list)

    def add(self, piece: dict[str, Any]) -> None:
        self.text += piece.get("text") or ""
        self.thinking += piece.get("thinking") or ""
        self.tool_calls += len(piece.get("tool_calls") or [])
        self.tokens += 1


def resumable(job: JobDoc, partial: Partial) -> bool:
    """Whether `job` can go on from its partial answer rather than start over."""
    if partial.thinking or partial.tool_calls or job.get("format") is not None:
        return False
    kind = JobKind(job["kind"])
    if kind is JobKind.CHAT:
        return True
    return kind is JobKind.GENERATE and bool(job.get("raw")) and not job.get("suffix") and not job.get("context")


def after_preemption(job: JobDoc, partial: Partial, run_s: float) -> dict[str, Any]:
    """The fields a stopped job goes back in line with."""
    before = job.get("resume") or {}
    wasted_tokens = int(job.get("wasted_tokens") or 0)
    wasted_s = float(job.get("wasted_s") or 0.0)
    resume: dict[str, Any] | None
    if resumable(job, partial):
        resume = {"text": (before.get("text") or "") + partial.text, "tokens": int(before.get("tokens") or 0) + partial.tokens}
    else:                                # starts over: everything produced so far is thrown away
        resume = None
        wasted_tokens += int(before.get("tokens") or 0) + partial.tokens
        wasted_s += run_s
    return {"preempted": int(job.get("preempted") or 0) + 1, "resume": resume, "wasted_tokens": wasted_tokens,
            "wasted_s": round(wasted_s, 4)}


def resumed_body(job: JobDoc, body: dict[str, Any]) -> dict[str, Any]:
    """The runtime request of a job that resumes: its partial answer handed back, its length
    limit less what was produced."""
    resumed = _so_far(job)
    if resumed is None:
        return body
    text, produced = resumed
    body = dict(body)
    if JobKind(job["kind"]) is JobKind.CHAT:
        messages = list(body["messages"])
        last = messages[-1] if messages else None
        if isinstance(last, dict) and last.get("role") == "assistant" and isinstance(last.get("content"), str):
            messages[-1] = {**last, "content": last["content"] + text}   # the client's own prefill, continued
        else:
            messages.append({"role": "assistant", "content": text})
        body["messages"] = messages
    else:
        body["prompt"] = (body.get("prompt") or "") + text
    limit = (body.get("options") or {}).get("num_predict")
    if isinstance(limit, int) and not isinstance(limit, bool) and limit > 0:
        body["options"] = {**body["options"], "num_predict": max(limit - produced, 1)}
    return body


def whole_answer(job: JobDoc, final: dict[str, Any]) -> dict[str, Any]:
    """A resumed job's final answer, with what it produced before it was stopped put in front."""
    resumed = _so_far(job)
    if resumed is None:
        return final
    text, produced = resumed
    final = dict(final)
    if JobKind(job["kind"]) is JobKind.CHAT:
        message = dict(final.get("message") or {})
        message["content"] = text + (message.get("content") or "")
        final["message"] = message
    else:
        final["response"] = text + (final.get("response") or "")
    if isinstance(final.get("eval_count"), int):
        final["eval_count"] += produced
    return final


def prefix_of(job: JobDoc) -> str | None:
    """What a resumed job's answer starts with (sent ahead of its first streamed piece)."""
    resumed = _so_far(job)
    return resumed[0] if resumed else None


def _so_far(job: JobDoc) -> tuple[str, int] | None:
    """(text, tokens) a preempted job had produced when it was stopped; None for a fresh run."""
    resume = job.get("resume")
    return (resume.get("text") or "", int(resume.get("tokens") or 0)) if resume else None
