"""The OpenAPI document's front doors: Ollama's routes (`/api/generate`, `/api/chat`, ...) and
OpenAI's (`/v1/...`), as routes/ollama.py and routes/openai.py serve them (see openapi/spec.py)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from config import Config
from front_door.ollama_options import INT32_MAX
from front_door.ollama_shapes import ChatRequest, EmbedRequest, GenerateRequest
from front_door.openai_shapes import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from jobs.model import Priority
from openapi.spec import (
    JSON,
    MODEL_NAME,
    OBJECT_LIST,
    STORABLE_KEY,
    STRING_LIST,
    Schema,
    errors,
    from_model,
    header,
    json_body,
    nullable,
    op,
    options_schema,
    ref,
    storable_extras,
    storable_object,
)

NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
JOB_ID_HEADER = {"X-Job-Id": {"description": "The job that answered (not on load answers).",
                              "schema": {"type": "string"}}}
FRONT_DOOR_HEADERS = [
    header("X-Priority", {"type": "string", "enum": [p.value for p in Priority]}, "The job's priority."),
    {"name": "X-Job-Metadata", "in": "header", "required": False, "description": "The job's metadata, a JSON object.",
     "content": {JSON: {"schema": {"type": "object", "propertyNames": STORABLE_KEY,
                                   "additionalProperties": ref("StorableValue")}}}},
    header("X-Cache", {"type": "string"}, "`true`, `1` or `yes`: answer from the result cache when possible."),
]
JOB_ERRORS = (400, 401, 403, 404, 413, 422, 429, 500, 503)
NUMBER_LIST = {"type": "array", "items": {"type": "number"}}
# pydantic writes an optional field's bound beside its `anyOf`, where it binds nothing: said again here
DIMENSIONS = nullable({"type": "integer", "minimum": 1})


def _body(schema: Schema, example: dict[str, Any]) -> Schema:
    return {"required": True, "content": {JSON: {"schema": schema, "examples": {"example": {"value": example}}}}}


def generated(shape: type[BaseModel], overrides: Schema, required: tuple[str, ...] = ()) -> Schema:
    """A request's schema from the pydantic model its route parses with (front_door/), the models
    it refers to written in place, and `overrides` for what the model's types cannot say (a
    name's characters, option ranges, this deployment's limits, a message's shape)."""
    schema, defs = from_model(shape)

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if set(node) == {"$ref"}:
                return inline(defs[node["$ref"].rsplit("/", 1)[-1]])
            return {k: inline(v) for k, v in node.items()}
        if isinstance(node, list):
            return [inline(v) for v in node]
        return node

    properties = {**inline(schema["properties"]), **overrides}
    return {"type": "object", "required": sorted({*schema.get("required", []), *required}), "properties": properties}


def _ollama_request(shape: type[BaseModel], overrides: Schema, required: tuple[str, ...] = (),
                    num_predict_max: int = INT32_MAX) -> Schema:
    return generated(shape, {"model": MODEL_NAME, "options": nullable(options_schema(
        "Sampling options, each with a known meaning checked for type and range. Runner options (`num_ctx`, "
        "...) are dropped: the model runs with its configured ones; a `num_ctx` above the model's configured "
        "context gets 400, and so does a `num_predict` above it. A request the runtime refuses (a 4xx) gets 400 "
        "with its message.", num_predict_max)),
        "keep_alive": {"description": "Ignored: the manager decides how long models stay."}, **overrides}, required)


