"""What the API's blueprints share: the error type, the service facade and configuration of the
app at hand, argument parsing, and listing pages (cursors, bounded answers)."""
from __future__ import annotations

import base64
import json
import math
import select
import socket
import time
from collections.abc import Callable
from typing import Any

from flask import current_app, request
from pydantic import BaseModel, ValidationError

from config import Config
from front_door.job_shapes import describe_validation_error
from scheduling.model_settings import ModelSettings
from service.facade import Service
from store import storable

LIST_METADATA_MAX_BYTES = 4096      # larger metadata is shown in listings as its size only
READ_CHUNK_BYTES = 64 * 1024


class ApiError(Exception):
    def __init__(self, http_status: int, message: str, **extra: Any):
        super().__init__(message)
        self.http_status = http_status
        self.payload = {"error": message, **extra}
        self.headers: dict[str, str] = {}


def service() -> Service:
    return current_app.extensions["model_manager"]


def config() -> Config:
    return service().config


def settings() -> ModelSettings:
    """Each model's context length, from the configuration every worker shares."""
    return current_app.extensions["model_manager_settings"]


def read_body() -> bytes:
    """The request body, read no further than MAX_PROMPT_BYTES: a larger one (declared, or
    chunked and found so while reading) gets 413 before the rest is read."""
    limit = config().MAX_PROMPT_BYTES
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"request body is {request.content_length} bytes; the limit is MAX_PROMPT_BYTES = {limit}",
                       max_bytes=limit)
    chunks, size = [], 0
    while size <= limit:
        # in pieces: a read of n bytes allocates n bytes first, and the limit may be megabytes
        chunk = request.stream.read(min(READ_CHUNK_BYTES, limit + 1 - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if size > limit:
        raise ApiError(413, f"request body over MAX_PROMPT_BYTES = {limit} bytes", max_bytes=limit)
    return b"".join(chunks)


def float_arg(name: str, default: float, low: float, high: float) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number", field=name) from None
    if not math.isfinite(value) or value < low or value > high:
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}", field=name)
    return value


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer", field=name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be between {low} and {high}", field=name)
    return value


def limit_arg(default: int = 100) -> int:
    return int_arg("limit", default, 1, 1000)


def parse_body(model: type[BaseModel], strict: bool = False, empty: str = "request body must be a JSON object") -> Any:
    """The request's JSON body as `model`, or 400 naming the first offending field (`empty`:
    the message for a body that is no object at all)."""
    raw = read_body()
    check_json(raw)
    try:
        return model.model_validate_json(raw or b"null", strict=strict)
    except ValidationError as exc:
        field, message, details = describe_validation_error(exc)
        if field == "body" or not raw:
            message = empty
        raise ApiError(400, message, field=field, details=details) from None


def check_json(raw: bytes | str, what: str = "body") -> None:
    """400 naming the field when `raw` holds a number no store can keep (NaN, Infinity, 1e999,
    an integer past 64 bits), a lone surrogate, or nesting past storable.MAX_DEPTH."""
    if not raw:
        return
    try:
        storable.check(raw, what)
    except storable.JsonError as exc:
        if exc.message.startswith("is not valid JSON") and what == "body":
            return                          # pydantic says what is wrong with it, as before
        raise ApiError(400, str(exc), field=exc.field) from None


def load_json(raw: bytes | str, what: str) -> Any:
    """`raw` parsed strictly (strict_json), or 400 naming `what` and the field."""
    try:
        return storable.loads(raw, what)
    except storable.JsonError as exc:
        raise ApiError(400, str(exc), field=exc.field) from None


def cursor_arg() -> tuple[float, str] | None:
    """`?cursor=` as given in a page's `next_cursor`: where the next page starts."""
    raw = request.args.get("cursor")
    if not raw:
        return None
    try:
        at, key = storable.loads(base64.urlsafe_b64decode(raw.encode() + b"=" * (-len(raw) % 4)), "cursor")
        return float(at), str(key)
    except (ValueError, TypeError):     # storable.JsonError is a ValueError: deep nesting, NaN and the like too
        raise ApiError(400, "cursor is not one this API gave out (use a page's next_cursor)", field="cursor") from None


def encode_cursor(at: float, key: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([at, key]).encode()).decode().rstrip("=")


def page(items: list[dict[str, Any]], limit: int, max_bytes: int, position) -> tuple[list[dict[str, Any]], str | None]:
    """Items up to `max_bytes` of JSON (at least one), with large metadata shown as its size;
    and the cursor of the next page when there may be one. `position(item)` = (at, key)."""
    out: list[dict[str, Any]] = []
    size = 0
    for item in items:
        item = _trim_metadata(item)
        size += len(json.dumps(item, default=str))
        if out and size > max_bytes:
            break
        out.append(item)
    more = len(out) < len(items) or len(items) == limit
    return out, (encode_cursor(*position(out[-1])) if out and more else None)


def _trim_metadata(item: dict[str, Any]) -> dict[str, Any]:
    metadata = item.get("metadata")
    if not metadata:
        return item
    size = len(json.dumps(metadata, default=str))
    if size <= LIST_METADATA_MAX_BYTES:
        return item
    return {**item, "metadata": {"truncated": True, "bytes": size}}


def client_gone_probe() -> Callable[[], bool]:
    """Whether this request's client went away, checked at most every 0.1 s (a streamed body runs
    outside the request context, so the environ is kept)."""
    environ = request.environ
    checked_at, was_gone = 0.0, False

    def gone() -> bool:
        nonlocal checked_at, was_gone
        now = time.monotonic()
        if now - checked_at < 0.1:
            return was_gone
        checked_at = now
        was_gone = _gone_in(environ)
        return was_gone
    return gone


def _gone_in(environ: dict[str, Any]) -> bool:
    probe = environ.get("waitress.client_disconnected")
    if probe is not None:
        return bool(probe())
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, socket.socket):
        try:
            poller = select.poll()          # not select(): descriptors past 1024 are common in gthread
            poller.register(sock, select.POLLIN | select.POLLHUP)
            events = poller.poll(0)
            if not events:
                return False
            if events[0][1] & select.POLLHUP:
                return True
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except (OSError, ValueError):      # cannot tell: the client is taken to be there
            return False
    return False
