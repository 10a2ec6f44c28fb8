"""Figures derived from a run's attempts (pure): sampling strategies at every k up to their K,
and the spread of pass rates over repeated runs.

Samples are independent, so the outcome and the cost of sample-select with only its first k
samples can be read off one run of K: the answer is the first of those k that passed the public
checks (else the first), and the cost is what those k jobs cost in the ledger.
"""
from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from experiment.costs import ledger_costs
from experiment.frontier import frontiers
from experiment.stats import wilson
from experiment.strategies import SAMPLE_SELECT, solved_with

Entries = Callable[[str], list[dict[str, Any]]]     # job id -> its ledger entries


def derive(summary: dict[str, Any], results: list[dict[str, Any]], attempts: list[dict[str, Any]],
           tasks: Sequence[Mapping[str, Any]], sampled: Sequence[str], samples: int,
           entries_of: Entries | None) -> dict[str, Any]:
    """A run's summary with what is read off its attempts: every k of the sampling strategies
    (`by_k`, `by_vote`), the pass rates per group of tasks (`by_group`) and the frontier (`pareto`)."""
    task_ids = [t["task_id"] for t in tasks]
    if sampled:
        summary["by_k"] = {s: by_samples(attempts, task_ids, samples, s, entries_of) for s in sampled}
        votes = {s: by_vote(attempts, tasks, samples, s) for s in sampled}
        if any(votes.values()):
            summary["by_vote"] = {s: rows for s, rows in votes.items() if rows}
        if SAMPLE_SELECT in summary["by_k"]:
            summary["sample_select_by_k"] = summary["by_k"][SAMPLE_SELECT]
    summary["pareto"] = frontiers(summary)
    groups = by_group(results, tasks)
    if groups:
        summary["by_group"] = groups
    return summary


def by_samples(attempts: list[dict[str, Any]], task_ids: list[str], samples: int, strategy: str,
               entries_of: Entries | None = None) -> dict[str, Any]:
    """For every k up to `samples`: tasks solved with the first k samples, the pass rate and its
    interval, and (given `entries_of`) what those k samples cost: `cpu_s`, `model_s`, `tokens`,
    `energy_j` summed over tasks, `peak_rss_bytes` the largest over tasks."""
    per_task = _samples_by_task(attempts, task_ids, strategy)
    entries = {a["job_id"]: entries_of(a["job_id"]) for sampled in per_task.values() for a in sampled
               if a.get("job_id")} if entries_of is not None else {}
    out = {}
    for k in range(1, samples + 1):
        solved = sum(1 for sampled in per_task.values() if solved_with(sampled, k))
        row: dict[str, Any] = {"solved": solved, "tasks": len(per_task),
                               "pass_rate": round(solved / len(per_task), 4) if per_task else 0.0,
                               "pass_rate_ci95": wilson(solved, len(per_task))}
        if entries_of is not None:
            costs = [ledger_costs([e for a in sampled[:k] for e in entries.get(a.get("job_id") or "", [])])
                     for sampled in per_task.values()]
            for key in ("cpu_s", "model_s", "tokens"):
                row[key] = round(sum(c[key] for c in costs), 4)
            energies = [c["energy_j"] for c in costs if c["energy_j"] is not None]
            row["energy_j"] = round(sum(energies), 3) if energies else None
            row["peak_rss_bytes"] = max((c["peak_rss_bytes"] for c in costs), default=0)
        out[str(k)] = row
    return out


def by_vote(attempts: list[dict[str, Any]], tasks: Sequence[Mapping[str, Any]], samples: int,
            strategy: str) -> dict[str, Any]:
    """Self-consistency on the exact-answer tasks: for every k up to `samples`, the answer most of
    the first k samples gave (compared without case and surrounding space; a tie goes to the one
    given first; no answer at all, the first sample's) instead of the first that passed the public
    checks; tasks solved, pass rate and its interval. Empty when no task has an exact answer."""
    exact = [t["task_id"] for t in tasks if t["check"]["kind"] != "python_tests"]
    per_task = _samples_by_task(attempts, exact, strategy)
    if not per_task:
        return {}
    out: dict[str, Any] = {}
    for k in range(1, samples + 1):
        solved = sum(1 for sampled in per_task.values() if _voted(sampled[:k]).get("passed"))
        out[str(k)] = {"solved": solved, "tasks": len(per_task), "pass_rate": round(solved / len(per_task), 4),
                       "pass_rate_ci95": wilson(solved, len(per_task))}
    return out


def _samples_by_task(attempts: list[dict[str, Any]], task_ids: list[str], strategy: str
                     ) -> dict[str, list[dict[str, Any]]]:
    """Each task's samples under `strategy`, in the order they were drawn; tasks without any left out."""
    per_task = {t: sorted((a for a in attempts if a["strategy"] == strategy and a["task_id"] == t),
                          key=lambda a: a["branch"]) for t in task_ids}
    return {t: sampled for t, sampled in per_task.items() if sampled}


def _voted(sampled: list[dict[str, Any]]) -> dict[str, Any]:
    answers = [(a.get("completion") or "").strip().casefold() for a in sampled]
    given = [answer for answer in answers if answer]
    if not given:
        return sampled[0]
    top = max(given, key=lambda answer: (given.count(answer), -answers.index(answer)))
    return sampled[answers.index(top)]


def group_of(task: Mapping[str, Any]) -> str:
    """`humaneval`, `builtin-single` or `builtin-divisible` (where decompose is meant to help)."""
    if task.get("suite") == "builtin":
        return "builtin-divisible" if task.get("divisible") else "builtin-single"
    return str(task.get("suite") or "other")


def by_group(results: list[dict[str, Any]], tasks: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per strategy and per group of tasks (`group_of`): solved, tasks, pass rate and its interval;
    only where a run mixes groups."""
    groups = {t["task_id"]: group_of(t) for t in tasks}
    if len(set(groups.values())) < 2:
        return {}
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        row = out.setdefault(r["strategy"], {}).setdefault(groups.get(r["task_id"], "other"),
                                                          {"solved": 0, "tasks": 0})
        row["tasks"] += 1
        row["solved"] += int(bool(r["solved"]))
    for strategy in out.values():
        for row in strategy.values():
            row["pass_rate"] = round(row["solved"] / row["tasks"], 4)
            row["pass_rate_ci95"] = wilson(row["solved"], row["tasks"])
    return out


def spread(pass_rates: Mapping[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Per strategy, its pass rate in each repeat and their mean, lowest, highest and standard
    deviation (0 for one repeat)."""
    return {name: {"pass_rates": rates, "mean": round(statistics.fmean(rates), 4), "min": min(rates),
                   "max": max(rates), "sd": round(statistics.stdev(rates), 4) if len(rates) > 1 else 0.0}
            for name, rates in pass_rates.items() if rates}
