"""Operators' routes: runtime nodes added and removed while the service runs.

The change is written to the store (`runtime.nodes.NODES_KEY`), where the scheduling leader,
in whichever process or host it runs, picks it up within a second; the answer is 202 for that
reason. Admin keys only (with AUTH_REQUIRED off, any caller without a key is an admin).

A node URL goes through `runtime.node_urls.validate_node_url` (the check the settings get at start): a
refused one is a 400 naming the field `url` and saying why.
"""
from __future__ import annotations

import time

from flask import Blueprint, jsonify, request

from routes.auth import caller
from routes.common import ApiError, load_json, read_body, service
from runtime.node_urls import node_label, scrub_urls, split_node_url, validate_node_url, without_credentials
from scheduling.view import NODES_KEY, STATE_KEY

admin_bp = Blueprint("admin", __name__)


def _require_admin() -> None:
    if not caller().admin:
        raise ApiError(403, "this route needs an admin key")


def _node_url(adding: bool = True) -> str:
    """The node the request names, checked; a node being removed may have a link-local
    address (one added while NODE_ALLOW_LINK_LOCAL was on)."""
    raw = read_body()
    url = request.args.get("url")
    if raw.strip():
        body = load_json(raw, "body")       # strictly: no NaN, no 1e999, no nesting past 64 levels
        if not isinstance(body, dict) or not isinstance(body.get("url"), str):
            raise ApiError(400, 'the body must be {"url": "http://host:11434"} (optionally "#vram=GB" after it)',
                           field="url")
        url = body["url"]
    if not url:
        raise ApiError(400, 'say which node: {"url": "http://host:11434"} or ?url=', field="url")
    url = url.strip(" ")
    try:
        validate_node_url(url, allow_link_local=not adding or service().config.NODE_ALLOW_LINK_LOCAL)
    except ValueError as exc:
        raise ApiError(400, str(exc), field="url") from None
    return url


def _changes() -> dict:
    found = service().published(NODES_KEY)
    doc = dict(found[0]) if found else {}
    return {"added": list(doc.get("added", [])), "removed": list(doc.get("removed", []))}


@admin_bp.get("/api/admin/nodes")
def list_nodes():
    _require_admin()
    view = service().published(STATE_KEY)
    nodes = [{**n, "url": without_credentials(str(n.get("url") or "")), "error": scrub_urls(n.get("error")),
              "name": node_label(str(n.get("kind") or ""), str(n.get("url") or ""))}
             for n in (view[0] if view else {}).get("nodes", [])]
    changes = {k: [without_credentials(str(u)) for u in v] for k, v in _changes().items()}
    return jsonify({"nodes": nodes, "changes": changes})


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
    base = split_node_url(_node_url(adding=False))[0]
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
