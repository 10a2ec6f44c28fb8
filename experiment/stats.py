"""The statistics a comparison needs to say anything: how sure a pass rate is, whether two
strategies differ on the same tasks, and how sure a cost per task is. scipy does the arithmetic
(`binomtest`, `bootstrap`); this module says which test answers which question.

* A pass rate's 95% interval is Wilson's score interval: unlike the normal approximation it
  stays inside [0, 1] and holds up for the small task counts and the rates near 0 or 1 these
  runs have.
* Two strategies run on the same tasks are compared with McNemar's exact test: only the tasks
  one solved and the other did not carry information, and under "no difference" each of them
  goes either way with probability 1/2 (a two-sided binomial test on those tasks).
* A cost per task (CPU seconds, wall seconds) gets a bootstrap 95% interval of its mean over the
  tasks (percentile method, a fixed seed so that a summary is reproducible).
"""
from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def wilson(solved: int, tasks: int, confidence: float = CONFIDENCE) -> list[float]:
    """[low, high] of the pass rate `solved`/`tasks` (Wilson); [0, 1] without tasks."""
    if tasks <= 0:
        return [0.0, 1.0]
    interval = stats.binomtest(solved, tasks).proportion_ci(confidence_level=confidence, method="wilson")
    return [round(float(interval.low), 4), round(float(interval.high), 4)]


def mcnemar(first: Mapping[str, bool], second: Mapping[str, bool]) -> dict[str, Any]:
    """McNemar's exact test of two strategies over the tasks both ran: how many tasks both
    solved, only the first, only the second, neither, and the two-sided p-value (to 6 significant
    figures: a difference of 83 tasks against 2 has p ~ 1e-22, which is not 0)."""
    common = [task for task in first if task in second]
    both = sum(1 for t in common if first[t] and second[t])
    only_first = sum(1 for t in common if first[t] and not second[t])
    only_second = sum(1 for t in common if second[t] and not first[t])
    discordant = only_first + only_second
    p_value = float(stats.binomtest(only_first, discordant, 0.5).pvalue) if discordant else 1.0
    return {"tasks": len(common), "both": both, "only_first": only_first, "only_second": only_second,
            "neither": len(common) - both - discordant, "p_value": float(f"{min(p_value, 1.0):.6g}")}


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE, seed: int = 0) -> list[float] | None:
    """[low, high] of the mean of `values` (bootstrap, percentile); the mean twice for fewer than
    two values or when they are all equal; None without values."""
    if not values:
        return None
    data = np.asarray(values, dtype=float)
    if len(data) < 2 or np.all(data == data[0]):
        mean = round(float(data.mean()), 4)
        return [mean, mean]
    result = stats.bootstrap((data,), np.mean, confidence_level=confidence, n_resamples=BOOTSTRAP_RESAMPLES,
                             method="percentile", rng=np.random.default_rng(seed))
    return [round(float(result.confidence_interval.low), 4), round(float(result.confidence_interval.high), 4)]


def per_solved_ci(costs: Sequence[float], solved: Sequence[bool], confidence: float = CONFIDENCE,
                  seed: int = 0) -> list[float | None] | None:
    """[low, high] of a cost per solved task (the tasks' summed cost over the tasks solved), a
    paired bootstrap over the tasks (percentile); a resample that solved nothing costs infinitely
    much per solved task, so a high end may be `inf` (JSON: null) when few tasks were solved.
    None without a solved task."""
    cost, won = np.asarray(costs, dtype=float), np.asarray(solved, dtype=float)
    if len(cost) == 0 or won.sum() == 0:
        return None
    if len(cost) < 2:
        value: float | None = round(float(cost.sum() / won.sum()), 4)
        return [value, value]

    def ratio(c: np.ndarray, s: np.ndarray, axis: int = -1) -> np.ndarray:
        total = s.sum(axis=axis)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(total > 0, c.sum(axis=axis) / np.maximum(total, 1), np.inf)

    with warnings.catch_warnings(), np.errstate(invalid="ignore"):     # its standard error of infinities
        warnings.simplefilter("ignore", RuntimeWarning)
        result = stats.bootstrap((cost, won), ratio, paired=True, vectorized=True, confidence_level=confidence,
                                 n_resamples=BOOTSTRAP_RESAMPLES, method="percentile",
                                 rng=np.random.default_rng(seed))
    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
    return [round(low, 4), round(high, 4) if np.isfinite(high) else None]


def comparisons(solved_by: Mapping[str, Mapping[str, bool]]) -> list[dict[str, Any]]:
    """McNemar's test for every pair of strategies (in the order given), over their common tasks."""
    return [{"first": a, "second": b, **mcnemar(solved_by[a], solved_by[b])}
            for a, b in itertools.combinations(solved_by, 2)]
