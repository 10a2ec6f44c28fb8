"""The jobs blueprint: submit, poll, cancel, list jobs, read the ledger."""
from __future__ import annotations

import hashlib
import json
import time

from flask import Blueprint, jsonify, request

from config import MAX_WAIT_S
from front_door.job_shapes import SubmitRequest
from jobs.model import FINISHED, WAITING, JobDoc, JobStatus, new_job, public_view
from routes.auth import caller, tenant_filter, visible
from routes.common import (
    ApiError,
    client_gone_probe,
    config,
    cursor_arg,
    float_arg,
    limit_arg,
    page,
    parse_body,
    service,
)
from routes.submission import (
    check_model,
    check_options,
    check_priority,
    check_rate,
    default_priority,
    look_in_cache,
    queue_job,
    wants_cache,
)
from routes.system import views
from scheduling.outlook import job_outlook
from store import Idempotency, IdempotencyConflict, IdempotentReplay

jobs_bp = Blueprint("jobs", __name__)
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY = 200


@jobs_bp.post("/api/submit")
def submit():
    cfg = config()
    req = parse_body(SubmitRequest, empty="request body must be a JSON object with at least `model` and `prompt`")
    wait = float_arg("wait", 0.0, 0.0, MAX_WAIT_S)
    timeout_s = float(req.timeout_s) if req.timeout_s is not None else cfg.JOB_TIMEOUT_S
    if timeout_s > cfg.MAX_JOB_TIMEOUT_S:
        raise ApiError(400, f"timeout_s may be at most MAX_JOB_TIMEOUT_S = {cfg.MAX_JOB_TIMEOUT_S:g}",
                       field="timeout_s")
    model = check_model(req.model, req.kind)
    check_options(req.options, model)
    priority = req.priority if "priority" in req.model_fields_set else default_priority()
    check_priority(priority)
    check_rate()
    now = time.time()
    job = new_job(model=model, kind=req.kind, priority=priority, submitted_at=now,
                  timeout_s=timeout_s, prompt=req.prompt, system=req.system,
                  messages=[m.model_dump(exclude_none=True) for m in req.messages] if req.messages else None,
                  input=req.input, options=req.options, images=req.images, metadata=req.metadata,
                  tenant=caller().tenant)
    for key in ("format", "think", "tools"):
        if getattr(req, key) is not None:
            job[key] = getattr(req, key)
    idempotency = _idempotency(req, now)    # before the cache: a retry gets the same job, wherever its answer came from
    try:
        if wants_cache(req.cache):
            answered = look_in_cache(job, idempotency)
            if answered is not None:
                return jsonify(public_view(answered)), 200, {"Location": f"/api/job/{answered['job_id']}"}
        position = queue_job(job, idempotency)
    except IdempotentReplay as replay:
        earlier = service().get(replay.job_id)
        if earlier is not None and not visible(earlier.get("tenant")):
            raise ApiError(422, f"{IDEMPOTENCY_HEADER} was used before", field=IDEMPOTENCY_HEADER) from None
        return _answer(replay.job_id, wait, position=None, replay=True)
    except IdempotencyConflict as exc:
        raise ApiError(422, f"{IDEMPOTENCY_HEADER} {exc}", field=IDEMPOTENCY_HEADER, job_id=exc.job_id) from None
    return _answer(job["job_id"], wait, position=position, replay=False)


def _idempotency(req: SubmitRequest, now: float) -> Idempotency | None:
    key = request.headers.get(IDEMPOTENCY_HEADER)
    if key is None:
        return None
    key = key.strip()
    if not key or len(key) > MAX_IDEMPOTENCY_KEY:
        raise ApiError(400, f"{IDEMPOTENCY_HEADER} must be 1 to {MAX_IDEMPOTENCY_KEY} characters",
                       field=IDEMPOTENCY_HEADER)
    fingerprint = hashlib.sha256(json.dumps(req.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()
    # each tenant has its own keys: one tenant can neither read nor block another's
    return Idempotency(f"{caller().tenant}\n{key}", fingerprint, now + config().IDEMPOTENCY_TTL_S)


def _answer(job_id: str, wait: float, position: int | None, replay: bool):
    """202 with the job's id (and its position when just accepted); 200 with the whole job when
    it finished within `?wait=`."""
    location = {"Location": f"/api/job/{job_id}"}
    extra = {"idempotent_replay": True} if replay else {}
    job: JobDoc | None = (service().wait_for(job_id, wait, caller().tenant, client_gone_probe()) if wait > 0
                          else None)
    if job is None and replay:
        job = service().get(job_id)
    if job is not None and job["status"] in FINISHED:
        return jsonify({**public_view(job), **extra}), 200, location
    body = {"job_id": job_id, "status": job["status"] if job else JobStatus.PENDING.value, **extra}
    if position is not None:
        body["position"] = position
    return jsonify(body), 202, location


@jobs_bp.get("/api/job/<job_id>")
def get_job(job_id: str):
    wait = float_arg("wait", 0.0, 0.0, MAX_WAIT_S)
    job = service().get(job_id)
    if job is None or not visible(job.get("tenant")):
        raise ApiError(404, f"no job with id '{job_id}'")
    if wait > 0 and job["status"] not in FINISHED:
        job = service().wait_for(job_id, wait, caller().tenant, client_gone_probe()) or job
    body = public_view(job, include_request=request.args.get("include") == "request")
    if job["status"] in WAITING:        # when it should start (scheduling/outlook.py); null when not known yet
        body["position"], body["eta_s"] = job_outlook(views().outlook(), job_id, time.time())
    return jsonify(body)


@jobs_bp.post("/api/job/<job_id>/cancel")
def cancel_job(job_id: str):
    job = service().get(job_id)
    if job is None or not visible(job.get("tenant")):
        raise ApiError(404, f"no job with id '{job_id}'")
    outcome = service().cancel(job_id)
    if not outcome.found:
        raise ApiError(404, f"no job with id '{job_id}'")
    if not outcome.cancelled:
        raise ApiError(409, f"job is already {outcome.previous}", status=outcome.previous)
    return jsonify({"job_id": job_id, "status": JobStatus.CANCELLED.value, "previous": outcome.previous})


@jobs_bp.get("/api/ledger")
def ledger():
    """The per-job resource records (`job_metrics`), newest first, a page at a time."""
    limit = limit_arg()
    rows = service().list_ledger(request.args.get("model") or None, request.args.get("job_id") or None, limit,
                                 cursor_arg(), tenant=tenant_filter())
    entries, cursor = page(rows, limit, config().MAX_PAGE_BYTES,
                           lambda e: (e["finished_at"], f"{e['job_id']}:{e.get('run_id')}"))
    return jsonify({"entries": entries, "count": len(entries), "next_cursor": cursor})


@jobs_bp.get("/api/jobs")
def list_jobs():
    status = request.args.get("status") or None
    if status is not None and status not in list(JobStatus):
        raise ApiError(400, f"status must be one of {', '.join(s.value for s in JobStatus)}", field="status")
    limit = limit_arg()
    rows = service().list_jobs(status, request.args.get("model") or None, limit, cursor_arg(), tenant=tenant_filter())
    jobs, cursor = page([public_view(j) for j in rows], limit, config().MAX_PAGE_BYTES,
                        lambda j: (_submitted(rows, j), j["job_id"]))
    return jsonify({"jobs": jobs, "count": len(jobs), "next_cursor": cursor})


def _submitted(rows: list[JobDoc], view: dict) -> float:
    """The raw submission time of a listed job (the view shows it as ISO text)."""
    return next(float(r["submitted_at"]) for r in rows if r["job_id"] == view["job_id"])
