"""The dashboard: a page at `/` (and `/dashboard`) with its script and style sheet
(`dashboard/static/`, served as they are: no build step), and `GET /api/dashboard`, everything the page
shows in one answer, which it polls every two seconds.

The page and its files hold no data and are served without a key; the data needs one where
AUTH_REQUIRED (the page asks for it, and keeps it for the browser tab). A tenant's key shows
that tenant's jobs and ledger; the queue, the loaded models and the scheduler are shown to every
caller, as `/api/stats` shows them: node and runtime URLs to admins only, anyone else seeing each
node's name in their place (routes/infra_view.py).
"""
from __future__ import annotations

import time
from functools import lru_cache
from pathlib import Path

from flask import Blueprint, Response, jsonify

from dashboard.data import job_row, ledger_summary, loaded_models, memory_summary, tenant_usage
from jobs.model import WAITING, JobStatus, public_view
from routes.auth import caller, tenant_filter
from routes.common import config, int_arg, service
from routes.infra_view import shown_view
from routes.system import USAGE_WINDOW_S, shows_infrastructure, views
from scheduling.outlook import job_outlook

ASSETS = Path(__file__).resolve().parent.parent / "dashboard"
dashboard_bp = Blueprint("dashboard", __name__, static_folder=str(ASSETS / "static"),
                         static_url_path="/dashboard/static")
RUNNING_SHOWN = 100
# Only the page's own files and API; inline style attributes are how the script sizes bars.
PAGE_POLICY = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; "
               "frame-ancestors 'none'")


@lru_cache(maxsize=2)
def _page(auth_required: bool) -> str:
    return (ASSETS / "index.html").read_text().replace("__AUTH_REQUIRED__", "true" if auth_required else "false")


@dashboard_bp.get("/")
@dashboard_bp.get("/dashboard")
def page() -> Response:
    return Response(_page(config().AUTH_REQUIRED), mimetype="text/html",
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": PAGE_POLICY})


@dashboard_bp.get("/api/dashboard")
def data():
    """`?jobs=N` recent jobs (1..200, default 25), `?ledger=N` ledger entries for the charts
    (1..1000, default 300)."""
    recent_n = int_arg("jobs", 25, 1, 200)
    ledger_n = int_arg("ledger", 300, 1, 1000)
    who, tenant = caller(), tenant_filter()
    counts = service().counts()
    view, age = views().scheduler()
    view = shown_view(view, shows_infrastructure())
    registry, _ = views().registry()
    scheduler = (view or {}).get("scheduler") or {}
    running = service().list_jobs(JobStatus.RUNNING.value, None, RUNNING_SHOWN, None, tenant=tenant)
    recent = service().list_jobs(None, None, recent_n, None, tenant=tenant)
    ledger = service().list_ledger(None, None, ledger_n, None, tenant=tenant)
    now, outlook = time.time(), views().outlook()
    queue = {"total": counts.waiting, "by_priority": counts.waiting_by_priority, "by_model": counts.waiting_by_model,
             "running": counts.by_status.get(JobStatus.RUNNING.value, 0)}
    if not who.admin:
        queue["yours"] = counts.waiting_by_tenant.get(who.tenant, 0)
    return jsonify({
        "at": time.time(),
        "viewer": {"tenant": who.tenant or None, "admin": who.admin, "auth_required": config().AUTH_REQUIRED},
        "scheduler": {"reporting": view is not None, "leader": (view or {}).get("owner"),
                      "epoch": (view or {}).get("epoch"), "published_age_s": round(age, 3) if age is not None else None,
                      **{k: scheduler.get(k, 0) for k in ("passes", "loads", "unloads", "evictions", "requeued")},
                      "waiting_for_memory": scheduler.get("waiting_for_memory") or [],
                      "draining": scheduler.get("draining") or []},
        "runtime": (view or {}).get("runtime") or {"ok": False, "error": "no scheduler has reported yet"},
        "errors": (view or {}).get("errors") or {},
        "queue": queue,
        "memory": memory_summary(view),
        "slots": {"in_use": scheduler.get("slots_in_use", 0), "total": scheduler.get("slots_total", 0)},
        "models": loaded_models(view, registry.describe() if registry is not None else []),
        "running": [job_row(public_view(j)) for j in running],
        "recent_jobs": [job_row(public_view(j), job_outlook(outlook, j["job_id"], now) if j["status"] in WAITING
                                else None) for j in recent],
        "tenants": tenant_usage(service().usage_by_tenant(now - USAGE_WINDOW_S)) if who.admin else None,
        "activity": (view or {}).get("activity") or {"events": [], "per_minute": []},
        "ledger": ledger_summary(ledger),
    })
