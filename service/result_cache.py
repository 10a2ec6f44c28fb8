"""The opt-in result cache: which requests may be answered from it, under what key, and what is
kept.

A request asks for it (`"cache": true` in the body, or `X-Cache: true`). It is answered from the
cache only when the answer is reproducible: an embedding, or generation with temperature 0 or a
fixed seed. The key covers everything that shapes the answer: the tenant (answers never cross
tenants), the model and its version (the runtime's digest of the weights), the context length
it runs with, the sampling options and the whole request. A model whose digest is unknown is
not cached.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from jobs.model import JobDoc, JobKind

_REQUEST_FIELDS = ("kind", "prompt", "system", "messages", "input", "images", "format", "think", "tools", "suffix",
                   "raw", "template", "context", "truncate", "dimensions")
_KEPT_METRICS = ("prompt_tokens", "output_tokens", "run_s", "tokens_per_s", "runtime")


def reproducible(kind: JobKind, options: dict[str, Any]) -> bool:
    if kind is JobKind.EMBED:
        return True
    temperature = options.get("temperature")
    seed = options.get("seed")
    greedy = isinstance(temperature, (int, float)) and not isinstance(temperature, bool) and temperature == 0
    seeded = isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0
    return greedy or seeded


def cache_key(job: JobDoc, digest: str, num_ctx: int) -> str | None:
    """The key `job`'s answer is cached under, or None when it may not be cached."""
    options = job.get("options") or {}
    if not digest or not reproducible(JobKind(job["kind"]), options):
        return None
    payload = {"tenant": job.get("tenant") or "", "model": job["model"], "digest": digest, "num_ctx": num_ctx,
               "options": options, **{k: job.get(k) for k in _REQUEST_FIELDS if job.get(k) is not None}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


def cached_answer(job: JobDoc, fields: dict[str, Any]) -> dict[str, Any]:
    """What the cache keeps of a finished job: its result, its token counts and work time, and
    where it came from."""
    metrics = fields.get("metrics") or {}
    return {"result": fields.get("result"), "metrics": {k: metrics[k] for k in _KEPT_METRICS if k in metrics},
            "job_id": job["job_id"], "model": job["model"], "cached_at": fields.get("completed_at")}
