"""An HTTP client for the Ollama API (Ollama itself, the embedded runtime, or the simulator).

Inference calls stream from the runtime and are put back together here, so that a job can be
cancelled or timed out between chunks (closing the connection makes Ollama stop generating)
and its time to first token is known. Failures come back as `RuntimeFailure` subclasses that
say what went wrong in words a user can act on.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from jobs import ErrorKind

OOM_MARKERS = ("out of memory", "requires more system memory", "unable to allocate",
               "failed to allocate", "cudamalloc failed", "insufficient memory", "oom")


class RuntimeFailure(Exception):
    """A request to the runtime failed."""
    kind = ErrorKind.RUNTIME


class RuntimeUnavailable(RuntimeFailure):
    """The runtime did not answer (refused, reset or dropped the connection)."""


class RuntimeTimeout(RuntimeFailure):
    kind = ErrorKind.TIMEOUT


class ModelNotFound(RuntimeFailure):
    """The runtime does not have the model (HTTP 404)."""


class RuntimeOutOfMemory(RuntimeFailure):
    kind = ErrorKind.OOM


class RuntimeBusy(RuntimeFailure):
    """The runtime's own queue is full (HTTP 503)."""


class RequestCancelled(Exception):
    """The job was cancelled while its request ran."""


def is_oom_message(message: str) -> bool:
    lowered = message.lower()
    return any(marker in lowered for marker in OOM_MARKERS)


def _failure_from_response(status: int, message: str) -> RuntimeFailure:
    if is_oom_message(message):
        return RuntimeOutOfMemory(message)
    if status == 404:
        return ModelNotFound(message)
    if status == 503:
        return RuntimeBusy(message)
    return RuntimeFailure(f"runtime answered HTTP {status}: {message}")


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text.strip() or response.reason


