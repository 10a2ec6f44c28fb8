"""OpenAI's API (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`, `/v1/models`) for
jobs, translated as Ollama's own OpenAI layer translates it (temperature and top_p 1.0 when not
given, max_tokens as num_predict, response_format as format), so that a model answers the same
through either door."""
from __future__ import annotations

import base64
import json
import struct
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from front_door.delivery import answer_parts
from front_door.ollama_shapes import MAX_MODEL_NAME, Integer, model_name
from jobs.model import JobDoc, JobKind
from store import storable


class _Request(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = Field(min_length=1, max_length=MAX_MODEL_NAME)
    cache: bool = False
    user: str | None = Field(default=None, max_length=256)     # fair share between a tenant's users

    @field_validator("model")
    @classmethod
    def _model(cls, value: str) -> str:
        return model_name(value)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class _Sampling(_Request):
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: Integer | None = Field(default=None, gt=0)
    max_completion_tokens: Integer | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    seed: Integer | None = None
    stop: str | list[str] | None = None
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)       # OpenAI's documented range
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    n: Integer = Field(default=1, ge=1, le=1)      # one choice per request, as Ollama

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"temperature": 1.0 if self.temperature is None else self.temperature,
                                   "top_p": 1.0 if self.top_p is None else self.top_p}
        limit = self.max_completion_tokens or self.max_tokens
        if limit is not None:
            options["num_predict"] = limit
        if self.seed is not None:
            options["seed"] = self.seed
        if self.stop is not None:
            options["stop"] = [self.stop] if isinstance(self.stop, str) else self.stop
        if self.frequency_penalty is not None:
            options["frequency_penalty"] = self.frequency_penalty
        if self.presence_penalty is not None:
            options["presence_penalty"] = self.presence_penalty
        return options

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    response_format: dict[str, Any] | None = None

    def job_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"messages": [_message(i, m) for i, m in enumerate(self.messages)]}
        if self.tools:
            fields["tools"] = self.tools
        fmt = _format(self.response_format)
        if fmt is not None:
            fields["format"] = fmt
        return fields


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, value: str | list[str]) -> str | list[str]:
        if isinstance(value, list) and len(value) != 1:
            raise ValueError("must be one prompt (a string, or a list of one string)")
        return value

    def job_fields(self) -> dict[str, Any]:
        prompt = self.prompt if isinstance(self.prompt, str) else self.prompt[0]
        fields: dict[str, Any] = {"prompt": prompt, "raw": True}
        if self.suffix is not None:
            fields["suffix"] = self.suffix
        return fields


class EmbeddingRequest(_Request):
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Integer | None = Field(default=None, gt=0)

    def job_fields(self) -> dict[str, Any]:
        fields: dict[str, Any] = {"input": self.input}
        if self.dimensions is not None:
            fields["dimensions"] = self.dimensions
        return fields


def _message(index: int, message: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI message as Ollama's: text parts joined, image parts (data URLs) as images."""
    role = message.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant", "tool"):
        raise ValueError(f"messages[{index}].role must be system, developer, user, assistant or tool")
    content = message.get("content")
    out: dict[str, Any] = {"role": role, "content": ""}
    if isinstance(content, str):
        out["content"] = content
    elif isinstance(content, list):
        texts, images = [], []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text":
                if not isinstance(part.get("text", ""), str):
                    raise ValueError(f"messages[{index}].content: a text part's text must be a string")
                texts.append(part.get("text", ""))
            elif kind == "image_url":
                url = (part.get("image_url") or {}).get("url", "") if isinstance(part.get("image_url"), dict) \
                    else str(part.get("image_url") or "")
                if not url.startswith("data:") or "," not in url:
                    raise ValueError(f"messages[{index}]: images must be data URLs (data:image/...;base64,...)")
                images.append(url.split(",", 1)[1])
            else:
                raise ValueError(f"messages[{index}].content: part type {kind!r} is not supported")
        out["content"] = "\n".join(texts)
        if images:
            out["images"] = images
    elif content is not None:
        raise ValueError(f"messages[{index}].content must be a string or a list of parts")
    calls = message.get("tool_calls")
    if not isinstance(calls, list | None):
        raise ValueError(f"messages[{index}].tool_calls must be a list")
    if calls:
        out["tool_calls"] = [_tool_call_in(call) for call in calls]
    return out


def _tool_call_in(call: Any) -> dict[str, Any]:
    """An OpenAI tool call as Ollama's: the arguments an object (OpenAI sends them as JSON text)."""
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict | None) or not isinstance(call, dict):
        raise ValueError("a tool call must be an object, its function an object")
    function = dict(function or {})
    if not isinstance(function.get("name", ""), str):
        raise ValueError("a tool call's function name must be a string")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:      # strictly, as a body: no NaN, no 1e999, no nesting past 64 levels
            arguments = function["arguments"] = storable.loads(arguments, "arguments") if arguments else {}
        except storable.JsonError as exc:
            raise ValueError(f"tool call arguments must be JSON a store can keep ({exc.message})") from None
    if not isinstance(arguments, dict | None):
        raise ValueError("tool call arguments must be a JSON object (or its text)")
    return {"function": function}


