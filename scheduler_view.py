"""What the scheduler shows of itself: the view behind /api/stats, /api/health and /api/models,
built from a term's parts and published in the store for API workers in other processes."""
from __future__ import annotations

from typing import Any

from jobs import ErrorKind
from runtime_nodes import node_view

STATE_KEY = "scheduler"
REGISTRY_KEY = "registry"


def capacity_bytes(term: Any) -> int:
    """The most memory any one model could ever have here: the largest node's (0 while unknown)."""
    totals = [n.state.memory_total for n in term.nodes if n.state is not None and n.state.memory_total > 0]
    return max(totals) - term.config.safety_margin_bytes if totals else 0


def scheduler_view(term: Any) -> dict[str, Any]:
    state, core, runtime = term.state, term.core, term.runtime
    nodes = list(term.nodes)
    if len(nodes) > 1:
        return cluster_view(term, nodes)
    models = core.states()
    capacity = capacity_bytes(term)
    loaded_info = {m.name: m for m in state.loaded} if state else {}
    counters = term.ctx.counters.snapshot()
    return {
        "owner": term.ctx.owner,
        "epoch": term.epoch,
        "runtime": {"kind": runtime.kind, "url": runtime.url, "ok": bool(state and state.runtime_ok),
                    "error": state.runtime_error if state else "not read yet"},
        "resources": {
            "vram": {"total": state.memory_total if state else 0,
                     "used": state.memory_used if state else 0,
                     "free": state.memory_free if state else 0,
                     "budget": capacity - state.used_by_others if capacity else 0,
                     "capacity": capacity,
                     "used_by_others": state.used_by_others if state else 0,
                     "source": state.memory_source if state else runtime.memory.name},
            "gpus": [vars(g) for g in state.gpus] if state else [],
            "loaded_models": [{
                "name": m.name, "phase": m.phase.value, "running": m.running, "slots": m.slots,
                "size": loaded_info[m.name].size if m.name in loaded_info else m.bytes,
                "size_vram": loaded_info[m.name].size_vram if m.name in loaded_info else 0,
                "planned_bytes": m.bytes,
                "context_length": loaded_info[m.name].context_length if m.name in loaded_info else None,
                "idle_since": m.last_used if m.running == 0 else None,
                "expires_at": loaded_info[m.name].expires_at if m.name in loaded_info else None,
            } for m in sorted(models, key=lambda m: m.name)],
            "host": vars(state.host) if state and state.host else {},
        },
        "scheduler": {
            "passes": core.passes, "last_pass_ms": round(term.last_pass_ms, 3),
            "loads": counters.get("loads", 0), "unloads": counters.get("unloads", 0),
            "waiting_for_memory": core.last_plan.waiting_for_memory,
            "draining": core.last_plan.draining,
            "slots_in_use": sum(m.running for m in models),
            "slots_total": sum(m.slots for m in models),
            "requeued": counters.get("requeued", 0),
            "queued_in_scheduler": term.ctx.queue.waiting(),
            "sampler": term.sampler.cost() if term.sampler else {},
        },
        "errors": {k.value: counters.get(f"errors.{k.value}", 0) for k in ErrorKind},
        "jobs": {k: counters.get(k, 0) for k in ("complete", "failed", "cancelled_running", "requeued")},
        "nodes": [node_view(n, term.config.safety_margin_bytes) for n in nodes],
    }


def cluster_view(term: Any, nodes: list) -> dict[str, Any]:
    """The view of several nodes: each node in `nodes`, and the sums where one figure is asked for."""
    margin = term.config.safety_margin_bytes
    views = [node_view(n, margin) for n in nodes]
    counters = term.ctx.counters.snapshot()
    cores = [n.core for n in nodes]
    total = sum(v["vram"]["total"] for v in views)
    used = sum(v["vram"]["used"] for v in views)
    loaded = [{**m, "node": v["url"]} for v in views for m in v["loaded_models"]]
    return {
        "owner": term.ctx.owner,
        "epoch": term.epoch,
        "runtime": {"kind": nodes[0].runtime.kind, "url": ",".join(v["url"] for v in views),
                    "ok": any(v["ok"] for v in views),
                    "error": "; ".join(f"{v['url']}: {v['error']}" for v in views if v["error"]) or None},
        "resources": {
            "vram": {"total": total, "used": used, "free": max(total - used, 0),
                     "budget": sum(v["vram"]["budget"] for v in views), "capacity": capacity_bytes(term),
                     "source": "nodes"},
            "gpus": [g for v in views for g in v["gpus"]],
            "loaded_models": loaded,
            "host": vars(nodes[0].state.host) if nodes[0].state and nodes[0].state.host else {},
        },
        "scheduler": {
            "passes": max(c.passes for c in cores), "last_pass_ms": round(term.last_pass_ms, 3),
            "loads": counters.get("loads", 0), "unloads": counters.get("unloads", 0),
            "waiting_for_memory": sorted({m for c in cores for m in c.last_plan.waiting_for_memory}),
            "draining": sorted({m for c in cores for m in c.last_plan.draining}),
            "slots_in_use": sum(v["slots_in_use"] for v in views),
            "slots_total": sum(v["slots_total"] for v in views),
            "requeued": counters.get("requeued", 0),
            "queued_in_scheduler": term.ctx.queue.waiting(),
            "sampler": {},
        },
        "errors": {k.value: counters.get(f"errors.{k.value}", 0) for k in ErrorKind},
        "jobs": {k: counters.get(k, 0) for k in ("complete", "failed", "cancelled_running", "requeued")},
        "nodes": views,
    }


def registry_document(term: Any) -> dict[str, Any]:
    registry = term.registry
    return {"version": registry.version, "models": registry.describe(), "capacity_bytes": capacity_bytes(term),
            "multiplier": registry.multiplier}
