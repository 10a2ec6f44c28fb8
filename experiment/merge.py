"""Several runs of compare.py as one (pure): the strategies a run left out, or the tasks, run
later or side by side in other processes, joined into one summary as if one run had made them.

Each run's summary.json brings its strategies, its `per_task` rows and what it derived from its
attempts (`by_k`, `by_vote`, `by_group`). No (task, strategy) may be in two runs. A strategy from
one run is kept as that run summarized it; a strategy whose tasks were split over runs is
summarized again from their `per_task` rows (its `by_model` summed), and its counts per k added.
The paired tests and the frontier are computed again over everything.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from experiment.frontier import frontiers
from experiment.report import solved_by, strategy_summary
from experiment.stats import comparisons, wilson
from experiment.strategies import SAMPLE_SELECT

Summary = Mapping[str, Any]
SUMMED_BY_K = ("cpu_s", "model_s", "tokens")
BY_MODEL = ("jobs", "model_s", "queue_wait_s", "tokens")


class MergeError(ValueError):
    """The runs cannot be joined (a task run twice under one strategy, samples counted differently)."""


def merge(experiment: str, runs: Sequence[Summary]) -> dict[str, Any]:
    """One summary for `runs` (summary.json documents), named `experiment`."""
    if len(runs) < 2:
        raise MergeError("merging takes at least two runs")
    seen: dict[tuple[str, str], str] = {}
    for run in runs:
        for row in run["per_task"]:
            key = (row["task_id"], row["strategy"])
            if key in seen:
                raise MergeError(f"{key[0]} under {key[1]} is in both {seen[key]} and {run['experiment']}")
            seen[key] = run["experiment"]
    rows = [row for run in runs for row in run["per_task"]]
    strategies: dict[str, Any] = {}
    for name in dict.fromkeys(row["strategy"] for row in rows):
        holders = [run["strategies"][name] for run in runs if name in run["strategies"]]
        if len(holders) == 1:
            strategies[name] = holders[0]
        else:
            strategies[name] = {**strategy_summary([row for row in rows if row["strategy"] == name]),
                                "by_model": _added([h.get("by_model") or {} for h in holders], BY_MODEL)}
    out: dict[str, Any] = {
        "experiment": experiment, "merged_from": [run["experiment"] for run in runs],
        "tasks": list(dict.fromkeys(task for run in runs for task in run["tasks"])),
        "strategies": strategies, "comparisons": comparisons(solved_by(rows, strategies)), "per_task": rows}
    for table, join in (("by_k", _by_k_row), ("by_vote", _count_row), ("by_group", _count_row)):
        joined = _per_strategy([run.get(table) or {} for run in runs], join, table)
        if joined:
            out[table] = joined
    if SAMPLE_SELECT in out.get("by_k", {}):
        out["sample_select_by_k"] = out["by_k"][SAMPLE_SELECT]
    out["pareto"] = frontiers(out)
    return out


def _per_strategy(tables: list[Mapping[str, Any]], join: Callable[[list[Mapping[str, Any]]], dict[str, Any]],
                  key: str) -> dict[str, Any]:
    """`by_k`, `by_vote` or `by_group` of the runs: strategy -> row name -> row, rows of a strategy
    found in several runs joined by `join`."""
    out: dict[str, Any] = {}
    for strategy in dict.fromkeys(s for table in tables for s in table):
        parts = [table[strategy] for table in tables if strategy in table]
        if len(parts) == 1:
            out[strategy] = parts[0]
            continue
        if key != "by_group" and any(set(part) != set(parts[0]) for part in parts):
            raise MergeError(f"{strategy} drew a different number of samples in the runs ({key}): "
                             "merge runs made with the same --samples")
        names = list(dict.fromkeys(name for part in parts for name in part))
        out[strategy] = {name: join([part[name] for part in parts if name in part]) for name in names}
    return out


def _count_row(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    solved, tasks = sum(int(r["solved"]) for r in rows), sum(int(r["tasks"]) for r in rows)
    return {"solved": solved, "tasks": tasks, "pass_rate": round(solved / tasks, 4) if tasks else 0.0,
            "pass_rate_ci95": wilson(solved, tasks)}


def _by_k_row(rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """A k's row of by_k over several runs' tasks: counts and costs added, memory the highest."""
    out = _count_row(rows)
    if all(key in r for r in rows for key in SUMMED_BY_K):
        for key in SUMMED_BY_K:
            out[key] = round(sum(float(r[key]) for r in rows), 4)
        out["tokens"] = int(out["tokens"])
        energies = [float(r["energy_j"]) for r in rows if r.get("energy_j") is not None]
        out["energy_j"] = round(sum(energies), 3) if energies else None
        out["peak_rss_bytes"] = max(int(r.get("peak_rss_bytes") or 0) for r in rows)
    return out


def _added(tables: list[Mapping[str, Mapping[str, float]]], keys: Sequence[str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for table in tables:
        for name, row in table.items():
            mine = out.setdefault(name, dict.fromkeys(keys, 0))
            for key in keys:
                mine[key] = round(mine[key] + row.get(key, 0), 4)
    return out
