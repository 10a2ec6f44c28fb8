"""Several runs of compare.py as one (pure): the strategies a run left out, or the tasks, run
later or side by side in other processes, joined into one summary as if one run had made them.

Each run's summary.json brings its strategies, its `per_task` rows and what it derived from its
attempts (`by_k`, `by_vote`). No (task, strategy) may be in two runs. A strategy from one run is
kept as that run summarized it; a strategy whose tasks were split over runs is summarized again
from their `per_task` rows, its tasks in the merged order (its sums the runs' own, its `by_model`
added, its counts per k added). The paired tests, the groups of tasks and the frontier are
computed again over everything. The order of the runs is the order of tasks and strategies.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from experiment.derived import by_group
from experiment.frontier import frontiers
from experiment.report import SUMMED, solved_by, strategy_summary
from experiment.stats import comparisons, wilson
from experiment.strategies import SAMPLE_SELECT

Summary = Mapping[str, Any]
SUMMED_BY_K = ("cpu_s", "model_s", "tokens")
BY_MODEL = ("jobs", "model_s", "queue_wait_s", "tokens")


class MergeError(ValueError):
    """The runs cannot be joined (not a finished run, a task run twice under one strategy, samples
    counted differently, other models)."""


def check_run(run: Any, attempts: Sequence[Any] = ()) -> None:
    """That `run` is a summary.json compare.py wrote (and `attempts` its results.jsonl's lines)."""
    if not isinstance(run, Mapping) or not isinstance(run.get("experiment"), str):
        raise MergeError("its summary.json is not a run's summary (no experiment)")
    if not isinstance(run.get("tasks"), list) or not isinstance(run.get("strategies"), Mapping):
        raise MergeError("its summary.json has no tasks or strategies")
    rows = run.get("per_task")
    if not isinstance(rows, list) or not all(isinstance(r, Mapping) and {"task_id", "strategy", "solved"} <= set(r)
                                             for r in rows):
        raise MergeError("its summary.json has no per_task rows (task_id, strategy, solved)")
    counted = {name: sum(1 for r in rows if r["strategy"] == name) for name in {r["strategy"] for r in rows}}
    listed = {name: (s.get("tasks") if isinstance(s, Mapping) else None) for name, s in run["strategies"].items()}
    if counted != listed:
        raise MergeError("its strategies do not match its per_task rows (a summary from before a --resume?)")
    recorded = {(r["task_id"], r["strategy"]) for r in rows}
    for attempt in attempts:
        if not isinstance(attempt, Mapping) or (attempt.get("task_id"), attempt.get("strategy")) not in recorded:
            raise MergeError("its results.jsonl holds an attempt its summary.json does not (a summary from "
                             "before a --resume?)")


def merge(experiment: str, runs: Sequence[Summary], tasks: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """One summary for `runs` (summary.json documents, as `check_run` takes them), named
    `experiment`; `tasks`: the task documents (for `by_group`: which suite, which divisible)."""
    if len(runs) < 2:
        raise MergeError("merging takes at least two runs")
    seen: dict[tuple[str, str], str] = {}
    for run in runs:
        for row in run["per_task"]:
            key = (row["task_id"], row["strategy"])
            if key in seen:
                raise MergeError(f"{key[0]} under {key[1]} is in both {seen[key]} and {run['experiment']}")
            seen[key] = run["experiment"]
    task_ids = list(dict.fromkeys(task for run in runs for task in run["tasks"]))
    position = {task: i for i, task in enumerate(task_ids)}
    names = list(dict.fromkeys(row["strategy"] for run in runs for row in run["per_task"]))
    rows = sorted((row for run in runs for row in run["per_task"]),
                  key=lambda r: (names.index(r["strategy"]), position.get(r["task_id"], len(position))))
    strategies: dict[str, Any] = {}
    for name in names:
        holders = [run["strategies"][name] for run in runs if name in run["strategies"]]
        strategies[name] = holders[0] if len(holders) == 1 else _split(name, holders, rows)
    out: dict[str, Any] = {
        "experiment": experiment,
        "merged_from": [{"experiment": run["experiment"], "command": run.get("command")} for run in runs],
        "tasks": task_ids, "strategies": strategies, "comparisons": comparisons(solved_by(rows, strategies)),
        "per_task": rows}
    for table, join in (("by_k", _by_k_row), ("by_vote", _count_row)):
        joined = _per_strategy([run.get(table) or {} for run in runs], join, table)
        if joined:
            out[table] = joined
    if SAMPLE_SELECT in out.get("by_k", {}):
        out["sample_select_by_k"] = out["by_k"][SAMPLE_SELECT]
    out["pareto"] = frontiers(out)
    groups = by_group(rows, [t for t in tasks if t["task_id"] in position])
    if groups:
        out["by_group"] = groups
    return out


def _split(name: str, holders: list[Mapping[str, Any]], rows: list[Mapping[str, Any]]) -> dict[str, Any]:
    """A strategy whose tasks are in several runs, summarized again over all of them."""
    models = [sorted(h.get("models") or []) for h in holders]
    if any(m != models[0] for m in models):
        raise MergeError(f"{name} ran with other models in the runs ({' / '.join(', '.join(m) for m in models)})")
    out = strategy_summary([dict(r) for r in rows if r["strategy"] == name])
    for key in SUMMED:        # the runs' own sums (older per_task rows lack client_wall_s)
        out[key] = round(sum(float(h.get(key) or 0) for h in holders), 4)
        out["per_solved_task"][key] = round(out[key] / out["solved"], 4) if out["solved"] else None
    out["tokens"], out["attempts"] = int(out["tokens"]), int(out["attempts"])
    out["models"] = models[0]
    out["by_model"] = _added([h.get("by_model") or {} for h in holders], BY_MODEL)
    return out


def _per_strategy(tables: list[Mapping[str, Any]], join: Callable[[list[Mapping[str, Any]]], dict[str, Any]],
                  key: str) -> dict[str, Any]:
    """`by_k` or `by_vote` of the runs: strategy -> k -> row, the rows of a strategy found in
    several runs joined by `join`."""
    out: dict[str, Any] = {}
    for strategy in dict.fromkeys(s for table in tables for s in table):
        parts = [table[strategy] for table in tables if strategy in table]
        if any(set(part) != set(parts[0]) for part in parts):
            raise MergeError(f"{strategy} drew a different number of samples in the runs ({key}): "
                             "merge runs made with the same --samples")
        out[strategy] = parts[0] if len(parts) == 1 else {k: join([part[k] for part in parts]) for k in parts[0]}
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
