"""The OpenAPI 3.1 document of the API, served at `/api/openapi.json` (routes/openapi.py).

routes/openapi.build_spec(config) assembles it from this module (shared components; the jobs, system, admin and
documentation routes) and openapi/front.py (Ollama's and OpenAI's routes). Limits that come from the
configuration (MAX_JOB_TIMEOUT_S, AUTH_REQUIRED, ...) are taken from the Config the app runs with,
so the document describes this deployment. tests/test_openapi.py fails when a route the app
registers is missing here, and runs schemathesis against a live service to keep the rest honest.

To document a new route: add its path item to a `*_paths()` function (or a new one listed in
routes/openapi.PATH_GROUPS); error answers are `errors(400, 404, ...)` (`errors(..., openai=True)` under /v1/).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from config import MAX_WAIT_S, Config
from front_door import ollama_options
from front_door.job_shapes import SubmitRequest
from front_door.ollama_shapes import MAX_MODEL_NAME
from jobs.model import JobKind, JobStatus, Priority
from scheduling.model_settings import RUNNER_OPTIONS
from store.storable import INT_MAX, INT_MIN, MAX_DEPTH

Schema = dict[str, Any]
JSON = "application/json"

ERROR_MEANINGS = {
    400: "Bad input: malformed JSON, a wrong type or a missing field (named in `field`), a bad query argument.",
    401: "No API key, or an unknown or revoked one, where AUTH_REQUIRED=true.",
    403: "The API key may not do this (a priority above its maximum; an admin route without an admin key).",
    404: "Not found: an unknown job, or a model that is unknown or not installed (with `suggestions`).",
    409: "Conflict with the current state (a finished job; the last runtime node).",
    413: "Request body over MAX_PROMPT_BYTES, refused before it is read.",
    422: "The model can never fit the memory budget (with `fitting_models`), or an Idempotency-Key used before with "
         "another body.",
    429: "Too many jobs waiting (QUEUE_MAX_SIZE, or the key's --max-waiting), or faster than the key's --rate.",
    500: "The job ended without an answer (failed or cancelled); poll /api/job/{id} for why. Not retried by clients "
         "(`x-should-retry: false`).",
    502: "The runtime did not answer this pass-through request.",
    503: "The store did not answer within API_STORE_WAIT_S (nothing was stored, retry), MAX_WAITERS requests already "
         "wait in this process, or no scheduler has reported a runtime yet.",
}
RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before trying again.", "schema": {"type": "string"}}}


def security_schemes() -> dict[str, Schema]:
    return {"bearerAuth": {"type": "http", "scheme": "bearer"},
            "apiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}


def ref(name: str, kind: str = "schemas") -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def json_body(schema: Schema, description: str = "", headers: dict[str, Any] | None = None) -> Schema:
    answer: Schema = {"description": description or "OK", "content": {JSON: {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def errors(*codes: int, openai: bool = False) -> dict[str, Schema]:
    """Error answers by status: `{"error": "..."}` (OpenAI's shape under /v1/)."""
    return {str(code): ref(f"{'OpenAI' if openai else 'Api'}{code}", "responses") for code in codes}


def error_responses() -> dict[str, Schema]:
    out: dict[str, Schema] = {}
    for code, meaning in ERROR_MEANINGS.items():
        headers = dict(RETRY_AFTER) if code in (429, 503) else {}
        if code == 401:
            headers["WWW-Authenticate"] = {"schema": {"type": "string"}}
        if code == 500:
            headers["x-should-retry"] = {"schema": {"type": "string"}}
        out[f"Api{code}"] = json_body(ref("Error"), meaning, headers)
        out[f"OpenAI{code}"] = json_body(ref("OpenAIError"), meaning, headers)
    return out


# --- request fields -------------------------------------------------------------------------------
# Keys of metadata and options are stored as field names (MongoDB): none may start with `$` or hold `.` or NUL.
STORABLE_KEY = {"type": "string", "pattern": r"^([^$.\x00][^.\x00]*)?$"}
MODEL_NAME = {"type": "string", "minLength": 1, "maxLength": MAX_MODEL_NAME, "pattern": r"^[!-~]+$",
              "description": "Ollama's naming (`all-minilm` means `all-minilm:latest`); no whitespace. A model "
                             "that cannot serve the request's kind (an embedding model asked to generate) gets 400."}
STRING_LIST = {"type": "array", "items": {"type": "string"}}
OBJECT_LIST = {"type": "array", "items": {"type": "object"}}


def storable_extras(schema: Schema) -> Schema:
    """An object whose further fields are kept as they are: their names storable (messages are
    stored as documents), their values storable too."""
    return {**schema, "propertyNames": STORABLE_KEY, "additionalProperties": ref("StorableValue")}


def storable_object(description: str) -> Schema:
    return {"type": "object", "propertyNames": STORABLE_KEY, "additionalProperties": ref("StorableValue"),
            "description": description}


INT64 = {"type": "integer", "minimum": INT_MIN, "maximum": INT_MAX}


def options_schema(description: str, num_predict_max: int = ollama_options.INT32_MAX) -> Schema:
    """Ollama's options: those with a known meaning with their type and range (ollama_options.RULES),
    any other as a storable value."""
    kinds = {"int": "integer", "float": "number", "bool": "boolean"}
    properties: Schema = {}
    for name, rule in ollama_options.RULES.items():
        if name in RUNNER_OPTIONS:              # fixed per model: described, not offered
            continue
        if rule.kind == "stop":
            properties[name] = nullable({"type": "array", "maxItems": ollama_options.MAX_STOP_SEQUENCES,
                                         "items": {"type": "string", "maxLength": ollama_options.MAX_STOP_CHARS}})
            continue
        schema: Schema = {"type": kinds[rule.kind]}
        if rule.low is not None:
            schema["minimum"] = rule.low
        if rule.high is not None:
            schema["maximum"] = num_predict_max if name == "num_predict" else rule.high
        if rule.special:
            schema = {"anyOf": [schema, {"enum": list(rule.special)}]}
        properties[name] = nullable(schema)
    return {**storable_object(description), "properties": properties}


def storable_everywhere(node: Any) -> Any:
    """What the API takes, said in the document: every integer fits in 64 bits and every free-form
    object or array holds storable values (strict_json refuses the rest with 400). Applied to the
    whole document once it is built."""
    if isinstance(node, list):
        return [storable_everywhere(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: storable_everywhere(value) for key, value in node.items()}
    kinds = out.get("type")
    if not isinstance(kinds, (str, list)):      # not a schema (a `properties` map with a field named `type`)
        return out
    kinds = set(kinds) if isinstance(kinds, list) else {kinds}
    if "integer" in kinds:
        out.setdefault("minimum", INT_MIN)
        out.setdefault("maximum", INT_MAX)
    if "object" in kinds and out.get("additionalProperties", True) in (True, {}):
        out["additionalProperties"] = ref("JsonValue")
    if "array" in kinds and out.get("items", True) in (True, {}):
        out["items"] = ref("JsonValue")
    return out


def from_model(model: type[BaseModel]) -> tuple[Schema, dict[str, Schema]]:
    """`model`'s JSON schema as pydantic writes it (without titles), and the schemas it refers to,
    for components: the request shapes are defined once, by the models the API parses with."""
    schema = _untitled(model.model_json_schema(ref_template="#/components/schemas/{model}"))
    return schema, schema.pop("$defs", {})


def _untitled(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _untitled(v) for k, v in node.items() if not (k == "title" and isinstance(v, str))}
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node


def _message_components() -> dict[str, Schema]:
    """Message (and the enums), as front_door/job_shapes.py defines them; a message's fields are
    stored as a document, so their names (tool calls' too) must be storable."""
    components = from_model(SubmitRequest)[1]
    message = storable_extras(components["Message"])
    message["properties"]["tool_calls"] = nullable({"type": "array", "items": storable_object("A tool call.")})
    return {**components, "Message": message}


def _submit_variant(kind: JobKind, config: Config) -> Schema:
    generated, _ = from_model(SubmitRequest)
    properties: Schema = {
        **generated["properties"],
        # what the model's types cannot say: the name's characters, the kind of this variant, the
        # options' ranges, storable metadata keys, this deployment's longest timeout
        "model": MODEL_NAME,
        "kind": {"type": "string", "enum": [kind.value], "default": JobKind.GENERATE.value},
        "priority": {"type": "string", "enum": [p.value for p in Priority], "default": Priority.NORMAL.value},
        "options": options_schema(
            "Ollama's sampling options (`num_predict`, `temperature`, `seed`, `stop`, ...). Runner options that "
            "would reload the model (`num_ctx`, `num_gpu`, `num_batch`, ...) get 400 unless equal to the model's "
            "configured value."),
        "metadata": storable_object("Free-form tags kept with the job and its ledger entry."),
        "timeout_s": nullable({"type": "number", "exclusiveMinimum": 0, "maximum": config.MAX_JOB_TIMEOUT_S,
                               "description": "Longest the job may run once it has a slot (default JOB_TIMEOUT_S)."}),
    }
    required = ["model"]
    if kind is JobKind.GENERATE:
        properties["prompt"] = {"type": "string"}
        required.append("prompt")
    elif kind is JobKind.CHAT:
        properties["messages"] = {"type": "array", "items": ref("Message"), "minItems": 1}
        required += ["kind", "messages"]
    else:
        required.append("kind")
    variant: Schema = {"title": f"{kind.value} job", "type": "object", "properties": properties, "required": required}
    if kind is JobKind.EMBED:
        variant["anyOf"] = [{"required": ["input"], "properties": {"input": {"not": {"type": "null"}}}},
                            {"required": ["prompt"], "properties": {"prompt": {"type": "string"}}}]
    return variant


def schemas(config: Config) -> dict[str, Schema]:
    job_states = [s.value for s in JobStatus]
    timestamp = nullable({"type": "string", "format": "date-time"})
    job: Schema = {
        "type": "object",
        "required": ["job_id", "status", "model", "kind", "priority", "result", "error", "submitted_at",
                     "started_at", "completed_at", "metrics", "metadata", "attempts", "tenant"],
        "properties": {
            "job_id": {"type": "string"}, "status": {"type": "string", "enum": job_states},
            "model": {"type": "string"}, "kind": {"type": "string", "enum": [k.value for k in JobKind]},
            "priority": {"type": "string", "enum": [p.value for p in Priority]},
            "result": nullable({"type": "object"}), "error": nullable({"type": "string"}),
            "submitted_at": timestamp, "started_at": timestamp, "completed_at": timestamp,
            "metrics": {"type": "object", "description": "Time, tokens and resources: see docs/api.md, the ledger."},
            "metadata": {"type": "object"}, "attempts": {"type": "integer", "minimum": 0},
            "tenant": {"type": "string"}, "idempotent_replay": {"type": "boolean"},
            "preempted": {"type": "integer", "minimum": 0,
                          "description": "Times it was stopped for more urgent work (it resumed each time)."},
            "position": nullable({"type": "integer", "minimum": 0, "description": "A waiting job: jobs of its "
                                  "model that go before it in the current order (null: not estimated yet)."}),
            "eta_s": nullable({"type": "number", "minimum": 0, "description": "A waiting job: seconds until it "
                               "should start, from its model's measured time per job and slots (null: not known)."}),
        },
    }
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}, "field": {"type": "string"},
                                 "details": {"type": "array", "items": {"type": "object"}}}},
        "OpenAIError": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object", "required": ["message", "type"],
            "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                           "param": nullable({"type": "string"}), "code": nullable({"type": "string"})}}}},
        "JsonValue": {"description": "Any JSON value the store can keep: finite numbers, 64-bit integers, at most "
                                     f"{MAX_DEPTH} levels deep.",
                      "anyOf": [{"type": ["string", "boolean", "null"]}, INT64, {"type": "number"},
                                {"type": "array", "items": ref("JsonValue")},
                                {"type": "object", "additionalProperties": ref("JsonValue")}]},
        "StorableValue": {"anyOf": [{"type": ["string", "boolean", "null"]}, INT64, {"type": "number"},
                                    {"type": "array", "items": ref("StorableValue")},
                                    storable_object("")]},
        **_message_components(),
        "SubmitRequest": {"anyOf": [_submit_variant(kind, config) for kind in JobKind]},
        "Job": job,
        "JobAccepted": {"type": "object", "required": ["job_id", "status"], "properties": {
            "job_id": {"type": "string"}, "status": {"type": "string", "enum": job_states},
            "position": {"type": "integer", "minimum": 0, "description": "Waiting jobs ahead of it."},
            "idempotent_replay": {"type": "boolean"}}},
        "Page": {"type": "object", "required": ["count", "next_cursor"], "properties": {
            "count": {"type": "integer", "minimum": 0}, "next_cursor": nullable({"type": "string"})}},
    }


