"""The HTTP API: requests in, validation, job ids and results out. No scheduling logic.

`create_app(config, service)` is the app factory; `python main.py` and gunicorn (`wsgi.py`)
both serve what it returns. Blueprints: `jobs` (submit, poll, cancel, list, ledger:
routes/jobs.py), `system` (stats, health, models: routes/system.py), and the front doors for existing
clients, `ollama` (Ollama's API: routes/ollama.py) and `openai` (`/v1/...`: routes/openai.py). Who
calls is settled first (auth.py). The API reaches the service only through its facade
(service/facade.py). Every error is JSON `{"error": ...}` with the right status (under `/v1/`, in
OpenAI's shape); bad input never gets a 500; a body over MAX_PROMPT_BYTES is refused before it
is read; a store that does not answer gets 503 with Retry-After, and nothing is acknowledged
that was not stored.
"""
from __future__ import annotations

import os
from typing import Any

from flask import Flask, jsonify, request
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from config import MAX_WAIT_S, Config
from front_door.openai_shapes import error_body
from routes import auth, http_errors
from routes.admin import admin_bp
from routes.common import ApiError
from routes.dashboard import dashboard_bp
from routes.experiments import experiments_bp
from routes.jobs import jobs_bp
from routes.metrics import metrics_bp
from routes.ollama import ollama_bp
from routes.openai import openai_bp
from routes.openapi import openapi_bp
from routes.system import SharedViews, system_bp
from scheduling.model_settings import ModelSettings
from service.facade import Service
from store import StoreUnavailable, storable
from telemetry.logs import get_logger

log = get_logger("API")

__all__ = ["MAX_WAIT_S", "ApiError", "create_app"]


class FiniteJSONProvider(DefaultJSONProvider):
    """Every answer is JSON that any client parses: a non-finite figure (a rate over zero
    seconds, a value stored before the API refused them) is written as null, never NaN."""
    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("default", self.default)
        kwargs.setdefault("ensure_ascii", self.ensure_ascii)
        kwargs.setdefault("sort_keys", self.sort_keys)
        return storable.dumps(obj, **kwargs)


def create_app(config: Config | None = None, service: Service | None = None) -> Flask:
    config = config or Config()
    service = service or Service(config)
    app = Flask("model_manager")
    app.json = FiniteJSONProvider(app)
    # Refused as soon as a declared length says so, and for chunked bodies as soon as the
    # limit is passed while reading: never read in full.
    app.config["MAX_CONTENT_LENGTH"] = config.MAX_PROMPT_BYTES
    app.extensions["model_manager"] = service
    app.extensions["model_manager_views"] = SharedViews(service)
    app.extensions["model_manager_settings"] = ModelSettings.from_config(config)

    @app.before_request
    def headers_within_limit():
        size = http_errors.header_bytes(request.environ)
        if size > http_errors.MAX_HEADER_BYTES:
            raise ApiError(431, f"request headers are {size} bytes; the limit is {http_errors.MAX_HEADER_BYTES}",
                           max_header_bytes=http_errors.MAX_HEADER_BYTES)

    auth.install(app, service)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(system_bp)
    app.register_blueprint(admin_bp)
    app.register_blueprint(ollama_bp)
    app.register_blueprint(openai_bp)
    app.register_blueprint(openapi_bp)
    app.register_blueprint(metrics_bp)
    app.register_blueprint(dashboard_bp)
    app.register_blueprint(experiments_bp)

    @app.after_request
    def served_by(response):
        response.headers["X-Model-Manager-Pid"] = str(os.getpid())   # which worker answered
        return response

    def error(status: int, payload: dict, headers: dict | None = None):
        if request.path.startswith("/v1/"):
            payload = error_body(status, payload["error"], payload.get("field"))
        return jsonify(payload), status, headers or {}

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error(exc.http_status, exc.payload, exc.headers)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(exc: RequestEntityTooLarge):
        return error(413, {"error": f"request body over MAX_PROMPT_BYTES = {config.MAX_PROMPT_BYTES} bytes",
                           "max_bytes": config.MAX_PROMPT_BYTES})

    @app.errorhandler(StoreUnavailable)
    def store_unavailable(exc: StoreUnavailable):
        # the driver's text can name the database's hosts: it goes to the log, not to clients
        log.warning("%s %s: %s", request.method, request.path, exc)
        return error(503, {"error": "the job store did not answer in time (nothing was stored); try again"},
                     {"Retry-After": "2"})

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        # keep what the exception says in headers (a 405's Allow), not its HTML content type
        headers = {k: v for k, v in exc.get_headers() if k.lower() != "content-type"}
        return error(exc.code or 500, {"error": exc.description or exc.name}, headers)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error(500, {"error": "internal error; see the service log"})

    return app
