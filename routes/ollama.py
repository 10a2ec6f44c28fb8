"""Ollama's API on the manager's port, so that Ollama's clients work unchanged: generate, chat and
embed become jobs in the same queue as `/api/submit` (priority from `X-Priority`, metadata from
`X-Job-Metadata`), streamed back as NDJSON or answered whole with `"stream": false`; the job's
id comes back in `X-Job-Id`. Models, running models, show and version are the runtime's own
answers, passed through.

Ollama answers errors as `{"error": "..."}` with the status, which is what ApiError gives.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import requests
from flask import Blueprint, Response, jsonify, stream_with_context

from front_door import ollama_shapes as shapes
from jobs.model import JobKind
from routes.common import ApiError, load_json, read_body
from routes.front import JOB_ID_HEADER, Admitted, admit, answer_events, check_front_options, check_headers, parse
from routes.submission import check_model
from routes.system import views
from store import storable
from telemetry.logs import get_logger

ollama_bp = Blueprint("ollama", __name__)
log = get_logger("API")
PASS_THROUGH_TIMEOUT_S = 10.0


@ollama_bp.post("/api/generate")
def generate():
    req = parse(shapes.GenerateRequest)
    return _complete(JobKind.GENERATE, req)


@ollama_bp.post("/api/chat")
def chat():
    req = parse(shapes.ChatRequest)
    return _complete(JobKind.CHAT, req)


@ollama_bp.post("/api/embed")
def embed():
    req = parse(shapes.EmbedRequest)
    if req.input is None:
        raise ApiError(400, "input is required (a string or a list of strings)", field="input")
    return _embed(req, shapes.embed_answer)


@ollama_bp.post("/api/embeddings")
def embeddings():
    req = parse(shapes.EmbedRequest)
    if req.prompt is None:
        raise ApiError(400, "prompt is required", field="prompt")
    return _embed(req, shapes.legacy_embedding_answer)


def _embed(req: shapes.EmbedRequest, answer) -> Response:
    admitted = admit(JobKind.EMBED, req.model, req.job_fields(), req.options, req.cache, stream=False)
    for kind, value in answer_events(admitted, streamed=False):
        if kind == "end":
            return _with_id(jsonify(answer(value[0])), admitted)
    raise ApiError(500, "no answer")       # the client left: nobody reads this


def _complete(kind: JobKind, req: shapes.GenerateRequest | shapes.ChatRequest) -> Response:
    if req.is_load():
        name = check_model(req.model, kind)
        check_front_options(name, req.options)     # checked as for a job: a load is no way around them
        check_headers()
        return jsonify(shapes.load_answer(kind, name, req.unloads()))
    admitted = admit(kind, req.model, req.job_fields(), req.options, req.cache, stream=req.stream)
    if not req.stream:
        for event, value in answer_events(admitted, streamed=False):
            if event == "end":
                job, rest = value
                return _with_id(jsonify(shapes.final(kind, job, rest)), admitted)
        raise ApiError(500, "no answer")

    def lines() -> Iterator[str]:
        model = admitted.job["model"]
        try:
            for event, value in answer_events(admitted, streamed=True):
                if event == "piece":
                    yield storable.dumps(shapes.chunk(kind, model, value)) + "\n"
                else:
                    job, rest = value
                    yield storable.dumps(shapes.final(kind, job, rest)) + "\n"
        except ApiError as exc:         # the status went out with the first line: the error goes in the stream
            yield json.dumps({"error": exc.payload["error"]}) + "\n"
        except Exception:
            log.exception("streaming job %s failed", admitted.job_id)
            yield json.dumps({"error": "internal error; see the service log"}) + "\n"
    return _with_id(Response(stream_with_context(lines()), mimetype="application/x-ndjson"), admitted)


def _with_id(response: Response, admitted: Admitted) -> Response:
    response.headers[JOB_ID_HEADER] = admitted.job_id
    return response


# --- the runtime's own answers ------------------------------------------------------------------
def _runtime_url() -> str:
    view, _ = views().scheduler()
    # with several nodes `runtime.url` lists them all ("a,b"): ask the first node that answers
    urls = [n["url"] for n in (view or {}).get("nodes") or [] if n.get("ok") and n.get("url")]
    urls = urls or [u for u in (((view or {}).get("runtime") or {}).get("url") or "").split(",") if u]
    if not urls:
        raise ApiError(503, "no scheduler has reported a runtime yet; try again")
    return urls[0].rstrip("/")


def _pass_through(method: str, path: str, body: bytes | None = None) -> Response:
    try:
        answer = requests.request(method, _runtime_url() + path, data=body, timeout=PASS_THROUGH_TIMEOUT_S,
                                  allow_redirects=False,       # a runtime never sends a client elsewhere
                                  headers={"Content-Type": "application/json"} if body is not None else None)
    except requests.RequestException as exc:    # its text names the host: the log's, not the client's
        log.warning("pass-through %s %s: the runtime did not answer (%s)", method, path, exc)
        raise ApiError(502, f"the runtime did not answer {path} ({type(exc).__name__})") from None
    if answer.status_code >= 500 or 300 <= answer.status_code < 400:   # the runtime's failure, not the client's
        raise ApiError(502, f"the runtime failed {path} ({answer.status_code})")
    try:
        storable.check(answer.content or b"null", "the runtime's answer")   # passed on only as valid JSON
    except storable.JsonError:
        raise ApiError(502, f"the runtime answered {path} with something other than JSON ({answer.status_code})") from None
    return Response(answer.content, status=answer.status_code, mimetype="application/json")


@ollama_bp.get("/api/tags")
def tags():
    return _pass_through("GET", "/api/tags")


@ollama_bp.get("/api/ps")
def running_models():
    return _pass_through("GET", "/api/ps")


@ollama_bp.get("/api/version")
def version():
    return _pass_through("GET", "/api/version")


@ollama_bp.post("/api/show")
def show():
    body = load_json(read_body() or b"null", "body")
    name = body.get("model", body.get("name")) if isinstance(body, dict) else None   # `name`: older clients'
    if not isinstance(name, str) or not name.strip():
        raise ApiError(400, 'the body must be {"model": "name"}', field="model")
    return _pass_through("POST", "/api/show", storable.dumps(body).encode())
