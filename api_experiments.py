"""The experiments blueprint: the tasks a comparison runs on, and per task and strategy what it
cost, derived here from the ledger of that task's jobs (the client names the jobs; the figures
are the service's own)."""
from __future__ import annotations

import re
import time
from typing import Literal

from flask import Blueprint, jsonify, request
from pydantic import BaseModel, ConfigDict, Field

from api_auth import caller, tenant_filter, visible
from api_common import ApiError, limit_arg, parse_body, service
from api_schemas import storable_keys_error
from experiment.costs import ledger_costs
from jobs import FINISHED

FINISHED_STATUSES = {s.value for s in FINISHED}

experiments_bp = Blueprint("experiments", __name__)
EXPERIMENT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,99}$")
MAX_TASKS_PER_REQUEST = 1000
MAX_JOBS_PER_RESULT = 100


class Check(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: Literal["python_tests", "exact"]


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    task_id: str = Field(min_length=1, max_length=200)
    suite: str = Field(min_length=1, max_length=100)
    prompt: str = Field(min_length=1)
    check: Check


class TasksIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tasks: list[TaskIn] = Field(min_length=1, max_length=MAX_TASKS_PER_REQUEST)


class ResultIn(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    task_id: str = Field(min_length=1, max_length=200)
    strategy: str = Field(min_length=1, max_length=100)
    solved: bool
    attempts: int = Field(ge=0, le=MAX_JOBS_PER_RESULT)
    job_ids: list[str] = Field(min_length=1, max_length=MAX_JOBS_PER_RESULT)
    eval_s: float = Field(default=0.0, ge=0)          # time the client spent judging answers
    client_wall_s: float | None = Field(default=None, ge=0)
    models: list[str] = Field(default_factory=list, max_length=100)


def _experiment_name(name: str) -> str:
    if not EXPERIMENT_NAME.match(name):
        raise ApiError(400, "experiment names are 1 to 100 letters, digits and _ . : - (a letter or digit first)",
                       field="experiment")
    return name


@experiments_bp.post("/api/tasks")
def put_tasks():
    body = parse_body(TasksIn)
    tasks = [t.model_dump(mode="json") for t in body.tasks]
    problem = storable_keys_error(tasks)
    if problem:
        raise ApiError(400, problem, field="tasks")
    service().put_tasks(tasks)
    return jsonify({"stored": len(tasks), "task_ids": [t["task_id"] for t in tasks]})


@experiments_bp.get("/api/tasks")
def list_tasks():
    tasks = service().list_tasks(request.args.get("suite") or None, limit_arg())
    return jsonify({"tasks": tasks, "count": len(tasks)})


@experiments_bp.get("/api/tasks/<path:task_id>")
def get_task(task_id: str):
    task = service().get_task(task_id)
    if task is None:
        raise ApiError(404, f"no task with id '{task_id}'")
    return jsonify(task)


@experiments_bp.post("/api/experiments/<experiment>/results")
def record_result(experiment: str):
    experiment = _experiment_name(experiment)
    body = parse_body(ResultIn)
    entries, unmetered = [], []
    wanted = {"experiment": experiment, "task_id": body.task_id, "strategy": body.strategy}
    for job_id in dict.fromkeys(body.job_ids):
        job = service().get(job_id)
        if job is None or not visible(job.get("tenant")):
            raise ApiError(404, f"no job with id '{job_id}'", field="job_ids")
        metadata = job.get("metadata") or {}
        wrong = [key for key, value in wanted.items() if str(metadata.get(key)) != value]
        if wrong:
            raise ApiError(422, f"job '{job_id}' is not tagged with this result's {', '.join(wrong)} "
                           f"({', '.join(f'{k}={wanted[k]!r}' for k in wrong)})", field="job_ids", job_id=job_id)
        if job["status"] not in FINISHED_STATUSES:
            raise ApiError(409, f"job '{job_id}' is {job['status']}: record results after its jobs finish",
                           field="job_ids", job_id=job_id)
        found = service().list_ledger(None, job_id, MAX_JOBS_PER_RESULT, None, tenant=tenant_filter())
        if not found:
            unmetered.append(job_id)     # it never ran (failed or cancelled while waiting): it cost nothing
        entries.extend(found)            # every run of the job: a re-run's work was done too
    doc = {"experiment": experiment, **body.model_dump(mode="json"), "tenant": caller().tenant,
           "recorded_at": time.time(), "runs": len(entries), "unmetered_job_ids": unmetered,
           **ledger_costs(entries)}
    if not doc["models"]:
        doc["models"] = sorted({e["model"] for e in entries})
    service().record_result(doc)
    return jsonify(doc), 201


@experiments_bp.get("/api/experiments/<experiment>/results")
def list_results(experiment: str):
    experiment = _experiment_name(experiment)
    results = [r for r in service().list_results(experiment, limit_arg(1000)) if visible(r.get("tenant"))]
    return jsonify({"experiment": experiment, "results": results, "count": len(results)})
