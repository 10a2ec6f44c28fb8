"""The HTTP API: requests in, validation, job ids and results out. No scheduling logic.

`create_app(config, service)` is the app factory; `python main.py` and gunicorn (`wsgi.py`)
both serve what it returns. Two blueprints: `jobs` (submit, poll, cancel, list) and `system`
(stats, health, models). Every error is JSON `{"error": ...}` with the right status; bad input
never gets a 500.
"""
from __future__ import annotations

import math
import os
import threading
import time
from typing import Any

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException

from api_schemas import SubmitRequest, describe_validation_error
from config import Config
from jobs import FINISHED, JobStatus, new_job, public_view
from log_setup import get_logger
from model_registry import ModelRegistry
from model_settings import ModelSettings, reload_option_error
from service import REGISTRY_KEY, STATE_KEY, Service
from store import QueueFull

log = get_logger("API")

MAX_WAIT_S = 300.0
STATE_FRESH_S = 5.0
VIEW_CACHE_S = 0.5

jobs_bp = Blueprint("jobs", __name__)
system_bp = Blueprint("system", __name__)


class ApiError(Exception):
    def __init__(self, http_status: int, message: str, **extra: Any):
        super().__init__(message)
        self.http_status = http_status
        self.payload = {"error": message, **extra}
        self.headers: dict[str, str] = {}


def _service() -> Service:
    return current_app.extensions["model_manager"]


class SharedViews:
    """The leader's published state and registry, read from the store and cached briefly (or
    taken straight from the scheduler when it runs in this process)."""

    def __init__(self, service: Service):
        self.service = service
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}

    def _state(self, key: str) -> tuple[dict[str, Any], float] | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and now - hit[0] < VIEW_CACHE_S:
                return hit[1]
        value = self.service.store.get_state(key)
        if value is not None:             # "nothing published yet" is asked again next time
            with self._lock:
                self._cache[key] = (now, value)
        return value

    def scheduler(self) -> tuple[dict[str, Any] | None, float | None]:
        """(view, age in seconds): live when the scheduler runs in this process."""
        if self.service.leading and self.service.state is not None:
            return self.service.scheduler_view(), 0.0
        found = self._state(STATE_KEY)
        if not found:
            return None, None
        view, published = found
        return view, max(time.time() - published, 0.0)

    def registry(self) -> tuple[ModelRegistry | None, int | None]:
        """(registry, capacity in bytes); (None, None) until a scheduler has published one."""
        service = self.service
        if service.leading and service.registry is not None and service.state is not None:
            return service.registry, service.capacity_bytes() or None
        found = self._state(REGISTRY_KEY)
        if not found:
            return None, None
        doc, published = found
        with self._lock:
            built = self._cache.get("registry-built")
            if built is None or built[0] != published:
                registry = ModelRegistry.from_description(doc["models"], doc.get("multiplier", 1.3))
                built = self._cache["registry-built"] = (published, registry, doc.get("capacity_bytes") or None)
        return built[1], built[2]


def _views() -> SharedViews:
    return current_app.extensions["model_manager_views"]


def _config() -> Config:
    return _service().config


def _settings() -> ModelSettings:
    """Each model's context length, from the configuration every worker shares."""
    return current_app.extensions["model_manager_settings"]


def _float_arg(name: str, default: float, low: float, high: float) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number", field=name) from None
    if not math.isfinite(value) or value < low or value > high:
        raise ApiError(400, f"{name} must be between {low:g} and {high:g}", field=name)
    return value


def _wait_for(job_id: str, timeout: float) -> dict[str, Any] | None:
    """The job, once finished or when `timeout` runs out."""
    service = _service()
    deadline = time.monotonic() + timeout
    event = service.completions.register(job_id)
    try:
        delay = 0.005
        while True:
            job = service.store.get(job_id)
            if job is None or job["status"] in {s.value for s in FINISHED}:
                return job
            left = deadline - time.monotonic()
            if left <= 0:
                return job
            event.wait(min(delay, left))   # set at once when the job finishes in this process
            delay = min(delay * 2, 0.25)
    finally:
        service.completions.unregister(job_id, event)


