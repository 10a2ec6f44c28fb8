"""The experiments blueprint: the tasks a comparison runs on, and per task and strategy what it
cost, derived here from the ledger of that task's jobs (the client names the jobs; the figures
are the service's own)."""
from __future__ import annotations

import time
from typing import Any, Literal

from flask import Blueprint, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from experiment import EXPERIMENT_NAME, EXPERIMENT_NAME_RULE
from experiment.costs import ledger_costs
from front_door.job_shapes import FieldError, storable_keys_error
from jobs.model import FINISHED
from routes.auth import caller, tenant_filter, visible
from routes.common import ApiError, limit_arg, parse_body, service

experiments_bp = Blueprint("experiments", __name__)
MAX_TASKS_PER_REQUEST = 1000
MAX_JOBS_PER_RESULT = 100


class Check(BaseModel):
    model_config = ConfigDict(extra="allow")
    kind: Literal["python_tests", "exact"]
    test: str | None = Field(default=None, min_length=1)          # python_tests: defines check(candidate)
    entry_point: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    answer: str | int | float | None = None                        # exact: the expected answer

    @field_validator("answer", mode="before")
    @classmethod
    def _no_bool_answer(cls, value: Any) -> Any:
        if isinstance(value, bool):                 # not a number, whatever pydantic would make of it
            raise ValueError("must be a string or a number")
        return value

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Check:
        needed = ("test", "entry_point") if self.kind == "python_tests" else ("answer",)
        missing = [name for name in needed if getattr(self, name) is None]
        if missing:
            raise ValueError(f"kind '{self.kind}' needs {' and '.join(missing)}")
        return self


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
    models: list[str] = Field(default_factory=list, max_length=100)   # only for jobs that never ran

    @model_validator(mode="after")
    def _an_attempt_per_job(self) -> ResultIn:
        if self.attempts < len(set(self.job_ids)):
            raise FieldError("attempts", f"({self.attempts}) is fewer than the distinct job_ids "
                             f"({len(set(self.job_ids))}): every job is an attempt")
        return self


def _without_tenant(task: dict) -> dict:
    return {k: v for k, v in task.items() if k != "tenant"}


def _experiment_name(name: str) -> str:
    if not EXPERIMENT_NAME.match(name):
        raise ApiError(400, f"experiment names are {EXPERIMENT_NAME_RULE}", field="experiment")
    return name


@experiments_bp.post("/api/tasks")
def put_tasks():
    body = parse_body(TasksIn)
    tasks = [{**t.model_dump(mode="json", exclude_unset=True), "tenant": caller().tenant} for t in body.tasks]
    problem = storable_keys_error(tasks)
    if problem:
        raise ApiError(400, problem, field="tasks")
    changed = []
    for task in tasks:      # tasks are shared for reading, so that teams compare on the same ones;
        stored = service().get_task(task["task_id"])   # only their tenant (or an admin) changes them
        if stored is not None and _without_tenant(stored) == _without_tenant(task):
            continue                                    # the same task again (HumanEval, imported twice)
        if stored is not None and not visible(stored.get("tenant")):
            raise ApiError(403, f"task '{task['task_id']}' belongs to another tenant", field="tasks",
                           task_id=task["task_id"])
        changed.append(task)
    service().put_tasks(changed)
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
        if job["status"] not in FINISHED:
            raise ApiError(409, f"job '{job_id}' is {job['status']}: record results after its jobs finish",
                           field="job_ids", job_id=job_id)
        found = service().list_ledger(None, job_id, MAX_JOBS_PER_RESULT, None, tenant=tenant_filter())
        if not found:
            unmetered.append(job_id)     # it never ran (failed or cancelled while waiting): it cost nothing
        entries.extend(found)            # every run of the job: a re-run's work was done too
    doc = {"experiment": experiment, **body.model_dump(mode="json"), "job_ids": list(dict.fromkeys(body.job_ids)),
           "tenant": caller().tenant,
           "recorded_at": time.time(), "runs": len(entries), "unmetered_job_ids": unmetered,
           **ledger_costs(entries)}
    if entries:                          # the models that did the work, as the ledger says
        doc["models"] = sorted({e["model"] for e in entries})
    service().record_result(doc)
    return jsonify(doc), 201


@experiments_bp.get("/api/experiments/<experiment>/results")
def list_results(experiment: str):
    experiment = _experiment_name(experiment)
    results = service().list_results(experiment, limit_arg(1000), tenant_filter(),
                                     request.args.get("strategy") or None)
    return jsonify({"experiment": experiment, "results": results, "count": len(results)})
