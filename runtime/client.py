"""An HTTP client for the Ollama API (Ollama itself, the embedded runtime, or the simulator).

Control calls (ps, tags, show, load, unload) go through a pooled `requests` session. Inference
requests are streamed over a connection of their own (`http.client`), registered with a
`RequestHandle`, so that another thread can stop one at once: a cancelled job, or one whose
deadline passed, has its socket shut down, which unblocks the read and makes the runtime stop
generating (Ollama cancels a request whose client went away). Failures come back as
`RuntimeFailure` subclasses that say what went wrong in words a user can act on, each with the
`FailureKind` the scheduling policy acts on.

No request to a runtime follows a redirect: an answer 3xx is a `RuntimeRedirected` failure (the
node's URL must be the runtime itself), so a node can never send the manager, or what it sends,
anywhere else. Failures name the node by its label, never its URL: their text can reach a job's
error, which the job's tenant reads.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from runtime.errors import (  # noqa: F401 (its callers' names)
    NODE_DOWN,
    PREEMPTED,
    ModelNotFound,
    NodeDown,
    RuntimeBusy,
    RuntimeFailure,
    RuntimeOutOfMemory,
    RuntimeRefused,
    RuntimeTimeout,
    RuntimeUnavailable,
    failure_from_answer,
    is_oom_message,
)

CONNECT_RETRY_DELAY_S = 0.2


class RuntimeRedirected(RuntimeUnavailable):
    """The runtime answered with a redirect, which is never followed."""


def _redirect_failure(status: int) -> RuntimeRedirected:
    return RuntimeRedirected(f"the runtime answered HTTP {status}, a redirect, which is not followed: the node's URL "
                             "must be the runtime's own address")


class RequestCancelled(Exception):
    """The request was stopped on purpose: the job was cancelled ("cancelled"), or the
    scheduler is shutting down ("shutdown")."""

    def __init__(self, reason: str = "cancelled"):
        super().__init__(reason)
        self.reason = reason


def _error_text(response: requests.Response) -> str:
    try:
        return str(response.json().get("error") or response.text)
    except ValueError:
        return response.text.strip() or response.reason


def _error_body_text(raw: bytes, reason: str) -> str:
    try:
        return str(json.loads(raw).get("error") or raw.decode(errors="replace"))
    except (ValueError, AttributeError):
        return raw.decode(errors="replace").strip() or reason


class RequestHandle:
    """One inference request that another thread may stop at once (`stop`): its socket is shut
    down, which unblocks whatever read is waiting on it."""

    def __init__(self, deadline: float):
        self.deadline = deadline
        self.reason: str | None = None           # "cancelled", "shutdown", NODE_DOWN or "timeout" once stopped
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None

    def attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            stopped = self.reason is not None
        if stopped:
            _shutdown(sock)

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def stop(self, reason: str) -> None:
        with self._lock:
            if self.reason is not None:
                return
            self.reason = reason
            sock = self._sock
        if sock is not None:
            _shutdown(sock)

    def raise_if_stopped(self) -> None:
        if self.reason in ("cancelled", "shutdown", NODE_DOWN, PREEMPTED):
            raise RequestCancelled(self.reason)
        if self.reason == "timeout" or time.time() >= self.deadline:
            raise RuntimeTimeout("job timed out: the runtime did not finish within the job's timeout_s")


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class OllamaClient:
    def __init__(self, base_url: str, connect_timeout: float = 5.0, pool_size: int = 64, name: str = "the runtime"):
        self.base_url = base_url.rstrip("/")
        self.name = name                  # how failures name the node (its label, never its URL)
        self.connect_timeout = connect_timeout
        self.session = requests.Session()
        # The runtime is reached directly; reading proxy settings from the environment on every
        # request costs more than the rest of the client's work.
        self.session.trust_env = False
        # One retry when the connection cannot be made; never once the request was sent.
        retry = Retry(total=1, connect=1, read=0, status=0, other=0, backoff_factor=CONNECT_RETRY_DELAY_S,
                      allowed_methods=None, raise_on_status=False)
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=retry)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    @property
    def base_url(self) -> str:
        return self._base_url

    @base_url.setter
    def base_url(self, url: str) -> None:
        self._base_url = url.rstrip("/")
        parts = urlsplit(self._base_url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (443 if self._https else 80)
        self._prefix = parts.path.rstrip("/")

    # --- plumbing -------------------------------------------------------------------------------
    def _request(self, method: str, path: str, timeout: float, **kwargs: Any) -> requests.Response:
        try:
            # never a redirect followed (requests' max_redirects=0 would refuse even to look at one)
            response = self.session.request(method, self.base_url + path, allow_redirects=False,
                                            timeout=(self.connect_timeout, timeout), **kwargs)
        except requests.RequestException as exc:
            # With a retry policy, requests reports a read timeout as a ConnectionError.
            if isinstance(exc, requests.Timeout) or "Read timed out" in str(exc):
                raise RuntimeTimeout(f"timed out: the runtime did not answer {path} within {timeout:.1f}s") from exc
            if isinstance(exc, requests.ConnectionError):
                raise RuntimeUnavailable(f"cannot reach {self.name}: {_reason(exc)}") from exc
            raise RuntimeUnavailable(f"request to {self.name} failed: {_reason(exc)}") from exc
        if 300 <= response.status_code < 400:
            response.close()
            raise _redirect_failure(response.status_code)
        if response.status_code >= 400:
            text = _error_text(response)
            response.close()
            raise failure_from_answer(response.status_code, text)
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
    def load(self, model: str, keep_alive: str | int, timeout: float, embedding: bool = False,
             options: dict[str, Any] | None = None) -> dict[str, Any]:
        """Load without generating: a generate request with no prompt (an embed request with no
        input for embedding-only models, which refuse /api/generate). `options` carries the
        runner options (num_ctx) the model is to be loaded with."""
        body: dict[str, Any] = {"model": model, "keep_alive": _keep_alive(keep_alive)}
        if options:
            body["options"] = options
        if embedding:
            return self._json("POST", "/api/embed", timeout, json={**body, "input": []})
        return self._json("POST", "/api/generate", timeout, json={**body, "stream": False})

    def unload(self, model: str, timeout: float = 60.0) -> dict[str, Any]:
        return self._json("POST", "/api/generate", timeout,
                          json={"model": model, "keep_alive": 0, "stream": False})

    # --- inference ------------------------------------------------------------------------------
    def _open(self, path: str, body: dict[str, Any], handle: RequestHandle
              ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """Send an inference request on a connection registered with `handle`."""
        payload = json.dumps(body).encode()
        for attempt in (1, 2):
            handle.raise_if_stopped()
            cls = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
            conn = cls(self._host, self._port, timeout=self.connect_timeout)
            try:
                conn.connect()
            except OSError as exc:
                conn.close()
                if attempt == 1 and isinstance(exc, ConnectionRefusedError):
                    time.sleep(CONNECT_RETRY_DELAY_S)       # one retry when the connection cannot be made
                    continue
                raise RuntimeUnavailable(f"cannot reach {self.name}: {_reason(exc)}") from exc
            # No read timeout of its own beyond the job's deadline: the engine's deadline watch
            # stops the request exactly then, even if the runtime stalls mid-answer.
            conn.sock.settimeout(max(handle.deadline - time.time(), 0.001) + 1.0)
            handle.attach(conn.sock)
            try:
                conn.request("POST", self._prefix + path, body=payload,
                             headers={"Content-Type": "application/json", "Accept": "application/x-ndjson"})
                response = conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                handle.detach()
                conn.close()
                self._raise_stopped_or(handle, exc, "before answering")
            if 300 <= response.status < 400:
                handle.detach()
                conn.close()
                raise _redirect_failure(response.status)
            if response.status >= 400:
                try:
                    text = _error_body_text(response.read(), response.reason)
                except (OSError, http.client.HTTPException) as exc:
                    self._raise_stopped_or(handle, exc, "while answering an error")
                finally:
                    handle.detach()
                    conn.close()
                raise failure_from_answer(response.status, text)
            return conn, response
        raise AssertionError("unreachable")

    @staticmethod
    def _raise_stopped_or(handle: RequestHandle, exc: BaseException, when: str):
        handle.raise_if_stopped()
        if isinstance(exc, socket.timeout):
            raise RuntimeTimeout("job timed out waiting for the runtime") from exc
        raise RuntimeUnavailable(f"the runtime dropped the connection {when}: {_reason(exc)}") from exc

    def embed(self, body: dict[str, Any], deadline: float, handle: RequestHandle | None = None) -> dict[str, Any]:
        handle = handle or RequestHandle(deadline)
        conn, response = self._open("/api/embed", body, handle)
        try:
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self._raise_stopped_or(handle, exc, "mid-answer")
        finally:
            handle.detach()
            conn.close()
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise RuntimeFailure("runtime sent invalid JSON for /api/embed") from exc

    def stream(self, path: str, body: dict[str, Any], deadline: float, handle: RequestHandle | None = None,
               on_first_token: Callable[[], None] | None = None,
               on_piece: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """POST a streaming /api/generate or /api/chat and return the final object with the whole
        `response` (generate) or `message` (chat) put back together. `on_piece` gets each piece
        with content as it comes: `text`, and `thinking` or `tool_calls` when there are any."""
        handle = handle or RequestHandle(deadline)
        conn, response = self._open(path, {**body, "stream": True}, handle)
        chat = path.endswith("/chat")
        pieces: list[str] = []
        thinking: list[str] = []
        tool_calls: list[Any] = []
        final: dict[str, Any] | None = None
        try:
            while True:
                line = response.readline()
                if not line:
                    break
                handle.raise_if_stopped()
                line = line.strip()
                if not line:
                    continue
                chunk = json.loads(line)
                if "error" in chunk:
                    raise failure_from_answer(500, str(chunk["error"]))
                if on_first_token is not None and not pieces:
                    on_first_token()
                source = (chunk.get("message") or {}) if chat else chunk
                text = source.get("content" if chat else "response") or ""
                pieces.append(text)
                thinking.append(source.get("thinking") or "")
                calls = source.get("tool_calls") or [] if chat else []
                tool_calls.extend(calls)
                if on_piece is not None and (text or thinking[-1] or calls):
                    on_piece({"text": text, **({"thinking": thinking[-1]} if thinking[-1] else {}),
                              **({"tool_calls": calls} if calls else {})})
                if chunk.get("done"):
                    final = chunk
                    break
        except (OSError, http.client.HTTPException) as exc:
            self._raise_stopped_or(handle, exc, "mid-answer")
        except ValueError as exc:
            raise RuntimeFailure(f"runtime sent an invalid stream chunk: {exc}") from exc
        finally:
            handle.detach()
            conn.close()
        if final is None:
            handle.raise_if_stopped()
            raise RuntimeUnavailable("the runtime closed the stream before the answer was done")
        text = "".join(pieces)
        if chat:
            message: dict[str, Any] = {"role": "assistant", "content": text}
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


def _keep_alive(value: str | int) -> str | int:
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        return text


def _reason(exc: BaseException) -> str:
    text = str(exc)
    for marker in ("Connection refused", "Connection reset", "Connection aborted", "Read timed out",
                   "Remote end closed connection", "IncompleteRead"):
        if marker in text:
            return marker
    if isinstance(exc, ConnectionRefusedError):
        return "Connection refused"
    if isinstance(exc, ConnectionResetError):
        return "Connection reset"
    # requests' own text names the host and port (HTTPConnectionPool(host=..., port=...)): not shown
    for marker, said in (("NameResolution", "the host name does not resolve"), ("Name or service not known",
                         "the host name does not resolve"), ("timed out", "timed out"), ("SSL", "TLS failed")):
        if marker in text:
            return said
    if isinstance(exc, requests.RequestException):
        return type(exc).__name__
    return text[:200] or type(exc).__name__