def _format(response_format: dict[str, Any] | None) -> Any:
    if not response_format:
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema")
        return schema if isinstance(schema, dict) else "json"
    return None


# --- answers ---------------------------------------------------------------------------------------
def _finish_reason(job: JobDoc, tool_calls: bool) -> str:
    if tool_calls:
        return "tool_calls"
    return "length" if (job.get("result") or {}).get("done_reason") == "length" else "stop"


def usage(job: JobDoc) -> dict[str, int]:
    metrics = job.get("metrics") or {}
    prompt, output = int(metrics.get("prompt_tokens") or 0), int(metrics.get("output_tokens") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}


def _tool_calls_out(calls: list[Any]) -> list[dict[str, Any]]:
    out = []
    for i, call in enumerate(calls):
        function = (call or {}).get("function") or {}
        arguments = function.get("arguments", {})
        out.append({"id": f"call_{i}", "index": i, "type": "function",
                    "function": {"name": function.get("name", ""),
                                 "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)}})
    return out


def _head(answer_id: str, kind: str, model: str, created: int | None = None) -> dict[str, Any]:
    return {"id": answer_id, "object": kind, "created": created or int(time.time()), "model": model,
            "system_fingerprint": "fp_ollama"}


def chat_completion(answer_id: str, job: JobDoc) -> dict[str, Any]:
    text, thinking, calls = answer_parts(JobKind.CHAT, job.get("result"))
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if thinking:
        message["reasoning"] = thinking
    if calls:
        message["tool_calls"] = _tool_calls_out(calls)
    return {**_head(answer_id, "chat.completion", job["model"]),
            "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(job, bool(calls))}],
            "usage": usage(job)}


def chat_chunk(answer_id: str, model: str, piece: dict[str, Any] | None, finish: str | None = None,
               first: bool = False) -> dict[str, Any]:
    delta: dict[str, Any] = {}
    if piece is not None:
        delta = {"role": "assistant", "content": piece.get("text") or ""} if first else \
            {"content": piece.get("text") or ""}
        if piece.get("thinking"):
            delta["reasoning"] = piece["thinking"]
        if piece.get("tool_calls"):
            delta["tool_calls"] = _tool_calls_out(piece["tool_calls"])
    return {**_head(answer_id, "chat.completion.chunk", model),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def completion(answer_id: str, job: JobDoc) -> dict[str, Any]:
    text, _, _ = answer_parts(JobKind.GENERATE, job.get("result"))
    return {**_head(answer_id, "text_completion", job["model"]),
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": _finish_reason(job, False)}],
            "usage": usage(job)}


def completion_chunk(answer_id: str, model: str, text: str, finish: str | None = None) -> dict[str, Any]:
    return {**_head(answer_id, "text_completion", model),
            "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}


def usage_chunk(answer_id: str, kind: str, job: JobDoc) -> dict[str, Any]:
    return {**_head(answer_id, kind, job["model"]), "choices": [], "usage": usage(job)}


def finish_reason(job: JobDoc, tool_calls_sent: bool) -> str:
    return _finish_reason(job, tool_calls_sent)


def embeddings(job: JobDoc, encoding: str) -> dict[str, Any]:
    vectors = (job.get("result") or {}).get("embeddings") or []
    data = []
    for i, vector in enumerate(vectors):
        value: Any = vector
        if encoding == "base64":
            value = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "embedding": value, "index": i})
    prompt = int((job.get("metrics") or {}).get("prompt_tokens") or 0)
    return {"object": "list", "data": data, "model": job["model"],
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt}}


def model_entry(name: str, created: float | None = None) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": int(created or 0), "owned_by": "library"}


ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 409: "invalid_request_error", 413: "invalid_request_error",
               422: "invalid_request_error", 429: "rate_limit_error"}


def error_body(status: int, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, "api_error"), "param": param,
                      "code": "invalid_api_key" if status == 401 else None}}