# --- jobs -------------------------------------------------------------------------------------------
@jobs_bp.post("/api/submit")
def submit():
    config = _config()
    raw = request.get_data(cache=False)
    if len(raw) > config.MAX_PROMPT_BYTES:
        raise ApiError(413, f"request body is {len(raw)} bytes; the limit is MAX_PROMPT_BYTES = "
                       f"{config.MAX_PROMPT_BYTES}")
    try:
        req = SubmitRequest.model_validate_json(raw or b"null")
    except ValidationError as exc:
        field, message, details = describe_validation_error(exc)
        if field == "body" or not raw:
            message = "request body must be a JSON object with at least `model` and `prompt`"
        raise ApiError(400, message, field=field, details=details) from None
    wait = _float_arg("wait", 0.0, 0.0, MAX_WAIT_S)
    timeout_s = float(req.timeout_s) if req.timeout_s is not None else config.JOB_TIMEOUT_S
    if timeout_s > config.MAX_JOB_TIMEOUT_S:
        raise ApiError(400, f"timeout_s may be at most MAX_JOB_TIMEOUT_S = {config.MAX_JOB_TIMEOUT_S:g}",
                       field="timeout_s")
    model = _check_model(req)
    option_error = reload_option_error(req.options, model, _settings())
    if option_error:
        raise ApiError(400, option_error, field=option_error.split(":", 1)[0])
    job = new_job(model=model, kind=req.kind, priority=req.priority, submitted_at=time.time(),
                  timeout_s=timeout_s, prompt=req.prompt, system=req.system,
                  messages=[m.model_dump(exclude_none=True) for m in req.messages] if req.messages else None,
                  input=req.input, options=req.options, images=req.images, metadata=req.metadata)
    for key in ("format", "think", "tools"):
        if getattr(req, key) is not None:
            job[key] = getattr(req, key)
    try:
        position = _service().queue.submit(job)
    except QueueFull as exc:
        err = ApiError(429, f"{exc}; try again later", queue_max_size=config.QUEUE_MAX_SIZE)
        err.headers["Retry-After"] = "2"
        raise err from None
    location = {"Location": f"/api/job/{job['job_id']}"}
    if wait > 0:
        done = _wait_for(job["job_id"], wait)
        if done is not None and done["status"] in {s.value for s in FINISHED}:
            return jsonify(public_view(done)), 200, location
    return jsonify({"job_id": job["job_id"], "status": JobStatus.PENDING.value, "position": position}), 202, location


def _check_model(req: SubmitRequest) -> str:
    """The registry's name for the requested model; 404, 400 or 422 when it cannot run."""
    registry, capacity = _views().registry()
    if registry is None:            # no scheduler has published yet: it will judge the model
        return req.model
    name = registry.resolve(req.model)
    if name is None:
        raise ApiError(404, f"unknown model '{req.model}'", field="model",
                       suggestions=registry.suggestions(req.model))
    entry = registry.get(name)
    if entry.on_runtime is False:
        raise ApiError(404, f"model '{name}' is known but not installed on the runtime; install it with: "
                       f"{entry.spec.install_hint}", field="model", install=entry.spec.install_hint,
                       suggestions=[n for n in registry.suggestions(req.model) if registry.get(n).on_runtime])
    needed = req.kind.capability
    if needed not in entry.spec.capabilities:
        raise ApiError(400, f"model '{name}' cannot serve kind '{req.kind.value}' (it offers "
                       f"{', '.join(entry.spec.capabilities)})", field="kind")
    need = registry.need_bytes(name)
    if capacity and need > capacity:
        raise ApiError(422, f"model '{name}' needs {need / 1e9:.2f} GB but at most {capacity / 1e9:.2f} GB "
                       "can ever be used here", field="model", need_bytes=need, capacity_bytes=capacity,
                       fitting_models=registry.fitting(capacity, needed)[:5])
    return name


@jobs_bp.get("/api/job/<job_id>")
def get_job(job_id: str):
    wait = _float_arg("wait", 0.0, 0.0, MAX_WAIT_S)
    job = _wait_for(job_id, wait) if wait > 0 else _service().store.get(job_id)
    if job is None:
        raise ApiError(404, f"no job with id '{job_id}'")
    return jsonify(public_view(job, include_request=request.args.get("include") == "request"))


@jobs_bp.post("/api/job/<job_id>/cancel")
def cancel_job(job_id: str):
    outcome = _service().store.cancel(job_id, {"completed_at": time.time(), "error": "cancelled by request"})
    if not outcome.found:
        raise ApiError(404, f"no job with id '{job_id}'")
    if not outcome.cancelled:
        raise ApiError(409, f"job is already {outcome.previous}", status=outcome.previous)
    _service().completions.notify(job_id)
    _service().wake()
    return jsonify({"job_id": job_id, "status": JobStatus.CANCELLED.value, "previous": outcome.previous})


