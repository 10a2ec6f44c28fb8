"""The system blueprint: stats, health, liveness, models; and the leader's published views
that every worker reads (cached briefly, or live when the scheduler runs in this process).

Node and runtime URLs, runtime errors, GPU UUIDs, host readings and the leader are shown to admins
only (routes/infra_view.py); `/api/health` shows them to no one but an admin's key."""
from __future__ import annotations

import threading
import time
from typing import Any

from flask import Blueprint, current_app, jsonify

from jobs.model import ErrorKind, JobStatus
from model_registry import ModelRegistry
from routes.auth import caller
from routes.common import config, service
from routes.infra_view import health_body, shown_view
from scheduling.outlook import OUTLOOK_KEY
from scheduling.view import REGISTRY_KEY, STATE_KEY
from service.facade import Service

system_bp = Blueprint("system", __name__)
STATE_FRESH_S = 5.0
VIEW_CACHE_S = 0.5
USAGE_WINDOW_S = 86400.0         # per-tenant usage in /api/stats: the ledger of the last day


class SharedViews:
    """The leader's published state and registry, read from the store and cached briefly (or
    taken straight from the scheduler when it runs in this process)."""

    def __init__(self, service: Service):
        self.service = service
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, Any]] = {}
        self._built: tuple[float, ModelRegistry, int | None] | None = None   # the registry last built, when published

    def _state(self, key: str) -> tuple[dict[str, Any], float] | None:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit and now - hit[0] < VIEW_CACHE_S:
                return hit[1]
        value = self.service.published(key)
        if value is not None:             # "nothing published yet" is asked again next time
            with self._lock:
                self._cache[key] = (now, value)
        return value

    def scheduler(self) -> tuple[dict[str, Any] | None, float | None]:
        """(view, age in seconds): live when the scheduler runs in this process."""
        live = self.service.live_view()
        if live is not None:
            return live, 0.0
        found = self._state(STATE_KEY)
        if not found:
            return None, None
        view, published = found
        return view, max(time.time() - published, 0.0)

    def outlook(self) -> dict[str, Any] | None:
        """The waiting jobs' positions and estimated starts, as the scheduler last published them."""
        found = self._state(OUTLOOK_KEY)
        return found[0] if found else None

    def registry(self) -> tuple[ModelRegistry | None, int | None]:
        """(registry, capacity in bytes); (None, None) until a scheduler has published one."""
        live = self.service.live_registry()
        if live is not None:
            return live[0], live[1] or None
        found = self._state(REGISTRY_KEY)
        if not found:
            return None, None
        doc, published = found
        with self._lock:
            built = self._built
            if built is None or built[0] != published:
                registry = ModelRegistry.from_description(doc["models"], doc.get("multiplier", 1.3))
                built = self._built = (published, registry, doc.get("capacity_bytes") or None)
        return built[1], built[2]


def views() -> SharedViews:
    return current_app.extensions["model_manager_views"]


def shows_infrastructure() -> bool:
    """Whether the caller may see URLs and the rest of the infrastructure: an admin's key, or no
    key where AUTH_REQUIRED is off (where every caller is an admin)."""
    who = caller()
    return who.admin and (who.key is not None or not config().AUTH_REQUIRED)


@system_bp.get("/api/stats")
def stats():
    counts = service().counts()
    view, age = views().scheduler()
    view = shown_view(view, shows_infrastructure()) or {}
    by_status = {s.value: counts.by_status.get(s.value, 0) for s in JobStatus}
    scheduler = dict(view.get("scheduler") or {})
    scheduler.update(leader=view.get("owner"), epoch=view.get("epoch"),
                     published_age_s=round(age, 3) if age is not None else None)
    shared = service().shared_counters()
    body = {
        "running": by_status[JobStatus.RUNNING.value],
        "queue": {"total_jobs": counts.waiting, "by_status": by_status,
                  "by_priority": counts.waiting_by_priority, "by_model": counts.waiting_by_model},
        "resources": view.get("resources") or {"vram": {"total": 0, "used": 0, "free": 0}, "loaded_models": []},
        "scheduler": scheduler,
        "errors": view.get("errors") or {k.value: 0 for k in ErrorKind},
        "jobs": view.get("jobs") or {},
        "runtime": view.get("runtime") or {"kind": None, "url": None, "ok": False, "error": "no scheduler yet"},
        "nodes": view.get("nodes") or [],
        "api": {"long_polls": service().completions.waiting, "max_waiters": service().config.MAX_WAITERS},
        "cache": {"hits": shared.get("cache_hits", 0), "misses": shared.get("cache_misses", 0)},
    }
    if caller().admin:      # each tenant's waiting jobs, and what its runs used (the ledger, last USAGE_WINDOW_S)
        usage = service().usage_by_tenant(time.time() - USAGE_WINDOW_S)
        body["tenants"] = {
            tenant or "(no key)": {"waiting": counts.waiting_by_tenant.get(tenant, 0),
                                   **({"usage": _rounded(usage[tenant])} if tenant in usage else {})}
            for tenant in sorted(set(counts.waiting_by_tenant) | set(usage))}
        body["usage_window_s"] = USAGE_WINDOW_S
    return jsonify(body)


def _rounded(usage: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in usage.items()}


@system_bp.get("/api/ping")
def ping():
    """Liveness: answers as long as the process serves HTTP (readiness is /api/health)."""
    return {"pong": True}


@system_bp.get("/api/health")
def health():
    """Ready or not, and why, for anyone (no key needed): no URL, host or runtime error in it but
    for an admin's key."""
    view, age = views().scheduler()
    who = caller()
    body, status = health_body(view, age, STATE_FRESH_S, detailed=who.key is not None and who.admin)
    return jsonify(body), status


@system_bp.get("/api/models")
def models():
    registry, capacity = views().registry()
    view, _ = views().scheduler()
    loaded = {m["name"]: m for m in ((view or {}).get("resources") or {}).get("loaded_models", [])}
    rows = registry.describe() if registry is not None else []
    for row in rows:
        row["loaded"] = row["name"] in loaded
        row["fits"] = bool(capacity) and row["need_bytes"] <= capacity
    return jsonify({"models": rows, "capacity_bytes": capacity})