# --- paths ------------------------------------------------------------------------------------------
def query(name: str, schema: Schema, description: str = "") -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def header(name: str, schema: Schema, description: str = "") -> Schema:
    return {"name": name, "in": "header", "required": False, "schema": schema, "description": description}


WAIT = query("wait", {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
             "Seconds to wait for the job to finish before answering.")
LIMIT = query("limit", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100})
CURSOR = query("cursor", {"type": "string", "format": "page-cursor"},
               "Where the page starts: a page's `next_cursor`; any other value gets 400.")
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}


def op(summary: str, responses: dict[str, Schema], tag: str, **extra: Any) -> Schema:
    return {"summary": summary, "tags": [tag], "responses": responses, **extra}


def page_of(key: str, items: Schema) -> Schema:
    return {"allOf": [ref("Page"), {"type": "object", "required": [key],
                                    "properties": {key: {"type": "array", "items": items}}}]}


def jobs_paths(config: Config) -> dict[str, Schema]:
    location = {"Location": {"description": "/api/job/{job_id}", "required": True, "schema": {"type": "string"}}}
    submit = op("Submit a job", {
        "200": json_body(ref("Job"), "Finished within `?wait=`, or answered from the result cache.", location),
        "202": json_body(ref("JobAccepted"), "Accepted and stored; poll Location.", location),
        **errors(400, 401, 403, 404, 413, 422, 429, 503)}, "jobs",
        parameters=[WAIT,
                    header("Idempotency-Key", {"type": "string", "minLength": 1, "maxLength": 200,
                                               "pattern": r"^\S(.*\S)?$"},
                           "A retry with the same key and body gets the same job (422 with another body)."),
                    header("X-Cache", {"type": "string"},
                           "`true`, `1` or `yes`: answer from the result cache when possible.")],
        requestBody={"required": True, "content": {JSON: {"schema": ref("SubmitRequest"), "examples": {
            "generate": {"value": {"model": "qwen2.5:0.5b", "prompt": "Why is the sky blue?", "priority": "high",
                                   "options": {"num_predict": 16}, "metadata": {"experiment": "e1"}}},
            "chat": {"value": {"model": "qwen2.5:0.5b", "kind": "chat",
                               "messages": [{"role": "user", "content": "hi"}]}},
            "embed": {"value": {"model": "all-minilm", "kind": "embed", "input": ["a", "b"]}}}}}})
    job = op("A job, its result and metrics", {"200": json_body(ref("Job")), **errors(400, 401, 404, 503)}, "jobs",
             parameters=[JOB_ID, WAIT, query("include", {"type": "string"},
                                              "`request` adds the prompt and options.")])
    cancel = op("Cancel a waiting or running job", {
        "200": json_body({"type": "object", "required": ["job_id", "status", "previous"], "properties": {
            "job_id": {"type": "string"}, "status": {"const": "cancelled"}, "previous": {"type": "string"}}}),
        **errors(401, 404, 409, 503)}, "jobs", parameters=[JOB_ID])
    listing = op("Jobs, newest first, a page at a time", {
        "200": json_body(page_of("jobs", ref("Job"))), **errors(400, 401, 503)}, "jobs",
        parameters=[query("status", {"type": "string", "enum": [s.value for s in JobStatus] + [""]},
                          "Only jobs in this status (empty: any)."),
                    query("model", {"type": "string"}), LIMIT, CURSOR])
    ledger = op("The per-job ledger, newest first, a page at a time", {
        "200": json_body(page_of("entries", {"type": "object", "required": ["job_id", "model", "status"]})),
        **errors(400, 401, 503)}, "jobs",
        parameters=[query("model", {"type": "string"}), query("job_id", {"type": "string"}), LIMIT, CURSOR])
    return {"/api/submit": {"post": submit}, "/api/job/{job_id}": {"get": job},
            "/api/job/{job_id}/cancel": {"post": cancel}, "/api/jobs": {"get": listing},
            "/api/ledger": {"get": ledger}}


