"""What a caller is shown of the infrastructure in the scheduler's published view (behind
`/api/stats`, `/api/dashboard`): pure functions over the view, which itself keeps every URL
(the Ollama pass-through routes read it).

Every node gets a `name` (`runtime.node_urls.node_label`), the label it has in `/metrics`, the ledger and
the activity log. An admin sees node and runtime URLs, without credentials; anyone else sees the
node's name where its URL was (so fields keep their names and still match one another), no
error text from the runtime (it can name hosts), no GPU UUIDs, no host readings and no leader
(a leader is `host:pid:...`).
"""
from __future__ import annotations

import copy
from typing import Any

from runtime.node_urls import node_label, scrub_urls, without_credentials

NOT_ANSWERING = "the runtime does not answer"


def shown_view(view: dict[str, Any] | None, admin: bool) -> dict[str, Any] | None:
    """A copy of the scheduler's view fit for the caller (the view itself is left as it is)."""
    if view is None:
        return None
    out = copy.deepcopy(view)
    kind = str((out.get("runtime") or {}).get("kind") or "")
    shown_urls: dict[str, str] = {}

    def shown_url(url: str, node_kind: str = kind) -> str:
        if url not in shown_urls:
            shown_urls[url] = without_credentials(url) if admin else node_label(node_kind, url)
        return shown_urls[url]

    for node in out.get("nodes") or []:
        url, node_kind = str(node.get("url") or ""), str(node.get("kind") or kind)
        node["name"] = node_label(node_kind, url)
        node["url"] = shown_url(url, node_kind)
        node["error"] = _error(node.get("error"), admin)
        if not admin:
            node["gpus"] = [_gpu(g) for g in node.get("gpus") or []]
    runtime = out.get("runtime")
    if isinstance(runtime, dict):
        urls = [u for u in str(runtime.get("url") or "").split(",") if u]
        runtime["url"] = ",".join(shown_url(u) for u in urls) if urls else runtime.get("url")
        runtime["error"] = _error(runtime.get("error"), admin)
    resources = out.get("resources")
    if isinstance(resources, dict):
        for model in resources.get("loaded_models") or []:
            if model.get("node"):
                model["node"] = shown_url(str(model["node"]))
        if not admin:
            resources["gpus"] = [_gpu(g) for g in resources.get("gpus") or []]
            resources["host"] = {}
    if not admin and "owner" in out:
        out["owner"] = None
    return out


def _error(text: Any, admin: bool) -> Any:
    if not text:
        return text
    return scrub_urls(str(text)) if admin else NOT_ANSWERING


def _gpu(gpu: Any) -> Any:
    if not isinstance(gpu, dict):
        return gpu
    return {k: v for k, v in gpu.items() if k != "uuid"}


def health_body(view: dict[str, Any] | None, age_s: float | None, fresh_s: float,
                detailed: bool) -> tuple[dict[str, Any], int]:
    """`/api/health`: ok or not ok and why, in words that name no host; the runtime's kind, its
    error and the leader only for `detailed` (an admin's key)."""
    if view is None:
        return {"status": "starting", "reason": "no scheduler has reported yet"}, 503
    runtime = view.get("runtime") or {}
    shown: dict[str, Any] = {"ok": bool(runtime.get("ok"))}
    if detailed:
        shown.update(kind=runtime.get("kind"), error=scrub_urls(runtime.get("error")))
    extra = {"scheduler": view.get("owner")} if detailed else {}
    if age_s is not None and age_s > fresh_s:
        return {"status": "unhealthy", "reason": f"the scheduler last reported {age_s:.1f}s ago",
                "runtime": shown, **extra}, 503
    if not runtime.get("ok"):
        reason = "runtime does not answer" + (f": {scrub_urls(runtime.get('error'))}" if detailed else "")
        return {"status": "unhealthy", "reason": reason, "runtime": shown, **extra}, 503
    return {"status": "ok", "runtime": shown, **extra}, 200
