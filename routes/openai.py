"""OpenAI's API on the manager's port (`/v1/...`), translated to jobs as Ollama's own OpenAI layer
does: chat completions and completions, streamed as server-sent events ending in `data: [DONE]`
(with a usage chunk when `stream_options.include_usage`), embeddings, and the models the runtime
has. Errors come in OpenAI's shape (api.py formats every error under `/v1/` so).
"""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, jsonify, stream_with_context

from front_door import openai_shapes as shapes
from jobs.model import JobKind
from routes.common import ApiError
from routes.front import JOB_ID_HEADER, admit, answer_events, parse
from routes.system import views
from store import storable
from telemetry.logs import get_logger

openai_bp = Blueprint("openai", __name__)
log = get_logger("API")


@openai_bp.post("/v1/chat/completions")
def chat_completions():
    req = parse(shapes.ChatCompletionRequest)
    try:
        fields = req.job_fields()
    except (ValueError, TypeError, AttributeError) as exc:
        raise ApiError(400, f"messages: {exc}" if not isinstance(exc, ValueError) else str(exc),
                       field="messages") from None
    return _complete(JobKind.CHAT, req, fields, f"chatcmpl-{uuid.uuid4().hex[:24]}")


@openai_bp.post("/v1/completions")
def completions():
    req = parse(shapes.CompletionRequest)
    return _complete(JobKind.GENERATE, req, req.job_fields(), f"cmpl-{uuid.uuid4().hex[:24]}")


@openai_bp.post("/v1/embeddings")
def embeddings():
    req = parse(shapes.EmbeddingRequest)
    admitted = admit(JobKind.EMBED, req.model, req.job_fields(), {}, req.cache, stream=False, user=req.user)
    for event, value in answer_events(admitted, streamed=False):
        if event == "end":
            response = jsonify(shapes.embeddings(value[0], req.encoding_format))
            response.headers[JOB_ID_HEADER] = admitted.job_id
            return response
    raise ApiError(500, "no answer")


def _complete(kind: JobKind, req: Any, fields: dict[str, Any], answer_id: str) -> Response:
    admitted = admit(kind, req.model, fields, req.options(), req.cache, stream=req.stream,
                     answer_limits=(req.max_tokens, req.max_completion_tokens), user=req.user)
    chat = kind is JobKind.CHAT
    if not req.stream:
        for event, value in answer_events(admitted, streamed=False):
            if event == "end":
                job = value[0]
                response = jsonify(shapes.chat_completion(answer_id, job) if chat else shapes.completion(answer_id, job))
                response.headers[JOB_ID_HEADER] = admitted.job_id
                return response
        raise ApiError(500, "no answer")

    def events() -> Iterator[str]:
        model = admitted.job["model"]
        first, calls_sent = True, False
        try:
            for event, value in answer_events(admitted, streamed=True):
                piece = value if event == "piece" else value[1]
                if piece.get("text") or piece.get("thinking") or piece.get("tool_calls") or (chat and first):
                    calls_sent = calls_sent or bool(piece.get("tool_calls"))
                    yield _sse(shapes.chat_chunk(answer_id, model, piece, first=first) if chat
                               else shapes.completion_chunk(answer_id, model, piece.get("text") or ""))
                    first = False
                if event == "end":
                    job = value[0]
                    finish = shapes.finish_reason(job, calls_sent)
                    yield _sse(shapes.chat_chunk(answer_id, model, None, finish) if chat
                               else shapes.completion_chunk(answer_id, model, "", finish))
                    if req.include_usage:
                        yield _sse(shapes.usage_chunk(answer_id, "chat.completion.chunk" if chat else "text_completion",
                                                      job))
        except ApiError as exc:
            yield _sse(shapes.error_body(exc.http_status, exc.payload["error"]))
        except Exception:
            log.exception("streaming job %s failed", admitted.job_id)
            yield _sse(shapes.error_body(500, "internal error; see the service log"))
        yield "data: [DONE]\n\n"
    response = Response(stream_with_context(events()), mimetype="text/event-stream")
    response.headers[JOB_ID_HEADER] = admitted.job_id
    response.headers["Cache-Control"] = "no-cache"
    return response


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {storable.dumps(payload)}\n\n"


@openai_bp.get("/v1/models")
def list_models():
    return jsonify({"object": "list", "data": [shapes.model_entry(name) for name in _installed()]})


@openai_bp.get("/v1/models/<path:name>")
def get_model(name: str):
    registry, _ = views().registry()
    found = registry.resolve(name) if registry is not None else None
    if found is None or found not in _installed():
        raise ApiError(404, f"model '{name}' not found", field="model")
    return jsonify(shapes.model_entry(found))


def _installed() -> list[str]:
    """The models on the runtime, as the scheduler last published them."""
    registry, _ = views().registry()
    if registry is None:
        return []
    return [row["name"] for row in registry.describe() if row.get("on_runtime")]