def system_paths(config: Config) -> dict[str, Schema]:
    stats_keys = ["running", "queue", "resources", "scheduler", "errors", "jobs", "runtime", "nodes", "api", "cache"]
    stats = {"type": "object", "required": stats_keys,
             "properties": {**{k: {"type": "object"} for k in stats_keys},
                            "running": {"type": "integer", "minimum": 0}, "nodes": OBJECT_LIST,
                            "tenants": {"type": "object", "description": "Admin keys only."}}}
    health_runtime = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}},
                      "description": "`ok` only; with an admin's key also the runtime's `kind` and `error`. "
                                     "No URL or host, for anyone."}
    health_ok = {"type": "object", "required": ["status", "runtime"], "properties": {
        "status": {"const": "ok"}, "runtime": health_runtime,
        "scheduler": nullable({"type": "string", "description": "The leader: an admin's key only."})}}
    health_bad = {"type": "object", "required": ["status", "reason"], "properties": {
        "status": {"type": "string", "enum": ["starting", "unhealthy"]}, "reason": {"type": "string"},
        "runtime": health_runtime}}
    model_row = {"type": "object", "required": ["name", "need_bytes", "capabilities", "loaded", "fits"],
                 "properties": {"name": {"type": "string"}, "need_bytes": {"type": "integer"},
                                "capabilities": STRING_LIST, "loaded": {"type": "boolean"},
                                "fits": {"type": "boolean"}, "on_runtime": nullable({"type": "boolean"})}}
    return {
        "/api/stats": {"get": op("Queue, loaded models, memory and counters (node and runtime URLs, runtime errors, "
                                 "GPU UUIDs, host readings and the leader for admins only: anyone else sees each "
                                 "node's `name` where its URL was)", {
            "200": json_body(stats), **errors(401, 503)}, "system")},
        "/api/ping": {"get": op("Liveness: answers while the process serves HTTP", {
            "200": json_body({"type": "object", "required": ["pong"], "properties": {"pong": {"const": True}}})},
            "system", security=[])},
        "/api/health": {"get": op("Readiness: a scheduler reports and its runtime answers", {
            "200": json_body(health_ok), "503": json_body(health_bad, "Not ready: starting, a stale scheduler, or "
                                                                      "a runtime that does not answer.")},
            "system", security=[])},
        "/api/models": {"get": op("The models the registry knows, their memory need, loaded or not", {
            "200": json_body({"type": "object", "required": ["models", "capacity_bytes"], "properties": {
                "models": {"type": "array", "items": model_row},
                "capacity_bytes": nullable({"type": "integer"})}}), **errors(401, 503)}, "system")},
    }


