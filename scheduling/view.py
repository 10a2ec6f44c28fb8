"""What the scheduler shows of itself: the view behind /api/stats, /api/health and /api/models,
built from a term's parts and published in the store for API workers in other processes."""
from __future__ import annotations

from typing import Any

from jobs.model import ErrorKind
from scheduling.outlook import OUTLOOK_LIMIT, ModelOutlook, outlook_document
from telemetry.counters import error_key

STATE_KEY = "scheduler"
REGISTRY_KEY = "registry"
NODES_KEY = "nodes"          # the runtime nodes added and removed at run time (/api/admin/nodes)


def capacity_bytes(term: Any) -> int:
    """The most memory any one model could ever have here: the largest node's (0 while unknown)."""
    totals = [n.state.memory_total for n in term.nodes if n.state is not None and n.state.memory_total > 0]
    return max(totals) - term.config.safety_margin_bytes if totals else 0


def scheduler_view(term: Any) -> dict[str, Any]:
    """What /api/stats and /api/health show: every node under `nodes`, and the figures asked for
    once (memory, loaded models, slots) summed over the nodes."""
    nodes = [n for n in term.nodes if not n.removed] or list(term.nodes)
    margin = term.config.safety_margin_bytes
    views = [node_view(n, margin) for n in nodes]
    counters = term.ctx.counters.snapshot()
    cores = [n.core for n in nodes]
    states = [n.state for n in nodes if n.state is not None]
    total, used = sum(v["vram"]["total"] for v in views), sum(v["vram"]["used"] for v in views)
    first = nodes[0]
    return {
        "owner": term.ctx.owner,
        "epoch": term.epoch,
        "runtime": {"kind": first.runtime.kind, "url": ",".join(v["url"] for v in views),
                    "ok": any(v["ok"] for v in views),
                    "error": "; ".join(v["error"] if len(views) == 1 else f"{v['url']}: {v['error']}"
                                       for v in views if v["error"]) or None},
        "resources": {
            "vram": {"total": total, "used": used, "free": max(total - used, 0),
                     "budget": sum(v["vram"]["budget"] for v in views), "capacity": capacity_bytes(term),
                     "used_by_others": sum(s.used_by_others for s in states),
                     "source": ",".join(sorted({s.memory_source for s in states})) or first.runtime.memory.name},
            "gpus": [g for v in views for g in v["gpus"]],
            "loaded_models": [{**m, "node": v["url"]} for v in views for m in v["loaded_models"]],
            "host": vars(first.state.host) if first.state and first.state.host else {},
        },
        "scheduler": {
            "passes": max(c.passes for c in cores), "last_pass_ms": round(term.last_pass_ms, 3),
            "loads": counters.get("loads", 0), "unloads": counters.get("unloads", 0),
            "evictions": counters.get("evictions", 0),
            "waiting_for_memory": sorted({m for c in cores for m in c.last_plan.waiting_for_memory}),
            "draining": sorted({m for c in cores for m in c.last_plan.draining}),
            "slots_in_use": sum(v["slots_in_use"] for v in views),
            "slots_total": sum(v["slots_total"] for v in views),
            "requeued": counters.get("requeued", 0),
            "queued_in_scheduler": term.ctx.queue.waiting(),
            "sampler": first.sampler.cost(),
        },
        "errors": {k.value: counters.get(error_key(k), 0) for k in ErrorKind},
        "jobs": {k: counters.get(k, 0) for k in ("complete", "failed", "cancelled_running", "requeued")},
        "nodes": views,
        "activity": term.ctx.counters.activity.snapshot(),    # recent loads, unloads, evictions (dashboard)
    }


def outlook_view(term: Any, now: float) -> dict[str, Any]:
    """Each waiting job's position and estimated start (scheduling/outlook.py), over every node:
    a model's slots and running jobs add up; it is ready now if loaded anywhere."""
    queue = term.ctx.queue
    cores = [n.core for n in term.nodes if not n.removed]
    orders, models = {}, {}
    for demand in queue.demand(now):
        name = demand.model
        orders[name] = [(item.job_id, item.who.tenant) for item in queue.order(name, now, OUTLOOK_LIMIT)]
        here = [o for o in (core.outlook(name, now) for core in cores) if o is not None]
        job_s = next((c.job_s[name] for c in cores if name in c.job_s), None)
        load_s = next((c.load_s[name] for c in cores if name in c.load_s), 0.0)
        if here:
            models[name] = ModelOutlook(sum(o.slots for o in here), tuple(e for o in here for e in o.ends),
                                        job_s, min(o.ready_at for o in here))
        else:                             # to be loaded: its last load's length from now
            models[name] = ModelOutlook(term.registry.slots(name), (), job_s, now + load_s)
    return outlook_document(orders, models, now)


def registry_document(term: Any) -> dict[str, Any]:
    registry = term.registry
    return {"version": registry.version, "models": registry.describe(), "capacity_bytes": capacity_bytes(term),
            "multiplier": registry.multiplier}


def node_view(node: Any, margin_bytes: int) -> dict[str, Any]:
    """One node as /api/stats shows it."""
    state = node.state
    models = node.core.states()
    total = state.memory_total if state else 0
    used = state.memory_used if state else 0
    listed = {m.name: m for m in state.loaded} if state else {}
    return {
        "url": node.url, "kind": node.runtime.kind, "ok": bool(state and state.runtime_ok) and not node.removed,
        "error": state.runtime_error if state else "not read yet",
        "gpus": [vars(g) for g in state.gpus] if state else [],
        "vram": {"total": total, "used": used, "free": max(total - used, 0),
                 "budget": max(total - margin_bytes - state.used_by_others, 0) if state and total else 0,
                 "capacity": max(total - margin_bytes, 0)},
        "loaded_models": [{
            "name": m.name, "phase": m.phase.value, "running": m.running, "slots": m.slots,
            "size": listed[m.name].size if m.name in listed else m.bytes,
            "size_vram": listed[m.name].size_vram if m.name in listed else 0,
            "planned_bytes": m.bytes, "gpu_bytes": list(m.gpu_bytes),
            "context_length": listed[m.name].context_length if m.name in listed else None,
            "idle_since": m.last_used if m.running == 0 else None,
            "expires_at": listed[m.name].expires_at if m.name in listed else None,
        } for m in sorted(models, key=lambda m: m.name)],
        "slots_in_use": sum(m.running for m in models),
        "slots_total": sum(m.slots for m in models),
    }
