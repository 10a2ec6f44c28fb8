"""Pieces of the Ollama HTTP API shared by the runtimes this project serves itself (the GPU
simulator and the embedded runtime): keep_alive, timestamps, errors, and the shape of answers.
The server itself is `runtime.ollama_server`."""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Iterator
from typing import Any

from flask import Response, jsonify

from front_door.ollama_shapes import rfc3339

DEFAULT_KEEP_ALIVE_S = 300.0
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class BadRequest(ValueError):
    """A request the runtime refuses with HTTP 400."""


class Refused(Exception):
    """A request the runtime refuses with this HTTP status."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m"). Returns
    seconds, or None for "forever" (any negative value). Missing means the 5 minute default."""
    if value is None or value == "":
        return DEFAULT_KEEP_ALIVE_S
    if isinstance(value, bool):
        raise BadRequest("keep_alive must be a number or a duration")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip()
        try:
            seconds = float(text)
        except ValueError:
            sign = -1.0 if text.startswith("-") else 1.0
            body = text.lstrip("+-")
            parts = _DURATION.findall(body)
            if not parts or "".join(n + u for n, u in parts) != body:
                raise BadRequest(f"invalid keep_alive duration {value!r}") from None
            seconds = sign * sum(float(n) * _UNIT_S[u] for n, u in parts)
    return None if seconds < 0 else seconds


def expires_at(keep_alive_s: float | None, since: float) -> str:
    """Ollama shows "forever" as a date far in the future."""
    if keep_alive_s is None:
        return "2318-01-01T00:00:00Z"
    return rfc3339(since + keep_alive_s)


def now_iso() -> str:
    return rfc3339(time.time())


def ns(seconds: float) -> int:
    return int(seconds * 1e9)


def answer(kind: str, model: str, text: str, **fields: Any) -> dict[str, Any]:
    """An answer object of /api/generate (`response`) or /api/chat (`message`): a stream chunk,
    or with `done=True` and the figures, the final one."""
    out: dict[str, Any] = {"model": model, "created_at": now_iso()}
    if kind == "chat":
        out["message"] = {"role": "assistant", "content": text}
    else:
        out["response"] = text
    out["done"] = False
    out.update(fields)
    return out


def final_answer(kind: str, model: str, text: str, *, done_reason: str, total_s: float, load_s: float,
                 prompt_tokens: int, prompt_s: float, output_tokens: int, output_s: float) -> dict[str, Any]:
    """The last object of an answer, with Ollama's figures (durations in nanoseconds)."""
    return answer(kind, model, text, done=True, done_reason=done_reason, total_duration=ns(total_s),
                  load_duration=ns(load_s), prompt_eval_count=prompt_tokens, prompt_eval_duration=ns(prompt_s),
                  eval_count=output_tokens, eval_duration=ns(output_s))


def error(status: int, message: str) -> tuple[Response, int]:
    return jsonify({"error": message}), status


def ndjson_lines(chunks: Iterable[dict[str, Any]]) -> Iterator[str]:
    """The lines of a newline-delimited JSON stream, as Ollama streams."""
    for chunk in chunks:
        yield json.dumps(chunk) + "\n"


def wants_stream(body: dict[str, Any]) -> bool:
    """Ollama streams unless told `"stream": false`."""
    return body.get("stream", True) is not False


def require_model(body: dict[str, Any]) -> str:
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model.strip():
        raise BadRequest("model is required")
    return model.strip()


def json_body(raw: bytes) -> dict[str, Any]:
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"invalid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    return body
