"""The HTTP servers' own error answers in the API's JSON shape.

A request too large for the server (waitress under `python main.py`, gunicorn in production)
is refused by the server before the app sees it, with a text/plain or HTML page; the API
promises JSON (`{"error": ...}`, and OpenAI's shape under `/v1/`). This module makes those
answers JSON: a waitress channel whose error task writes it, and a gunicorn worker whose error
writer does.

The server's limits are set above the app's (MAX_PROMPT_BYTES for bodies, MAX_HEADER_BYTES for
headers), so that an ordinary oversized request is read whole and refused by the app itself:
the client, done sending, then reads the answer. Past the server's limits the server answers
at once and closes; a client still sending may then see the connection reset instead.
"""
from __future__ import annotations

import json
import threading
from typing import Any

from front_door.openai_shapes import error_body

MAX_HEADER_BYTES = 64 * 1024          # the app's limit on a request's headers, all together: 431 past it
SERVER_HEADER_BYTES = 2 * 1024 * 1024  # waitress reads this much of a header before it refuses it itself
SERVER_BODY_FACTOR = 4                 # waitress reads bodies up to this many times MAX_PROMPT_BYTES


def json_error(status: int, message: str, path: str | None, **extra: Any) -> bytes:
    """The API's error body for `status`: OpenAI's shape under /v1/, `{"error": ...}` elsewhere."""
    if path and path.startswith("/v1/"):
        payload: dict[str, Any] = error_body(status, message, None)
    else:
        payload = {"error": message, **extra}
    return json.dumps(payload).encode()


# --- waitress ------------------------------------------------------------------------------------
def install_waitress(server: Any) -> None:
    """Give a waitress server (from `create_server`) JSON error answers."""
    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JsonErrorTask(ErrorTask):
        def execute(self) -> None:
            error = self.request.error
            message = {413: "request body over the server's limit",
                       431: "request headers over the server's limit"}.get(error.code, error.reason)
            body = json_error(error.code, f"{message} ({error.body})", getattr(self.request, "path", None) or None)
            self.status = f"{error.code} {error.reason}"
            self.response_headers.append(("Content-Type", "application/json"))
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JsonErrorChannel(HTTPChannel):
        error_task_class = JsonErrorTask

    servers = list(getattr(server, "map", {}).values()) if not hasattr(server, "channel_class") else [server]
    for one in servers:
        if hasattr(one, "channel_class"):
            one.channel_class = JsonErrorChannel


# --- gunicorn ------------------------------------------------------------------------------------
_answering = threading.local()


def write_json_error(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn.util.write_error's signature, writing the API's JSON instead of an HTML page."""
    from gunicorn import util

    body = json_error(status_int, mesg or reason, getattr(_answering, "path", None))
    head = (f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1")
    util.write_nonblock(sock, head + body)


def gunicorn_worker_class(client_timeout_s: float) -> type:
    """gunicorn's threaded worker with JSON error answers and a deadline on every read and write
    of a client's socket (gunicorn.conf.py names it). gthread reads a request in a worker thread
    with a blocking socket and no timeout: a client that sends half a request and stops would hold
    that thread for ever, and a few of them every thread (`/api/health` included)."""
    from gunicorn import util
    from gunicorn.workers import gthread
    from gunicorn.workers.gthread import ThreadWorker

    util.write_error = write_json_error      # gunicorn's only writer of its own error pages
    blocking_init = gthread.TConn.init

    def init_with_deadline(conn: Any) -> None:
        blocking_init(conn)                  # called before each request is read, after setblocking(True)
        conn.sock.settimeout(client_timeout_s)

    gthread.TConn.init = init_with_deadline  # gthread offers no hook for it

    class JsonErrorThreadWorker(ThreadWorker):
        def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
            request = req if req is not None else getattr(exc, "req", None)
            _answering.path = getattr(request, "path", None)
            try:
                super().handle_error(req, client, addr, exc)
            finally:
                _answering.path = None

    return JsonErrorThreadWorker


def header_bytes(environ: dict[str, Any]) -> int:
    """The size of a WSGI request's headers, about as they came on the wire."""
    return sum(len(key) - 5 + len(str(value)) + 4 for key, value in environ.items() if key.startswith("HTTP_"))