def ollama_paths(config: Config) -> dict[str, Schema]:
    def _request(shape: type[BaseModel], overrides: Schema, required: tuple[str, ...] = ()) -> Schema:
        return _ollama_request(shape, overrides, required, longest_context(config))

    stream = {"type": "boolean", "default": True, "description": "false: one JSON answer; true: NDJSON pieces."}
    generate = _request(GenerateRequest, {"stream": stream})
    message = storable_extras({"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string", "enum": ["system", "user", "assistant", "tool"]},
        "content": nullable({"type": "string"})}})
    chat = _request(ChatRequest, {"messages": {"type": "array", "items": message}, "stream": stream})
    embed = _request(EmbedRequest, {"input": {"anyOf": [{"type": "string"}, STRING_LIST]}, "dimensions": DIMENSIONS},
                     ("input",))
    embeddings = _request(EmbedRequest, {"prompt": {"type": "string"}, "dimensions": DIMENSIONS}, ("prompt",))
    answer = {"type": "object", "required": ["model", "created_at", "done"], "properties": {
        "model": {"type": "string"}, "created_at": {"type": "string"}, "done": {"type": "boolean"},
        "done_reason": {"type": "string"}, "response": {"type": "string"}, "message": {"type": "object"},
        "total_duration": {"type": "integer"}, "eval_count": {"type": "integer"}}}
    answered = {"description": "The answer: one JSON object (`stream: false`, or no prompt: a load), else NDJSON "
                               "pieces ending with `done: true` (or an `error` line when the job fails meanwhile).",
                "headers": JOB_ID_HEADER,
                "content": {JSON: {"schema": answer}, NDJSON: {"schema": {"anyOf": [answer, ref("Error")]}}}}
    runtime_answer = json_body({"type": "object"}, "The runtime's own answer, passed through.")

    def job_route(summary: str, request: Schema, example: dict[str, Any], ok: Schema) -> Schema:
        return {"post": op(summary, {"200": ok, **errors(*JOB_ERRORS)}, "ollama", parameters=FRONT_DOOR_HEADERS,
                           requestBody=_body(request, example))}

    def pass_through(method: str, summary: str, *codes: int, **extra: Any) -> Schema:
        return {method: op(summary, {"200": runtime_answer, **errors(401, 502, 503, *codes)}, "ollama", **extra)}

    return {
        "/api/generate": job_route("Ollama's generate, as a job", generate,
                                   {"model": "qwen2.5:0.5b", "prompt": "Why is the sky blue?", "stream": False,
                                    "options": {"num_predict": 16}}, answered),
        "/api/chat": job_route("Ollama's chat, as a job", chat,
                               {"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "hi"}],
                                "stream": False, "options": {"num_predict": 16}}, answered),
        "/api/embed": job_route("Ollama's embed, as a job", embed, {"model": "all-minilm", "input": ["a", "b"]},
                                json_body({"type": "object", "required": ["model", "embeddings"], "properties": {
                                    "model": {"type": "string"}, "embeddings": {"type": "array", "items": NUMBER_LIST},
                                    "total_duration": {"type": "integer"}}}, headers=JOB_ID_HEADER)),
        "/api/embeddings": job_route("Ollama's older embeddings route, as a job", embeddings,
                                     {"model": "all-minilm", "prompt": "a"},
                                     json_body({"type": "object", "required": ["embedding"], "properties": {
                                         "embedding": NUMBER_LIST}}, headers=JOB_ID_HEADER)),
        "/api/tags": pass_through("get", "The runtime's installed models"),
        "/api/ps": pass_through("get", "The runtime's loaded models"),
        "/api/version": pass_through("get", "The runtime's version"),
        "/api/show": pass_through("post", "The runtime's description of a model", 400, 404, 413, requestBody={
            "required": True, "content": {JSON: {"schema": {"type": "object", "required": ["model"], "properties": {
                "model": MODEL_NAME}}}}}),
    }


def longest_context(config: Config) -> int:
    """The largest answer a front-door request may ask for: each model's own context (NUM_CTX, MODEL_NUM_CTX)."""
    return max([config.NUM_CTX, *config.MODEL_NUM_CTX.values()])


