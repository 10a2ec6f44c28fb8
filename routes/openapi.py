"""The API's own description: `GET /api/openapi.json`, an OpenAPI 3.1 document built from
openapi/spec.py and openapi/front.py for the configuration the app runs with (limits, whether a key
is required). tests/test_openapi.py holds it to every route the app registers and runs schemathesis
against a live service with it."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, jsonify

from config import Config
from openapi.extras import dashboard_paths, experiment_paths, metrics_paths
from openapi.front import front_door_paths
from openapi.spec import (
    Schema,
    admin_paths,
    docs_paths,
    error_responses,
    jobs_paths,
    schemas,
    security_schemes,
    storable_everywhere,
    system_paths,
)
from routes.common import config

openapi_bp = Blueprint("openapi", __name__)
SPEC_PATH = "/api/openapi.json"

# Each group returns {path: path item}. A new blueprint's routes get a group here (or join one).
PATH_GROUPS: tuple[Callable[[Config], dict[str, Schema]], ...] = (
    jobs_paths, system_paths, admin_paths, front_door_paths, experiment_paths, dashboard_paths, metrics_paths,
    docs_paths)
TAGS = ("jobs", "system", "admin", "ollama", "openai", "experiments", "dashboard", "metrics", "docs")


def build_spec(cfg: Config) -> dict[str, Any]:
    paths: dict[str, Schema] = {}
    for group in PATH_GROUPS:
        paths.update(group(cfg))
    keys: list[dict[str, list[str]]] = [{"bearerAuth": []}, {"apiKeyAuth": []}]
    return storable_everywhere({
        "openapi": "3.1.0",
        "info": {"title": "Model Manager", "version": "1.0.0", "description": (
            "A fair, memory-aware job queue in front of local model runtimes (Ollama). Every error is JSON "
            "`{\"error\": ...}` (OpenAI's shape under /v1/); bad input never gets a 5xx. Every answer carries "
            "`X-Model-Manager-Pid`, the worker process that served it.")},
        "tags": [{"name": t} for t in TAGS],
        # Without AUTH_REQUIRED a key is optional: it names the tenant and its limits.
        "security": keys if cfg.AUTH_REQUIRED else [{}, *keys],
        "paths": paths,
        "components": {"securitySchemes": security_schemes(), "schemas": schemas(cfg),
                       "responses": error_responses()},
    })


@openapi_bp.get(SPEC_PATH)
def openapi_document():
    spec = current_app.extensions.get("model_manager_openapi")
    if spec is None:        # built once per app: the configuration does not change while it runs
        spec = current_app.extensions["model_manager_openapi"] = build_spec(config())
    return jsonify(spec)
