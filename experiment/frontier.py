"""The cost frontier (pure): which strategies no other beats on both pass rate and a cost.

A point is a strategy (or sample-select with its first k samples) at (cost per task, pass rate).
A point is on the Pareto frontier when no other point costs no more and passes at least as many
tasks, one of the two strictly. The frontier is named per cost: CPU seconds per task, peak
resident memory, and energy per task where a GPU reported it.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COSTS = {"cpu_s": "CPU seconds per task", "peak_rss_bytes": "peak resident memory",
         "energy_j": "energy per task (J)"}


def pareto(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """The names of the points on the frontier, cheapest first; `points`: name -> (cost, pass rate)."""
    def dominated(name: str) -> bool:
        cost, rate = points[name]
        return any(c <= cost and r >= rate and (c < cost or r > rate)
                   for other, (c, r) in points.items() if other != name)
    return sorted((n for n in points if not dominated(n)), key=lambda n: (points[n][0], -points[n][1], n))


def frontier_points(summary: Mapping[str, Any]) -> dict[str, dict[str, tuple[float, float]]]:
    """Per cost, the points to plot: every strategy at its cost per task (peak memory: its peak),
    and every k of the sampling strategies (`<strategy>@k`). A cost nobody measured (none, or 0
    everywhere, as CPU seconds on the GPU simulator) is left out."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for cost in COSTS:
        points: dict[str, tuple[float, float]] = {}
        for name, s in summary["strategies"].items():
            value = _per_task(s, cost)
            if value is not None:
                points[name] = (value, s["pass_rate"])
        for strategy, by_k in (summary.get("by_k") or {}).items():
            for k, row in by_k.items():
                value = _per_task(row, cost)
                if value is not None and int(k) != len(by_k):     # the last k is the strategy itself
                    points[f"{strategy}@{k}"] = (value, row["pass_rate"])
        if points and any(value > 0 for value, _ in points.values()):    # all 0: nothing measured it
            out[cost] = points
    return out


def frontiers(summary: Mapping[str, Any]) -> dict[str, list[str]]:
    """`pareto` of summary.json: per cost, the points on the frontier."""
    return {cost: pareto(points) for cost, points in frontier_points(summary).items()}


def _per_task(row: Mapping[str, Any], cost: str) -> float | None:
    if cost == "peak_rss_bytes":
        value = row.get("peak_rss_bytes")
        return float(value) if value else None
    total, tasks = row.get(cost), row.get("tasks")
    if total is None or not tasks:
        return None
    return float(total) / int(tasks)