def openai_paths(config: Config) -> dict[str, Schema]:
    answer_tokens = {"type": "integer", "minimum": 1, "maximum": longest_context(config),
                     "description": "At most the model's context length (NUM_CTX / MODEL_NUM_CTX), else 400."}
    part = {"anyOf": [
        {"type": "object", "required": ["type"], "properties": {"type": {"const": "text"}, "text": {"type": "string"}}},
        {"type": "object", "required": ["type", "image_url"], "properties": {
            "type": {"const": "image_url"}, "image_url": {"anyOf": [
                {"type": "string", "pattern": "^data:[^,]*,"},
                {"type": "object", "required": ["url"], "properties": {
                    "url": {"type": "string", "pattern": "^data:[^,]*,"}}}]}}}]}
    arguments = {"anyOf": [{"type": "string", "format": "json-object", "contentMediaType": JSON,
                            "description": "A JSON object as text, as OpenAI sends it."},
                           storable_object("The arguments as an object."), {"type": "null"}]}
    # other fields of a tool call are dropped in translation: only the arguments are stored
    tool_call = {"type": "object", "properties": {"function": nullable({
        "type": "object", "properties": {"name": {"type": "string"}, "arguments": arguments}})}}
    message = {"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": nullable({"anyOf": [{"type": "string"}, {"type": "array", "items": part}]}),
        "tool_calls": nullable({"type": "array", "items": tool_call})}}
    limits = {"model": MODEL_NAME, "max_tokens": nullable(answer_tokens), "max_completion_tokens": nullable(answer_tokens)}
    chat = generated(ChatCompletionRequest, {"messages": {"type": "array", "items": message, "minItems": 1}, **limits})
    completion = generated(CompletionRequest, {"prompt": {"anyOf": [{"type": "string"},
                                                                    {**STRING_LIST, "minItems": 1, "maxItems": 1}]},
                                               **limits})
    embedding = generated(EmbeddingRequest, {"model": MODEL_NAME, "dimensions": DIMENSIONS})
    completed = {"type": "object", "required": ["id", "object", "created", "model", "choices"], "properties": {
        "id": {"type": "string"}, "object": {"type": "string"}, "created": {"type": "integer"},
        "model": {"type": "string"}, "choices": OBJECT_LIST, "usage": {"type": "object"}}}
    answered = {"description": "One JSON answer, or (`stream: true`) server-sent events ending in `data: [DONE]`.",
                "headers": JOB_ID_HEADER,
                "content": {JSON: {"schema": completed}, EVENT_STREAM: {"schema": {
                    "type": "object", "required": ["data"], "properties": {"data": {
                        "type": "string", "description": "A chunk (JSON), an error (JSON), or `[DONE]`."}}}}}}
    model_entry = {"type": "object", "required": ["id", "object", "created", "owned_by"], "properties": {
        "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
        "owned_by": {"type": "string"}}}

    def job_route(summary: str, request: Schema, example: dict[str, Any], ok: Schema) -> Schema:
        return {"post": op(summary, {"200": ok, **errors(*JOB_ERRORS, openai=True)}, "openai",
                           parameters=FRONT_DOOR_HEADERS, requestBody=_body(request, example))}

    return {
        "/v1/chat/completions": job_route("OpenAI's chat completions, as a job", chat, {
            "model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 16}, answered),
        "/v1/completions": job_route("OpenAI's completions, as a job", completion,
                                     {"model": "qwen2.5:0.5b", "prompt": "Once upon", "max_tokens": 16}, answered),
        "/v1/embeddings": job_route("OpenAI's embeddings, as a job", embedding, {"model": "all-minilm", "input": "a"},
                                    json_body({"type": "object", "required": ["object", "data", "model"],
                                               "properties": {"object": {"const": "list"}, "data": OBJECT_LIST,
                                                              "model": {"type": "string"}}}, headers=JOB_ID_HEADER)),
        "/v1/models": {"get": op("The models on the runtime", {
            "200": json_body({"type": "object", "required": ["object", "data"], "properties": {
                "object": {"const": "list"}, "data": {"type": "array", "items": model_entry}}}),
            **errors(401, 503, openai=True)}, "openai")},
        "/v1/models/{name}": {"get": op("One model on the runtime", {
            "200": json_body(model_entry), **errors(401, 404, 503, openai=True)}, "openai",
            parameters=[{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}])},
    }


def front_door_paths(config: Config) -> dict[str, Schema]:
    return {**ollama_paths(config), **openai_paths(config)}
