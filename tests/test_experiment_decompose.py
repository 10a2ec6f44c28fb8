"""The decompose strategy's control flow on scripted model answers (which model gets which role,
what the checker's WRONG sends back, what the combiner is given); the built-in suite; the cost
frontier and the figures derived from one run (every k of sample-select, the spread of repeats),
checked against hand-computed values."""
from typing import Any

import pytest

from experiment.checking import judge_exact
from experiment.decompose import is_wrong, parse_plan
from experiment.derived import by_samples, by_vote, spread
from experiment.frontier import frontiers, pareto
from experiment.strategies import LARGE_SAMPLE_SELECT, Runner
from experiment.tasks import builtin_tasks
from helpers import ScriptedCalls

TASK = {"task_id": "builtin/multi-shopping", "suite": "builtin", "divisible": True,
        "prompt": "Pens cost 3 dollars, notebooks 5. Ana buys 4 pens and 3 notebooks; Ben 2 pens and 6 "
                  "notebooks. How many dollars do they spend together?",
        "check": {"kind": "exact", "answer": "63", "answer_kind": "number"}}


def judge(task, answer):
    return judge_exact(task, answer), answer


def test_plan_solve_check_retry_combine():
    calls = ScriptedCalls({
        "a": ["1. What does Ana spend on 4 pens at 3 and 3 notebooks at 5?\n2. What does Ben spend on 2 pens "
              "at 3 and 6 notebooks at 5?",                                   # planner
              "Answer: 27",                                                  # solver of part 1
              "WRONG: 6 notebooks cost 30, so Ben spends 36",                # checker of part 2
              "Ana 27 and Ben 36.\nAnswer: 63"],                             # combiner
        "b": ["Answer: 26",                                                  # solver of part 2 (wrong)
              "CORRECT",                                                     # checker of part 1
              "Answer: 36"],                                                 # part 2 again, with the reason
    })
    outcome = Runner(calls, judge, "e").decompose(TASK, ["a", "b"])
    roles = [(s["model"], s["tags"]["role"]) for s in calls.submitted]
    assert roles == [("a", "planner"), ("a", "solver"), ("b", "solver"), ("b", "checker"), ("a", "checker"),
                     ("b", "solver"), ("a", "combiner")]
    assert [s["tags"]["branch"] for s in calls.submitted] == list(range(7))
    assert {s["tags"]["strategy"] for s in calls.submitted} == {"decompose"}
    # a part is solved and checked with the whole task beside it (small planners drop the numbers)
    assert TASK["prompt"] in calls.submitted[1]["messages"][0]["content"]
    assert "Answer only this part of it: What does Ana spend" in calls.submitted[1]["messages"][0]["content"]
    assert TASK["prompt"] in calls.submitted[3]["messages"][0]["content"]
    retry = calls.submitted[5]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "Answer: 26"}
    assert "6 notebooks cost 30" in retry[-1]["content"]
    combine = calls.submitted[6]["messages"][0]["content"]
    assert "-> 27" in combine and "-> 36" in combine and "-> 26" not in combine     # the corrected answer
    assert outcome.solved and outcome.chosen is not None and outcome.chosen.role == "combiner"
    assert [a.role for a in outcome.attempts] == ["planner", "solver", "solver", "checker", "checker", "solver",
                                                  "combiner"]
    assert outcome.attempts[5].parent == 2 and not any(a.passed for a in outcome.attempts[:-1])
    assert outcome.chosen.record()["role"] == "combiner"


def test_a_plan_without_parts_is_solved_whole_by_the_combiner():
    calls = ScriptedCalls({"a": ["This cannot be split.", "Answer: 62"]})
    outcome = Runner(calls, judge, "e").decompose(TASK, ["a"])
    assert [s["tags"]["role"] for s in calls.submitted] == ["planner", "combiner"]
    assert TASK["prompt"] in calls.submitted[1]["messages"][0]["content"]
    assert not outcome.solved and len(outcome.attempts) == 2


def test_a_failed_solver_is_not_checked_and_gives_the_combiner_no_answer():
    calls = ScriptedCalls({"a": ["1. q one\n2. q two", None, "CORRECT", "Answer: 63"], "b": ["Answer: 36"]})
    outcome = Runner(calls, judge, "e").decompose(TASK, ["a", "b"])
    assert [(s["model"], s["tags"]["role"]) for s in calls.submitted] == [
        ("a", "planner"), ("a", "solver"), ("b", "solver"), ("a", "checker"), ("a", "combiner")]
    assert "q one -> (no answer)" in calls.submitted[-1]["messages"][0]["content"]
    assert outcome.solved


