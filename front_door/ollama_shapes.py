"""Ollama's API (`/api/generate`, `/api/chat`, `/api/embed`, `/api/embeddings`) for jobs:
its requests, validated, as job fields; a finished job as Ollama's answer, with its timing
fields; the chunks of a streamed answer."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from jobs.model import JobDoc, JobKind


def rfc3339(ts: float) -> str:
    """Ollama's timestamps (`created_at`, `expires_at`): RFC 3339 in UTC with a `Z`."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


MAX_MODEL_NAME = 200


def _whole_number(value: Any) -> Any:
    """5.0 is an integer to JSON Schema (and to the OpenAPI document); strict parsing alone refuses it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


Integer = Annotated[int, BeforeValidator(_whole_number)]     # requests are parsed strictly (api_front.parse)


def model_name(value: str) -> str:
    """A requested model's name, trimmed; ValueError when it cannot be one."""
    value = value.strip()
    if not value or any(c.isspace() for c in value):
        raise ValueError("must be a model name such as 'qwen2.5:0.5b'")
    return value


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME)
    options: dict[str, Any] = Field(default_factory=dict)
    keep_alive: Any = None          # the manager decides how long models stay
    stream: bool = True

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return model_name(value)

    @field_validator("options", mode="before")
    @classmethod
    def _options(cls, value: Any) -> Any:
        return {} if value is None else value

    def unloads(self) -> bool:
        """keep_alive 0: a request to unload the model."""
        return self.keep_alive in (0, "0", "0s", "0m")


class GenerateRequest(_Request):
    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    context: list[Integer] | None = None
    raw: bool | None = None
    images: list[str] | None = None
    format: str | dict[str, Any] | None = None
    think: bool | str | None = None
    cache: bool = False

    def is_load(self) -> bool:
        """No prompt: Ollama's way to load (or with keep_alive 0, unload) a model."""
        return not self.prompt and not self.images

    def job_fields(self) -> dict[str, Any]:
        fields = {k: getattr(self, k) for k in ("prompt", "suffix", "system", "template", "context", "raw",
                                               "format", "think") if getattr(self, k) is not None}
        fields["prompt"] = self.prompt or ""
        fields["images"] = self.images or []
        fields["keep_context"] = not self.raw
        return fields


class ChatRequest(_Request):
    messages: list[dict[str, Any]] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None
    format: str | dict[str, Any] | None = None
    think: bool | str | None = None
    cache: bool = False

    @field_validator("messages")
    @classmethod
    def _messages(cls, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, message in enumerate(messages):
            if message.get("role") not in ("system", "user", "assistant", "tool"):
                raise ValueError(f"messages[{i}].role must be system, user, assistant or tool")
            if message.get("content") is None:
                message["content"] = ""
            if not isinstance(message["content"], str):
                raise ValueError(f"messages[{i}].content must be a string")
        return messages

    def is_load(self) -> bool:
        return not self.messages

    def job_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"messages": self.messages}
        for key in ("tools", "format", "think"):
            if getattr(self, key) is not None:
                fields[key] = getattr(self, key)
        return fields


class EmbedRequest(_Request):
    input: str | list[str] | None = None
    prompt: str | None = None        # /api/embeddings, the older route
    truncate: bool | None = None
    dimensions: Integer | None = Field(default=None, gt=0)
    cache: bool = False

    def job_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"input": self.input if self.input is not None else (self.prompt or "")}
        for key in ("truncate", "dimensions"):
            if getattr(self, key) is not None:
                fields[key] = getattr(self, key)
        return fields


def _ns(seconds: Any) -> int:
    return int(float(seconds or 0) * 1e9)


def timings(job: JobDoc) -> dict[str, Any]:
    """Ollama's figures of a finished job, in nanoseconds: `total_duration` from submission (the
    manager's queue included), `load_duration` the part spent loading its model."""
    metrics = job.get("metrics") or {}
    runtime = metrics.get("runtime") or {}
    return {"total_duration": _ns(metrics.get("total_s")), "load_duration": _ns(metrics.get("load_s")),
            "prompt_eval_count": int(metrics.get("prompt_tokens") or 0),
            "prompt_eval_duration": _ns(runtime.get("prompt_eval_duration_s")),
            "eval_count": int(metrics.get("output_tokens") or 0),
            "eval_duration": _ns(runtime.get("eval_duration_s"))}


def created_at(job: JobDoc | None = None) -> str:
    return rfc3339((job or {}).get("completed_at") or time.time())


def chunk(kind: JobKind, model: str, piece: dict[str, Any]) -> dict[str, Any]:
    """One streamed object of a generate or chat answer."""
    out: dict[str, Any] = {"model": model, "created_at": created_at()}
    if kind is JobKind.CHAT:
        message: dict[str, Any] = {"role": "assistant", "content": piece.get("text") or ""}
        if piece.get("thinking"):
            message["thinking"] = piece["thinking"]
        if piece.get("tool_calls"):
            message["tool_calls"] = piece["tool_calls"]
        out["message"] = message
    else:
        out["response"] = piece.get("text") or ""
        if piece.get("thinking"):
            out["thinking"] = piece["thinking"]
    out["done"] = False
    return out


def final(kind: JobKind, job: JobDoc, piece: dict[str, Any]) -> dict[str, Any]:
    """The last object of an answer: `piece` (the whole answer when not streamed, else what was
    left to send) with done, done_reason, the context (generate) and the timings."""
    result = job.get("result") or {}
    out = chunk(kind, job["model"], piece)
    out["created_at"] = created_at(job)
    out["done"] = True
    out["done_reason"] = result.get("done_reason") or "stop"
    if kind is JobKind.GENERATE and result.get("context") is not None:
        out["context"] = result["context"]
    out.update(timings(job))
    return out


def load_answer(kind: JobKind, model: str, unload: bool) -> dict[str, Any]:
    """The answer to a request with nothing to generate: Ollama loads (or unloads) the model;
    here the scheduler decides what is loaded, so it only says done."""
    out = chunk(kind, model, {"text": ""})
    out["done"] = True
    out["done_reason"] = "unload" if unload else "load"
    return out


def embed_answer(job: JobDoc) -> dict[str, Any]:
    figures = timings(job)
    return {"model": job["model"], "embeddings": (job.get("result") or {}).get("embeddings") or [],
            "total_duration": figures["total_duration"], "load_duration": figures["load_duration"],
            "prompt_eval_count": figures["prompt_eval_count"]}


def legacy_embedding_answer(job: JobDoc) -> dict[str, Any]:
    """/api/embeddings answers one vector."""
    embeddings = (job.get("result") or {}).get("embeddings") or [[]]
    return {"embedding": embeddings[0] if embeddings else []}
