"""The OpenAPI document's other routes: the dashboard (routes/dashboard.py), `/metrics` (routes/metrics.py) and
the comparison experiments' tasks and results (routes/experiments.py); see openapi/spec.py."""
from __future__ import annotations

from config import Config
from openapi.spec import (
    JSON,
    OBJECT_LIST,
    STORABLE_KEY,
    STRING_LIST,
    Schema,
    errors,
    json_body,
    nullable,
    op,
    query,
    ref,
)

HTML = "text/html"
EXPERIMENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$"      # api_experiments.EXPERIMENT_NAME


def _storable(schema: Schema) -> Schema:
    """An object that keeps any further fields it is given (stored as they are)."""
    return {**schema, "propertyNames": STORABLE_KEY, "additionalProperties": ref("StorableValue")}


def _file(summary: str, tag: str, *codes: int) -> Schema:
    return op(summary, {"200": {"description": "The file", "content": {"*/*": {"schema": {}}}}, **errors(*codes)},
              tag, security=[], parameters=[{"name": "filename", "in": "path", "required": True,
                                             "schema": {"type": "string"}}])


def dashboard_paths(config: Config) -> dict[str, Schema]:
    page = op("The dashboard page (no data in it: it asks for a key where AUTH_REQUIRED)", {
        "200": {"description": "The page", "content": {HTML: {"schema": {"type": "string"}}}}}, "dashboard",
        security=[])
    count = {"type": "integer", "minimum": 1}
    data = op("Everything the dashboard shows, in one answer", {
        "200": json_body({"type": "object", "required": ["at", "viewer", "scheduler", "runtime", "queue", "memory",
                                                         "slots", "models", "running", "recent_jobs", "ledger"],
                          "properties": {"at": {"type": "number"}, "models": OBJECT_LIST, "running": OBJECT_LIST,
                                         "recent_jobs": OBJECT_LIST}}),
        **errors(400, 401, 503)}, "dashboard",
        parameters=[query("jobs", {**count, "maximum": 200, "default": 25}, "Recent jobs shown."),
                    query("ledger", {**count, "maximum": 1000, "default": 300}, "Ledger entries for the charts.")])
    return {"/": {"get": page}, "/dashboard": {"get": page}, "/api/dashboard": {"get": data},
            "/dashboard/static/{filename}": {"get": _file("The dashboard's script and style sheet", "dashboard", 404)}}


def metrics_paths(config: Config) -> dict[str, Schema]:
    text = {"schema": {"type": "string"}}
    return {"/metrics": {"get": op("Prometheus figures (OpenMetrics when the scraper asks for it)", {
        "200": {"description": "Counters, histograms and gauges, the same whichever worker answers.",
                "content": {"text/plain": text, "application/openmetrics-text": text}},
        **errors(401, 503)}, "metrics")}}


def experiment_paths(config: Config) -> dict[str, Schema]:
    check = {"oneOf": [
        _storable({"type": "object", "required": ["kind", "test", "entry_point"], "properties": {
            "kind": {"const": "python_tests"},
            "test": {"type": "string", "minLength": 1, "description": "Defines `check(candidate)`."},
            "entry_point": {"type": "string", "pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"}}}),
        _storable({"type": "object", "required": ["kind", "answer"], "properties": {
            "kind": {"const": "exact"},
            "answer": {"anyOf": [{"type": "string"}, {"type": "number"}],
                       "description": "The expected answer."}}})]}
    task = _storable({"type": "object", "required": ["task_id", "suite", "prompt", "check"], "properties": {
        "task_id": {"type": "string", "minLength": 1, "maxLength": 200},
        "suite": {"type": "string", "minLength": 1, "maxLength": 100},
        "prompt": {"type": "string", "minLength": 1}, "check": check}})
    tasks_in = {"type": "object", "required": ["tasks"], "additionalProperties": False, "properties": {
        "tasks": {"type": "array", "items": task, "minItems": 1, "maxItems": 1000}}}
    result_in = {"type": "object", "required": ["task_id", "strategy", "solved", "attempts", "job_ids"],
                 "additionalProperties": False, "properties": {
                     "task_id": {"type": "string", "minLength": 1, "maxLength": 200},
                     "strategy": {"type": "string", "minLength": 1, "maxLength": 100},
                     "solved": {"type": "boolean"},
                     "attempts": {"type": "integer", "minimum": 0, "maximum": 100,
                                  "description": "At least the distinct job_ids (every job is an attempt), else 400."},
                     "job_ids": {**STRING_LIST, "minItems": 1, "maxItems": 100,
                                 "description": "Finished jobs whose metadata carries this experiment, task_id and strategy "
                                                "(409 for one not finished; one that never ran is listed in "
                                                "unmetered_job_ids)."},
                     "eval_s": {"type": "number", "minimum": 0, "default": 0},
                     "client_wall_s": nullable({"type": "number", "minimum": 0}),
                     "models": {**STRING_LIST, "maxItems": 100}}}
    result = {"type": "object", "required": ["experiment", "task_id", "strategy", "solved", "runs"],
              "properties": {"experiment": {"type": "string"}, "runs": {"type": "integer"},
                             "unmetered_job_ids": STRING_LIST, "by_model": OBJECT_LIST}}
    experiment = {"name": "experiment", "in": "path", "required": True,
                  "schema": {"type": "string", "pattern": EXPERIMENT_NAME}}
    limit = query("limit", {"type": "integer", "minimum": 1, "maximum": 1000})
    body = {"required": True, "content": {JSON: {"schema": tasks_in}}}
    return {
        "/api/tasks": {
            "post": op("Store tasks a comparison runs on (replacing those with the same task_id)", {
                "200": json_body({"type": "object", "required": ["stored", "task_ids"], "properties": {
                    "stored": {"type": "integer"}, "task_ids": STRING_LIST}}),
                **errors(400, 401, 413, 503)}, "experiments", requestBody=body),
            "get": op("Stored tasks", {
                "200": json_body({"type": "object", "required": ["tasks", "count"], "properties": {
                    "tasks": OBJECT_LIST, "count": {"type": "integer"}}}), **errors(400, 401, 503)},
                "experiments", parameters=[query("suite", {"type": "string"}), limit]),
        },
        "/api/tasks/{task_id}": {"get": op("One task", {"200": json_body({"type": "object"}),
                                                        **errors(401, 404, 503)}, "experiments",
                                           parameters=[{"name": "task_id", "in": "path", "required": True,
                                                        "schema": {"type": "string"}}])},
        "/api/experiments/{experiment}/results": {
            "post": op("Record how a strategy did on a task; its cost is derived from its jobs' ledger entries", {
                "201": json_body(result, "Recorded, with the costs summed from the ledger."),
                **errors(400, 401, 404, 409, 413, 422, 503)}, "experiments", parameters=[experiment],
                requestBody={"required": True, "content": {JSON: {"schema": result_in}}}),
            "get": op("An experiment's recorded results", {
                "200": json_body({"type": "object", "required": ["experiment", "results", "count"], "properties": {
                    "results": {"type": "array", "items": result}, "count": {"type": "integer"}}}),
                **errors(400, 401, 503)}, "experiments",
                parameters=[experiment, limit, query("strategy", {"type": "string"})]),
        },
    }
