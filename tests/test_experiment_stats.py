"""The comparison's statistics against values computed by hand, and in the summary."""
import math

import pytest

from experiment.report import markdown_table, summarize
from experiment.stats import comparisons, mcnemar, mean_ci, wilson


def wilson_by_hand(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    p = k / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(19, 20), (16, 20), (0, 20), (20, 20), (82, 164), (1, 3)])
def test_the_wilson_interval_is_the_score_interval(k, n):
    low, high = wilson(k, n)
    expected = wilson_by_hand(k, n)
    assert low == pytest.approx(expected[0], abs=1e-4) and high == pytest.approx(expected[1], abs=1e-4)
    assert 0.0 <= low <= k / n <= high <= 1.0


def test_wilson_for_19_of_20_by_the_numbers():
    assert wilson(19, 20) == pytest.approx([0.7639, 0.9911], abs=1e-4)
    assert wilson(0, 0) == [0.0, 1.0]


def test_mcnemar_exact_counts_the_discordant_tasks_only():
    first = {"a": True, "b": True, "c": True, "d": True, "e": True, "f": False, "g": True, "h": False}
    second = {"a": True, "b": False, "c": False, "d": False, "e": False, "f": True, "g": False, "h": False}
    result = mcnemar(first, second)
    # 5 tasks only the first solved, 1 only the second: p = 2 x P(X <= 1), X ~ Binomial(6, 1/2) = 2 x 7/64
    assert result == {"tasks": 8, "both": 1, "only_first": 5, "only_second": 1, "neither": 1,
                      "p_value": pytest.approx(14 / 64)}
    assert mcnemar({"a": True}, {"a": True})["p_value"] == 1.0            # no discordant task: no evidence
    assert mcnemar({"a": True, "b": True}, {"b": False, "c": True})["tasks"] == 1   # common tasks only


def test_mcnemar_keeps_a_tiny_p_value_instead_of_rounding_it_to_0():
    # the 164-task run's large against decompose: 83 tasks only large solved, 2 only decompose
    first = {f"t{i}": i < 83 for i in range(85)}
    second = {f"t{i}": i >= 83 for i in range(85)}
    by_hand = 2 * (1 + 85 + 85 * 84 / 2) / 2 ** 85          # 2 x P(X <= 2), X ~ Binomial(85, 1/2)
    assert mcnemar(first, second)["p_value"] == pytest.approx(by_hand, rel=1e-3)
    assert 0 < mcnemar(first, second)["p_value"] < 1e-20


def test_the_bootstrap_interval_holds_the_mean_and_is_reproducible():
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    interval = mean_ci(values)
    assert interval is not None
    low, high = interval
    assert low < sum(values) / len(values) < high and mean_ci(values) == [low, high]
    assert mean_ci([2.5]) == [2.5, 2.5] and mean_ci([3.0, 3.0]) == [3.0, 3.0] and mean_ci([]) is None


def test_the_cost_per_solved_task_has_a_paired_bootstrap_interval():
    from experiment.stats import per_solved_ci
    interval = per_solved_ci([10.0, 20.0, 30.0, 40.0], [True, False, True, True])
    assert interval is not None and interval[0] is not None and interval[1] is not None
    assert interval[0] < 100 / 3 < interval[1]                     # 100 CPU s over 3 solved tasks
    assert per_solved_ci([5.0, 5.0, 5.0], [True] * 3) == [5.0, 5.0]
    assert per_solved_ci([10.0, 20.0], [True, False]) == [10.0, None]   # half the resamples solve nothing
    assert per_solved_ci([1.0, 2.0], [False, False]) is None


def test_the_summary_carries_intervals_and_paired_tests():
    results = []
    for i in range(6):
        results.append({"task_id": f"t{i}", "strategy": "large", "solved": i < 5, "cpu_s": 10.0 + i, "wall_s": 5.0})
        results.append({"task_id": f"t{i}", "strategy": "branched", "solved": i < 2, "cpu_s": 4.0, "wall_s": 6.0})
    summary = summarize("e", [f"t{i}" for i in range(6)], results)
    large = summary["strategies"]["large"]
    assert large["pass_rate_ci95"] == wilson(5, 6) and large["per_task_ci95"]["cpu_s"][0] <= 12.5
    low, high = large["per_solved_task_ci95"]["cpu_s"]
    assert low <= 75 / 5 <= high                                   # 75 CPU s over 5 solved tasks
    assert summary["comparisons"] == [{"first": "large", "second": "branched", **mcnemar(
        {f"t{i}": i < 5 for i in range(6)}, {f"t{i}": i < 2 for i in range(6)})}]
    assert summary["comparisons"] == comparisons({"large": {f"t{i}": i < 5 for i in range(6)},
                                                  "branched": {f"t{i}": i < 2 for i in range(6)}})
    table = markdown_table(summary)
    assert "95% interval" in table and "p (McNemar, exact)" in table and "| large | branched | 2 | 3 | 0 |" in table