def admin_paths(config: Config) -> dict[str, Schema]:
    positive_number = r"0*([1-9][0-9]*(\.[0-9]*)?|\.[0-9]*[1-9][0-9]*)"
    node_url = {"type": "string", "maxLength": 2048,
                "pattern": rf"^https?://[A-Za-z0-9_.\-\[\]:]+/?(#vram={positive_number})?$",
                "description": "http(s) base URL, optionally `#vram=GB` after it: a host (a name, or an IP address "
                               "written plainly) and a port from 1 to 65535; no credentials, path, query or control "
                               "characters. Link-local and cloud metadata addresses are refused unless "
                               "NODE_ALLOW_LINK_LOCAL is set. A refused URL is a 400 with `field: url`.",
                "examples": ["http://gpu3:11434#vram=24"]}
    body = {"required": False, "content": {JSON: {"schema": {
        "type": "object", "required": ["url"], "properties": {"url": node_url}}}}}
    change = json_body({"type": "object", "required": ["url", "status"], "properties": {
        "url": {"type": "string"}, "status": {"type": "string", "enum": ["adding", "removing"]}}},
        "Written to the store; the leader applies it within a second.")
    # OpenAPI cannot say "the body or the query": each is optional here, and a request with neither gets 400
    url_arg = query("url", node_url, "The node, when there is no body (one of the two is required, else 400).")
    return {"/api/admin/nodes": {
        "get": op("The runtime nodes and the changes asked for (admin keys only)", {
            "200": json_body({"type": "object", "required": ["nodes", "changes"], "properties": {
                "nodes": OBJECT_LIST, "changes": {"type": "object", "required": ["added", "removed"], "properties": {
                    "added": STRING_LIST, "removed": STRING_LIST}}}}),
            **errors(401, 403, 503)}, "admin"),
        "post": op("Add a runtime node (admin keys only)", {"202": change, **errors(400, 401, 403, 413, 503)},
                   "admin", parameters=[url_arg], requestBody=body),
        "delete": op("Remove a runtime node (admin keys only; not the last one)", {
            "202": change, **errors(400, 401, 403, 409, 413, 503)}, "admin", parameters=[url_arg],
            requestBody=body),
    }}


def docs_paths(config: Config) -> dict[str, Schema]:
    return {
        "/api/openapi.json": {"get": op("This document", {
            "200": json_body({"type": "object", "required": ["openapi", "paths"]}), **errors(401)}, "docs")},
        "/static/{filename}": {"get": op("Static files (Flask's static folder)", {
            "200": {"description": "The file", "content": {"*/*": {"schema": {}}}}, **errors(401, 404)}, "docs",
            parameters=[{"name": "filename", "in": "path", "required": True, "schema": {"type": "string"}}])},
    }