def test_plans_and_verdicts_are_read_as_small_models_write_them():
    assert parse_plan("Steps:\n1. first\n2) second\n- a detail\n3: third\n4. fourth\n5. fifth") == [
        "first", "second", "third", "fourth"]                      # numbered lines, at most four
    assert parse_plan("**1. Ana's spend?**\n   - pens\n   - notebooks\n**2. Ben's spend?**") == [
        "Ana's spend?", "Ben's spend?"]                            # emphasis dropped, details not parts
    assert parse_plan("- one\n- two\n  - a detail") == ["one", "two"]
    assert parse_plan("no list here") == []
    assert is_wrong("CORRECT") is None and is_wrong("Correct. The answer is right.") is None
    assert is_wrong("WRONG: it is 36") == "it is 36" and is_wrong("The answer is incorrect: 5 not 6") == "5 not 6"
    assert is_wrong("**WRONG**") is not None
    assert is_wrong("The proposed answer is correct; nothing is wrong with it.") is None
    assert is_wrong("The answer is not correct, it should be 36") == "it should be 36"
    assert is_wrong("Looks fine to me") is None                    # no verdict: the answer stands


def test_the_builtin_suite_has_forty_tasks_half_of_them_divisible():
    tasks = builtin_tasks()
    assert len(tasks) >= 40 and sum(t["divisible"] for t in tasks) >= len(tasks) / 2
    assert len({t["task_id"] for t in tasks}) == len(tasks)
    fields = next(t for t in tasks if t["task_id"] == "builtin/fields-order")
    assert judge_exact(fields, "Answer: maria lopez ; A-5521; Porto").passed
    recipe = next(t for t in tasks if t["task_id"] == "builtin/multi-recipe")
    assert judge_exact(recipe, "Answer: 750 g; 5 eggs").passed and judge_exact(recipe, "Answer: 750;5.0").passed
    assert not judge_exact(recipe, "Answer: 750;6").passed and not judge_exact(recipe, "Answer: 750").passed
    verdict = judge_exact(fields, "Answer: Maria Lopez;A-5521;Lisbon")
    assert not verdict.passed and verdict.score == pytest.approx(1 / 3) and "1 of 3" in (verdict.feedback or "")


def test_large_sample_select_samples_the_large_model_under_its_own_name():
    calls = ScriptedCalls({"L": ["runs", "ok"]})

    def public(task, answer):
        return judge(task, answer)[0].__class__(answer == "ok", 1.0, None, None), answer
    outcome = Runner(calls, lambda t, a: (judge_exact({**t, "check": {"kind": "exact", "answer": "ok"}}, a), a), "e",
                     seed_base=8).sample_select(TASK, ["L"], 2, public, strategy=LARGE_SAMPLE_SELECT)
    assert [s["options"]["seed"] for s in calls.submitted] == [8, 9]
    assert {s["tags"]["strategy"] for s in calls.submitted} == {LARGE_SAMPLE_SELECT}
    assert outcome.strategy == LARGE_SAMPLE_SELECT and outcome.chosen is not None and outcome.chosen.branch == 1


def test_pareto_frontier_by_hand():
    points = {"large": (10.0, 0.9), "branched": (12.0, 0.8), "sample@1": (2.0, 0.5), "sample@2": (4.0, 0.5),
              "decompose": (6.0, 0.7), "tie": (10.0, 0.9)}
    # branched costs more than large and passes fewer; sample@2 costs more than sample@1 for the same rate
    assert pareto(points) == ["sample@1", "decompose", "large", "tie"]
    summary: dict[str, Any] = {"strategies": {"large": {"tasks": 2, "pass_rate": 1.0, "cpu_s": 20.0, "peak_rss_bytes": 2e9,
                                        "energy_j": None},
                              "sample-select": {"tasks": 2, "pass_rate": 0.5, "cpu_s": 8.0, "peak_rss_bytes": 5e8,
                                                "energy_j": None}},
               "by_k": {"sample-select": {"1": {"tasks": 2, "pass_rate": 0.5, "cpu_s": 4.0, "peak_rss_bytes": 5e8},
                                          "2": {"tasks": 2, "pass_rate": 0.5, "cpu_s": 8.0, "peak_rss_bytes": 5e8}}}}
    assert frontiers(summary) == {"cpu_s": ["sample-select@1", "large"],
                                  "peak_rss_bytes": ["sample-select", "sample-select@1", "large"]}
    for row in [*summary["strategies"].values(), *summary["by_k"]["sample-select"].values()]:
        row["cpu_s"] = 0.0                  # the GPU simulator charges no CPU: nothing to draw a frontier on
    assert "cpu_s" not in frontiers(summary)


