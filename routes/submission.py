"""What every way in (`/api/submit`, Ollama's and OpenAI's routes) does with a new job: check
that its model can serve it, apply the caller's quotas (priority, waiting jobs, rate), look in
the result cache when asked, and queue it."""
from __future__ import annotations

import math
import time
import uuid
from typing import Any

from flask import request

from jobs.model import JobDoc, JobKind, JobStatus, Priority
from model_registry import ModelEntry, ModelRegistry, canonical_name
from routes.auth import caller
from routes.common import ApiError, config, service, settings
from routes.system import views
from scheduling.fair_share import share_fields
from scheduling.model_settings import reload_option_error
from scheduling.outlook import retry_after_s
from service.result_cache import cache_key
from store import Idempotency, QueueFull, TenantQueueFull
from tenancy.keys import priority_allowed

CACHE_HEADER = "X-Cache"
USER_HEADER = "X-User"          # a user inside the tenant, for the fair share one level down


def check_model(requested: str, kind: JobKind) -> str:
    """The registry's name for the requested model; 404, 400 or 422 when it cannot run."""
    registry, capacity = views().registry()
    if registry is None:            # no scheduler has published yet: it will judge the model, by the
        return canonical_name(requested)      # name the registry gives it (Ollama's: no tag is :latest)
    name = registry.resolve(requested)
    if name is None:
        raise ApiError(404, f"model '{requested}' not found", field="model",
                       suggestions=registry.suggestions(requested))
    entry = _entry(registry, name)
    if entry.on_runtime is False:
        raise ApiError(404, f"model '{name}' is known but not installed on the runtime; install it with: "
                       f"{entry.spec.install_hint}", field="model", install=entry.spec.install_hint,
                       suggestions=[n for n in registry.suggestions(requested) if _entry(registry, n).on_runtime])
    if kind.capability not in entry.spec.capabilities:
        raise ApiError(400, f"model '{name}' cannot serve kind '{kind.value}' (it offers "
                       f"{', '.join(entry.spec.capabilities)})", field="kind")
    need = registry.need_bytes(name)
    if capacity and need > capacity:
        raise ApiError(422, f"model '{name}' needs {need / 1e9:.2f} GB but at most {capacity / 1e9:.2f} GB "
                       "can ever be used here", field="model", need_bytes=need, capacity_bytes=capacity,
                       fitting_models=registry.fitting(capacity, kind.capability)[:5])
    return name


def _entry(registry: ModelRegistry, name: str) -> ModelEntry:
    """The entry of a model the registry named (it never forgets a model)."""
    entry = registry.get(name)
    assert entry is not None
    return entry


def check_options(options: dict[str, Any], model: str) -> None:
    problem = reload_option_error(options, model, settings())
    if problem:
        raise ApiError(400, problem, field=problem.split(":", 1)[0])


def default_priority() -> Priority:
    """Normal, or the caller's maximum when that is lower."""
    key = caller().key
    if key is not None and key.max_priority.rank < Priority.NORMAL.rank:
        return key.max_priority
    return Priority.NORMAL


def check_priority(priority: Priority) -> None:
    if not priority_allowed(caller(), priority):
        key = caller().key
        assert key is not None          # a caller without a key may ask for any priority
        raise ApiError(403, f"priority '{priority.value}' is above this key's maximum "
                       f"'{key.max_priority.value}'", field="priority")


def check_rate() -> None:
    key = caller().key
    if key is None or not key.rate_per_min:
        return
    wait = service().take_rate(key.key_id, key.rate_per_min)
    if wait > 0:
        err = ApiError(429, f"this key may submit {key.rate_per_min:g} jobs a minute; try again in {wait:.1f}s",
                       rate_per_min=key.rate_per_min, retry_after_s=round(wait, 3))
        err.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        raise err


def wants_cache(body_flag: Any) -> bool:
    return body_flag is True or request.headers.get(CACHE_HEADER, "").strip().lower() in ("true", "1", "yes")


def look_in_cache(job: JobDoc, idempotency: Idempotency | None = None) -> JobDoc | None:
    """Mark `job` for the result cache and return it answered from the cache when an identical
    earlier request's answer is there (stored, finished), else None. With `idempotency`, the
    answered job is stored under its key (IdempotentReplay or IdempotencyConflict as queue_job)."""
    registry, _ = views().registry()
    entry = registry.get(job["model"]) if registry is not None else None
    digest = entry.spec.digest if entry is not None else ""
    key = cache_key(job, digest, settings().ctx_for(job["model"]))
    if key is None:
        return None
    job["cache_key"] = key
    hit = service().cached(key)
    if hit is None:
        return None
    now = time.time()
    answered: JobDoc = {**job, "status": JobStatus.COMPLETE.value, "result": hit.get("result"),
                        "started_at": now, "completed_at": now, "run_id": f"cache-{uuid.uuid4().hex[:8]}",
                        "metrics": {**(hit.get("metrics") or {}), "cached": True, "cached_from": hit.get("job_id"),
                                    "queue_wait_s": 0.0, "load_s": 0.0, "total_s": round(now - job["submitted_at"], 6)}}
    service().record_answered(answered, idempotency)
    return answered


def queue_job(job: JobDoc, idempotency: Idempotency | None = None, user: str | None = None) -> int:
    """Queue `job` under the caller's limits; its position. 429 when the queue (or the caller's
    share of it) is full. `user`: who inside the caller's tenant it is for (OpenAI's `user`
    field); an `X-User` header or `metadata.user` says it otherwise."""
    key = caller().key
    metadata_user = (job.get("metadata") or {}).get("user")
    named = request.headers.get(USER_HEADER) or user or (metadata_user if isinstance(metadata_user, str) else None)
    job["share"] = share_fields(job, named, key.weight if key else 1.0)
    try:
        return service().submit(job, idempotency, key.max_waiting if key else None)
    except TenantQueueFull as exc:
        err = ApiError(429, f"{exc}; try again later", max_waiting=key.max_waiting if key else None)
        err.headers["Retry-After"] = str(retry_after_s(views().outlook(), time.time(), caller().tenant))
        raise err from None
    except QueueFull as exc:
        err = ApiError(429, f"{exc}; try again later", queue_max_size=config().QUEUE_MAX_SIZE)
        err.headers["Retry-After"] = str(retry_after_s(views().outlook(), time.time()))
        raise err from None
