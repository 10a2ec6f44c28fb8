"""One Ollama API server for the runtimes this project serves itself (the GPU simulator and the
embedded runtime): the routes, the parsing every route shares, and the errors as Ollama's JSON
errors, over a small backend interface (`OllamaBackend`) that each runtime implements.

The skeleton reads each POST body (`proto.json_body`: 400 for a body that is not a JSON object)
and, for the model routes, the model's name (`proto.require_model`: 400 without one); the backend
does the rest: it finds the model (its own 404), checks the rest of the request in its own order,
and answers. A backend refuses a request by raising `proto.BadRequest` (400), `proto.Refused`
(any status), or one of its own `errors`; all of them become `{"error": message}`.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from flask import Flask, Response, request

from runtime import ollama_protocol as proto

Kind = Literal["generate", "chat"]
Body = dict[str, Any]


@dataclass(frozen=True)
class Stream:
    """An answer streamed as newline-delimited JSON (Ollama's stream): its lines, each a JSON
    object and a newline (or whatever an injected fault writes), and what to run once the
    response is closed, even if it was never iterated (a client gone before the first byte)."""
    lines: Iterable[str]
    on_close: Callable[[], None]


Answer = Body | Stream


class Tag(NamedTuple):
    """A model of `GET /api/tags`."""
    name: str
    size: int
    digest: str
    details: dict[str, Any]


class Route(NamedTuple):
    """A route of the backend's own, beside Ollama's. A POST route's view gets the request's JSON
    body; a GET route's gets an empty one (its body is not read)."""
    method: Literal["GET", "POST"]
    rule: str
    view: Callable[[Body], Answer]


class OllamaBackend(Protocol):
    """What a runtime implements to be served as Ollama."""

    # The backend's own exceptions, answered as Ollama's JSON error with their `status` if they
    # carry one, else 500.
    errors: tuple[type[Exception], ...]

    def version(self) -> str:
        """`GET /api/version`."""
        ...

    def tags(self) -> list[Tag]:
        """`GET /api/tags`: the models it serves."""
        ...

    def ps(self) -> list[dict[str, Any]]:
        """`GET /api/ps`: the loaded models, as Ollama lists them."""
        ...

    def show(self, model: str) -> Body:
        """`POST /api/show`: details, parameters, template, model_info, capabilities."""
        ...

    def generate(self, kind: Kind, model: str, body: Body) -> Answer:
        """`POST /api/generate` or `/api/chat`: an answer, a stream of answers, or (without a
        prompt) a load or an unload as `keep_alive` says."""
        ...

    def embed(self, model: str, body: Body) -> Body:
        """`POST /api/embed`."""
        ...

    def routes(self) -> list[Route]:
        """The backend's own routes, if any."""
        ...


def _served(answer: Answer) -> Body | Response:
    if not isinstance(answer, Stream):
        return answer
    response = Response(answer.lines, mimetype="application/x-ndjson")
    response.call_on_close(answer.on_close)
    return response


def create_ollama_app(backend: OllamaBackend, name: str) -> Flask:
    """A Flask app (import name `name`) answering the Ollama API from `backend`."""
    app = Flask(name)

    def body() -> Body:
        return proto.json_body(request.get_data())

    @app.errorhandler(proto.BadRequest)
    def bad_request(exc: proto.BadRequest) -> tuple[Response, int]:
        return proto.error(400, str(exc))

    @app.errorhandler(proto.Refused)
    def refused(exc: proto.Refused) -> tuple[Response, int]:
        return proto.error(exc.status, str(exc))

    def backend_error(exc: Exception) -> tuple[Response, int]:
        return proto.error(getattr(exc, "status", 500), str(exc))

    for error in backend.errors:
        app.register_error_handler(error, backend_error)

    @app.get("/api/version")
    def version() -> Body:
        return {"version": backend.version()}

    @app.get("/api/tags")
    def tags() -> Body:
        return {"models": [{"name": t.name, "model": t.name, "modified_at": proto.now_iso(), "size": t.size,
                            "digest": t.digest, "details": t.details} for t in backend.tags()]}

    @app.get("/api/ps")
    def ps() -> Body:
        return {"models": backend.ps()}

    @app.post("/api/show")
    def show() -> Body:
        return backend.show(proto.require_model(body()))

    @app.post("/api/generate")
    def generate() -> Body | Response:
        req = body()
        return _served(backend.generate("generate", proto.require_model(req), req))

    @app.post("/api/chat")
    def chat() -> Body | Response:
        req = body()
        return _served(backend.generate("chat", proto.require_model(req), req))

    @app.post("/api/embed")
    def embed() -> Body:
        req = body()
        return backend.embed(proto.require_model(req), req)

    for route in backend.routes():
        app.add_url_rule(route.rule, f"{route.method} {route.rule}", _view(route), methods=[route.method])
    return app


def _view(route: Route) -> Callable[[], Body | Response]:
    def view() -> Body | Response:
        return _served(route.view(proto.json_body(request.get_data()) if route.method == "POST" else {}))
    return view