def test_every_k_is_read_off_one_run_with_its_costs():
    def sample(task, n, public, passed):
        return {"task_id": task, "strategy": "sample-select", "branch": n, "job_id": f"{task}-{n}",
                "public_passed": public, "passed": passed}
    attempts = [sample("t1", 0, False, False), sample("t1", 1, True, True),
                sample("t2", 0, True, True), sample("t2", 1, True, False)]
    costs = {"t1-0": (2.0, "m1", 100), "t1-1": (3.0, "m2", 300), "t2-0": (1.0, "m1", 150), "t2-1": (5.0, "m1", 120)}

    def entries(job_id):
        cpu, model, rss = costs[job_id]
        return [{"submitted_at": 0.0, "finished_at": 1.0, "model": model, "runtime_cpu_s": cpu, "run_s": cpu,
                 "runtime_peak_rss_bytes": rss, "prompt_tokens": 10, "output_tokens": 5}]
    rows = by_samples(attempts, ["t1", "t2"], 2, "sample-select", entries)
    assert rows["1"]["solved"] == 1 and rows["2"]["solved"] == 2
    assert rows["1"]["cpu_s"] == 3.0 and rows["2"]["cpu_s"] == 11.0
    # t1 with both samples holds m1 and m2 at once (100 + 300); t2 only m1 (the larger of 150 and 120)
    assert rows["1"]["peak_rss_bytes"] == 150 and rows["2"]["peak_rss_bytes"] == 400
    assert rows["2"]["tokens"] == 60 and rows["2"]["energy_j"] is None
    assert "cpu_s" not in by_samples(attempts, ["t1", "t2"], 2, "sample-select")["1"]


def test_the_spread_of_repeated_runs():
    rows = spread({"large": [0.5, 0.75, 1.0], "once": [0.4]})
    assert rows["large"] == {"pass_rates": [0.5, 0.75, 1.0], "mean": 0.75, "min": 0.5, "max": 1.0, "sd": 0.25}
    assert rows["once"]["sd"] == 0.0


def test_results_by_group_and_the_divisible_selection():
    from experiment.derived import by_group
    from experiment.tasks import select_tasks
    divisible = select_tasks("divisible:3")
    assert len(divisible) == 3 and all(t["divisible"] for t in divisible)
    tasks = [{"task_id": "HumanEval/0", "suite": "humaneval"}, *divisible[:2],
             {"task_id": "builtin/arith-square", "suite": "builtin", "divisible": False}]
    results = [{"task_id": t["task_id"], "strategy": "decompose", "solved": n != 1} for n, t in enumerate(tasks)]
    rows = by_group(results, tasks)["decompose"]
    assert rows["builtin-divisible"]["solved"] == 1 and rows["builtin-divisible"]["tasks"] == 2
    assert rows["humaneval"]["pass_rate"] == 1.0 and rows["builtin-single"]["tasks"] == 1
    assert by_group(results[:1], tasks[:1]) == {}                  # one group: nothing to break down


def test_the_majority_answer_of_the_first_k_samples_by_hand():
    """Self-consistency on exact-answer tasks: the answer most of the first k samples gave (a tie
    to the one given first; no answer at all, the first sample), code tasks left out."""
    def sample(task: str, branch: int, answer: str, passed: bool) -> dict[str, Any]:
        return {"task_id": task, "strategy": "sample-select", "branch": branch, "completion": answer,
                "passed": passed}

    attempts = [sample("a", i, answer, answer == "8") for i, answer in enumerate(["7", "8", " 8", "7"])]
    attempts += [sample("b", i, answer, answer == "5") for i, answer in enumerate(["", "5", "", ""])]
    attempts += [sample("h", i, "def f(): pass", True) for i in range(4)]
    tasks = [{"task_id": "a", "check": {"kind": "exact"}}, {"task_id": "b", "check": {"kind": "exact"}},
             {"task_id": "h", "check": {"kind": "python_tests"}}]
    votes = by_vote(list(reversed(attempts)), tasks, 4, "sample-select")
    # a: 7 | 7-8 tie, 7 first | 8 twice | 2-2 tie, 7 first; b: none, the first | 5 from then on
    assert {k: row["solved"] for k, row in votes.items()} == {"1": 0, "2": 1, "3": 2, "4": 1}
    assert votes["3"]["tasks"] == 2 and votes["3"]["pass_rate"] == 1.0
    assert by_vote(attempts, tasks[2:], 4, "sample-select") == {}
