"""Operators' routes: runtime nodes added and removed while the service runs.

The change is written to the store (`runtime_nodes.NODES_KEY`), where the scheduling leader,
in whichever process or host it runs, picks it up within a second; the answer is 202 for that
reason. Admin keys only (with AUTH_REQUIRED off, any caller without a key is an admin).
"""
from __future__ import annotations

import json
import time

from flask import Blueprint, jsonify, request

from api_auth import caller
from api_common import ApiError, read_body, service
from config import split_node_url
from scheduler_view import NODES_KEY, STATE_KEY

admin_bp = Blueprint("admin", __name__)


def _require_admin() -> None:
    if not caller().admin:
        raise ApiError(403, "this route needs an admin key")


def _node_url() -> str:
    raw = read_body()
    url = request.args.get("url")
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise ApiError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise ApiError(400, 'the body must be {"url": "http://host:11434"} (optionally "#vram=GB" after it)')
        url = body["url"]
    if not url:
        raise ApiError(400, 'say which node: {"url": "http://host:11434"} or ?url=')
    url = url.strip()
    if not url.startswith(("http://", "https://")):
        raise ApiError(400, f"{url}: a node URL starts with http:// or https://")
    try:
        split_node_url(url)
    except ValueError as exc:
        raise ApiError(400, str(exc)) from None
    return url


def _changes() -> dict:
    found = service().published(NODES_KEY)
    doc = dict(found[0]) if found else {}
    return {"added": list(doc.get("added", [])), "removed": list(doc.get("removed", []))}


@admin_bp.get("/api/admin/nodes")
def list_nodes():
    _require_admin()
    view = service().published(STATE_KEY)
    nodes = (view[0] if view else {}).get("nodes", [])
    return jsonify({"nodes": nodes, "changes": _changes()})


@admin_bp.post("/api/admin/nodes")
def add_node():
    _require_admin()
    url = _node_url()
    changes = _changes()
    base = split_node_url(url)[0]
    changes["removed"] = [u for u in changes["removed"] if split_node_url(u)[0] != base]
    changes["added"] = [u for u in changes["added"] if split_node_url(u)[0] != base] + [url]
    service().put_state(NODES_KEY, changes, time.time())
    return jsonify({"url": base, "status": "adding"}), 202


@admin_bp.delete("/api/admin/nodes")
def remove_node():
    _require_admin()
    base = split_node_url(_node_url())[0]
    view = service().published(STATE_KEY)
    nodes = [n.get("url") for n in (view[0] if view else {}).get("nodes", [])]
    if nodes == [base]:
        raise ApiError(409, f"{base} is the only node; add another before removing it")
    changes = _changes()
    changes["added"] = [u for u in changes["added"] if split_node_url(u)[0] != base]
    if base not in changes["removed"]:
        changes["removed"].append(base)
    service().put_state(NODES_KEY, changes, time.time())
    return jsonify({"url": base, "status": "removing"}), 202