class OllamaClient:
    def __init__(self, base_url: str, connect_timeout: float = 5.0, pool_size: int = 64):
        self.base_url = base_url.rstrip("/")
        self.connect_timeout = connect_timeout
        self.session = requests.Session()
        # The runtime is reached directly; reading proxy settings from the environment on every
        # request costs more than the rest of the client's work.
        self.session.trust_env = False
        # One retry when the connection cannot be made; never once the request was sent.
        retry = Retry(total=1, connect=1, read=0, status=0, other=0, backoff_factor=0.2,
                      allowed_methods=None, raise_on_status=False)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    # --- plumbing -------------------------------------------------------------------------------
    def _request(self, method: str, path: str, timeout: float, **kwargs: Any) -> requests.Response:
        try:
            response = self.session.request(method, self.base_url + path,
                                            timeout=(self.connect_timeout, timeout), **kwargs)
        except requests.RequestException as exc:
            # With a retry policy, requests reports a read timeout as a ConnectionError.
            if isinstance(exc, requests.Timeout) or "Read timed out" in str(exc):
                raise RuntimeTimeout(f"timed out: the runtime did not answer {path} within {timeout:.1f}s") from exc
            if isinstance(exc, requests.ConnectionError):
                raise RuntimeUnavailable(f"cannot reach the runtime at {self.base_url}: {_reason(exc)}") from exc
            raise RuntimeUnavailable(f"request to the runtime failed: {_reason(exc)}") from exc
        if response.status_code >= 400:
            text = _error_text(response)
            response.close()
            raise _failure_from_response(response.status_code, text)
        return response

    def _json(self, method: str, path: str, timeout: float = 10.0, **kwargs: Any) -> dict[str, Any]:
        response = self._request(method, path, timeout, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise RuntimeFailure(f"runtime sent invalid JSON for {path}") from exc
        except requests.RequestException as exc:   # the body was cut off
            raise RuntimeUnavailable(f"the runtime dropped the connection: {_reason(exc)}") from exc

    # --- state ----------------------------------------------------------------------------------
    def version(self, timeout: float = 3.0) -> str:
        return str(self._json("GET", "/api/version", timeout).get("version", ""))

    def ps(self, timeout: float = 5.0) -> list[dict[str, Any]]:
        return list(self._json("GET", "/api/ps", timeout).get("models") or [])

    def tags(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        return list(self._json("GET", "/api/tags", timeout).get("models") or [])

    def show(self, model: str, timeout: float = 10.0) -> dict[str, Any]:
        return self._json("POST", "/api/show", timeout, json={"model": model})

    def get_json(self, path: str, timeout: float = 5.0) -> dict[str, Any]:
        """Any other GET endpoint the runtime offers (the simulator's /api/sim/stats, say)."""
        return self._json("GET", path, timeout)

    # --- models ---------------------------------------------------------------------------------
    def load(self, model: str, keep_alive: str | int, timeout: float,
             embedding: bool = False) -> dict[str, Any]:
        """Load without generating: a generate request with no prompt (an embed request with no
        input for embedding-only models, which refuse /api/generate)."""
        if embedding:
            return self._json("POST", "/api/embed", timeout,
                              json={"model": model, "input": [], "keep_alive": _keep_alive(keep_alive)})
        return self._json("POST", "/api/generate", timeout,
                          json={"model": model, "keep_alive": _keep_alive(keep_alive), "stream": False})

    def unload(self, model: str, timeout: float = 60.0) -> dict[str, Any]:
        return self._json("POST", "/api/generate", timeout,
                          json={"model": model, "keep_alive": 0, "stream": False})

    # --- inference ------------------------------------------------------------------------------
    def embed(self, body: dict[str, Any], deadline: float) -> dict[str, Any]:
        return self._json("POST", "/api/embed", _remaining(deadline), json=body)

    def stream(self, path: str, body: dict[str, Any], deadline: float,
               should_stop: Callable[[], bool] = lambda: False,
               on_first_token: Callable[[], None] | None = None) -> dict[str, Any]:
        """POST a streaming /api/generate or /api/chat and return the final object with the whole
        `response` (generate) or `message` (chat) put back together."""
        body = {**body, "stream": True}
        response = self._request("POST", path, _remaining(deadline), json=body, stream=True)
        pieces: list[str] = []
        thinking: list[str] = []
        tool_calls: list[Any] = []
        final: dict[str, Any] | None = None
        try:
            for line in response.iter_lines():
                if should_stop():
                    raise RequestCancelled()
                if time.time() > deadline:
                    raise RuntimeTimeout("job timed out while generating")
                if not line:
                    continue
                chunk = json.loads(line)
                if "error" in chunk:
                    raise _failure_from_response(500, str(chunk["error"]))
                if on_first_token is not None and not pieces:
                    on_first_token()
                if path.endswith("/chat"):
                    message = chunk.get("message") or {}
                    pieces.append(message.get("content") or "")
                    thinking.append(message.get("thinking") or "")
                    tool_calls.extend(message.get("tool_calls") or [])
                else:
                    pieces.append(chunk.get("response") or "")
                    thinking.append(chunk.get("thinking") or "")
                if chunk.get("done"):
                    final = chunk
                    break
        except requests.RequestException as exc:
            # requests reports a read timeout while streaming as a ConnectionError
            if isinstance(exc, requests.Timeout) or "timed out" in str(exc) or time.time() >= deadline:
                raise RuntimeTimeout("job timed out waiting for the runtime") from exc
            raise RuntimeUnavailable(f"the runtime dropped the connection mid-answer: {_reason(exc)}") from exc
        except ValueError as exc:
            raise RuntimeFailure(f"runtime sent an invalid stream chunk: {exc}") from exc
        finally:
            response.close()
        if final is None:
            raise RuntimeUnavailable("the runtime closed the stream before the answer was done")
        text = "".join(pieces)
        if path.endswith("/chat"):
            message = {"role": "assistant", "content": text}
            if any(thinking):
                message["thinking"] = "".join(thinking)
            if tool_calls:
                message["tool_calls"] = tool_calls
            final["message"] = message
        else:
            final["response"] = text
            if any(thinking):
                final["thinking"] = "".join(thinking)
        return final


def _remaining(deadline: float) -> float:
    remaining = deadline - time.time()
    if remaining <= 0:
        raise RuntimeTimeout("job timed out before its request was sent")
    return remaining


def _keep_alive(value: str | int) -> str | int:
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return text


def _reason(exc: Exception) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Connection aborted", "Read timed out",
                   "Remote end closed connection", "IncompleteRead"):
        if marker in text:
            return marker
    return text[:200]