def _limit_arg(default: int = 100) -> int:
    raw = request.args.get("limit", str(default))
    try:
        limit = int(raw)
    except ValueError:
        raise ApiError(400, "limit must be an integer", field="limit") from None
    if not 1 <= limit <= 1000:
        raise ApiError(400, "limit must be between 1 and 1000", field="limit")
    return limit


@jobs_bp.get("/api/ledger")
def ledger():
    """The per-job resource records (`job_metrics`), newest first."""
    rows = _service().store.list_metrics(model=request.args.get("model") or None, limit=_limit_arg(),
                                         job_id=request.args.get("job_id") or None)
    return jsonify({"entries": rows, "count": len(rows)})


@jobs_bp.get("/api/jobs")
def list_jobs():
    status = request.args.get("status") or None
    if status is not None and status not in {s.value for s in JobStatus}:
        raise ApiError(400, f"status must be one of {', '.join(s.value for s in JobStatus)}", field="status")
    jobs = _service().store.list_jobs(status=status, model=request.args.get("model") or None, limit=_limit_arg())
    return jsonify({"jobs": [public_view(j) for j in jobs], "count": len(jobs)})


# --- system -----------------------------------------------------------------------------------------
@system_bp.get("/api/stats")
def stats():
    counts = _service().store.counts()
    view, age = _views().scheduler()
    view = view or {}
    by_status = {s.value: counts.by_status.get(s.value, 0) for s in JobStatus}
    scheduler = dict(view.get("scheduler") or {})
    scheduler.update(leader=view.get("owner"), published_age_s=round(age, 3) if age is not None else None)
    return jsonify({
        "running": by_status[JobStatus.RUNNING.value],
        "queue": {"total_jobs": counts.waiting, "by_status": by_status,
                  "by_priority": counts.waiting_by_priority, "by_model": counts.waiting_by_model},
        "resources": view.get("resources") or {"vram": {"total": 0, "used": 0, "free": 0}, "loaded_models": []},
        "scheduler": scheduler,
        "errors": view.get("errors") or {"oom": 0, "runtime": 0, "timeout": 0},
        "jobs": view.get("jobs") or {},
        "runtime": view.get("runtime") or {"kind": None, "url": None, "ok": False, "error": "no scheduler yet"},
    })


@system_bp.get("/api/ping")
def ping():
    """Liveness: answers as long as the process serves HTTP (readiness is /api/health)."""
    return {"pong": True}


@system_bp.get("/api/health")
def health():
    view, age = _views().scheduler()
    if view is None:
        return jsonify({"status": "starting", "reason": "no scheduler has reported yet"}), 503
    runtime = view.get("runtime") or {}
    if age is not None and age > STATE_FRESH_S:
        return jsonify({"status": "unhealthy", "reason": f"the scheduler last reported {age:.1f}s ago",
                        "runtime": runtime}), 503
    if not runtime.get("ok"):
        return jsonify({"status": "unhealthy", "reason": f"runtime does not answer: {runtime.get('error')}",
                        "runtime": runtime}), 503
    return jsonify({"status": "ok", "runtime": runtime, "scheduler": view.get("owner")})


@system_bp.get("/api/models")
def models():
    registry, capacity = _views().registry()
    view, _ = _views().scheduler()
    loaded = {m["name"]: m for m in ((view or {}).get("resources") or {}).get("loaded_models", [])}
    rows = registry.describe() if registry is not None else []
    for row in rows:
        row["loaded"] = row["name"] in loaded
        row["fits"] = bool(capacity) and row["need_bytes"] <= capacity
    return jsonify({"models": rows, "capacity_bytes": capacity})


# --- the app ----------------------------------------------------------------------------------------
def create_app(config: Config | None = None, service: Service | None = None) -> Flask:
    config = config or Config()
    service = service or Service(config)
    app = Flask("model_manager")
    app.json.sort_keys = False
    app.extensions["model_manager"] = service
    app.extensions["model_manager_views"] = SharedViews(service)
    app.extensions["model_manager_settings"] = ModelSettings.from_config(config)
    app.register_blueprint(jobs_bp)
    app.register_blueprint(system_bp)

    @app.after_request
    def served_by(response):
        response.headers["X-Model-Manager-Pid"] = str(os.getpid())   # which worker answered
        return response

    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return jsonify(exc.payload), exc.http_status, exc.headers

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        return jsonify({"error": exc.description or exc.name}), exc.code

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return jsonify({"error": "internal error; see the service log"}), 500

    return app
