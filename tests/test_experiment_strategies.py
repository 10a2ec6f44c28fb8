"""The strategies' control flow on scripted model answers: attempt, feedback, branch limit,
combine; and the summary's arithmetic over per-task results."""
import pytest

from experiment.checking import Verdict
from experiment.report import markdown_table, summarize
from experiment.strategies import BRANCHED, LARGE, SAMPLE_SELECT, Runner, combine, solved_with
from experiment.tasks import builtin_tasks
from helpers import ScriptedCalls

TASK = {"task_id": "t/1", "suite": "toy", "prompt": "Say the word.", "check": {"kind": "exact", "answer": "ok"}}


def judge(task, answer):
    """'ok' passes; 'runs' is a wrong answer that ran (0.5); anything else did not run (0.1)."""
    if answer == "ok":
        return Verdict(True, 1.0, None, None), answer
    if answer.startswith("runs"):
        return Verdict(False, 0.5, f"wrong: {answer}", "AssertionError"), answer
    return Verdict(False, 0.1, f"broken: {answer}", "SyntaxError"), answer


def public(task, answer):
    """The public checks: any answer that ran ('ok' or 'runs...') passes them."""
    return Verdict(answer == "ok" or answer.startswith("runs"), 1.0, None, None), answer


def test_sample_select_takes_the_first_sample_that_passes_the_public_checks():
    calls = ScriptedCalls({"a": ["broken", "ok"], "b": ["runs 1", "broken"]})
    outcome = Runner(calls, judge, "e").sample_select(TASK, ["a", "b"], samples=4, public=public)
    assert [s["model"] for s in calls.submitted] == ["a", "b", "a", "b"]           # the models in turn, all at once
    assert [s["options"] for s in calls.submitted] == [{"temperature": 0.8, "seed": n} for n in range(4)]
    assert {s["tags"]["strategy"] for s in calls.submitted} == {SAMPLE_SELECT}
    # sample 1 ("runs 1") is the first to pass the public checks: chosen, though it fails the hidden tests
    assert outcome.chosen is not None and outcome.chosen.branch == 1 and not outcome.solved
    assert [a.public_passed for a in outcome.attempts] == [False, True, True, False]
    records = [a.record() for a in outcome.attempts]
    assert [solved_with(records, k) for k in (1, 2, 3, 4)] == [False, False, False, False]


def test_with_fewer_samples_the_outcome_is_read_off_one_run():
    calls = ScriptedCalls({"a": ["broken", "ok", "runs 2"]})
    outcome = Runner(calls, judge, "e").sample_select(TASK, ["a"], samples=3, public=public)
    records = [a.record() for a in outcome.attempts]
    assert outcome.solved and outcome.chosen is not None and outcome.chosen.branch == 1
    # one sample: the broken one (no sample passed the public checks: the first is the answer)
    assert [solved_with(records, k) for k in (1, 2, 3)] == [False, True, True]
    failed = ScriptedCalls({"a": [None, "ok"]})                                    # a job that failed outright
    assert Runner(failed, judge, "e").sample_select(TASK, ["a"], samples=2, public=public).solved


def test_large_is_one_attempt_tagged_with_the_experiment():
    calls = ScriptedCalls({"big": ["runs 1"]})
    outcome = Runner(calls, judge, "exp1").large(TASK, "big")
    assert [a.branch for a in outcome.attempts] == [0] and not outcome.solved
    assert calls.submitted[0]["tags"] == {"experiment": "exp1", "strategy": LARGE, "task_id": "t/1",
                                          "branch": 0, "role": "attempt"}
    assert outcome.chosen is outcome.attempts[0] and outcome.job_ids == ["job0"]


def test_every_small_model_attempts_at_once_and_a_pass_ends_the_task():
    calls = ScriptedCalls({"a": ["runs 1"], "b": ["ok"]})
    outcome = Runner(calls, judge, "e").branched(TASK, ["a", "b"], max_branches=4)
    assert outcome.solved and outcome.chosen is not None and outcome.chosen.model == "b" and outcome.chosen.branch == 1
    assert len(calls.submitted) == 2            # no second round once an answer passed


def test_feedback_goes_back_to_the_same_model_when_its_answer_ran():
    calls = ScriptedCalls({"a": ["runs 1", "ok"], "b": ["broken", "x"]})
    outcome = Runner(calls, judge, "e").branched(TASK, ["a", "b"], max_branches=3)
    assert outcome.solved and [a.branch for a in outcome.attempts] == [0, 1, 2]
    retry = calls.submitted[2]
    assert retry["model"] == "a" and retry["tags"]["role"] == "retry" and outcome.attempts[2].parent == 0
    # the retry carries the conversation: the question, the failed answer, and the test's verdict
    roles = [m["role"] for m in retry["messages"]]
    assert roles == ["user", "assistant", "user"] and retry["messages"][1]["content"] == "runs 1"
    assert "wrong: runs 1" in retry["messages"][2]["content"]


def test_a_branch_whose_answer_did_not_run_moves_to_the_best_model_so_far():
    calls = ScriptedCalls({"a": ["runs 1", "runs 2", "runs 3"], "b": ["broken"]})
    outcome = Runner(calls, judge, "e").branched(TASK, ["a", "b"], max_branches=4)
    second_round = calls.submitted[2:4]
    assert [s["model"] for s in second_round] == ["a", "a"]       # b's branch continues on a
    assert [outcome.attempts[i].parent for i in (2, 3)] == [0, 1]
    assert not outcome.solved and len(outcome.attempts) == 4


def test_the_branch_limit_counts_every_attempt():
    calls = ScriptedCalls({"a": ["runs"] * 10, "b": ["runs"] * 10})
    for limit in (1, 2, 3, 5):
        calls.submitted.clear()
        outcome = Runner(calls, judge, "e").branched(TASK, ["a", "b"], max_branches=limit)
        assert len(outcome.attempts) == limit == len(calls.submitted)
        assert sorted(a.branch for a in outcome.attempts) == list(range(limit))


def test_a_failed_job_starts_its_branch_over_without_feedback():
    calls = ScriptedCalls({"a": [None, "ok"]})
    outcome = Runner(calls, judge, "e").branched(TASK, ["a"], max_branches=2)
    assert outcome.attempts[0].error == "job failed: runtime error" and outcome.solved
    assert len(calls.submitted[1]["messages"]) == 1


def test_combine_takes_the_first_pass_else_the_best_score():
    calls = ScriptedCalls({"a": ["broken", "runs 2"], "b": ["runs 1", "runs 3"]})
    outcome = Runner(calls, judge, "e").branched(TASK, ["a", "b"], max_branches=3)
    assert not outcome.solved and outcome.chosen is not None and outcome.chosen.branch == 1   # the first of the best-scoring
    assert combine([]) is None


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError):
        Runner(ScriptedCalls({}), judge, "e").branched(TASK, [], max_branches=2)


def test_summary_sums_costs_and_divides_by_solved_tasks():
    results = [
        {"task_id": "a", "strategy": LARGE, "solved": True, "attempts": 1, "wall_s": 4.0, "model_s": 3.0,
         "cpu_s": 3.5, "peak_rss_bytes": 1_200_000_000, "tokens": 300, "energy_j": None, "models": ["big"]},
        {"task_id": "b", "strategy": LARGE, "solved": False, "attempts": 1, "wall_s": 6.0, "model_s": 5.0,
         "cpu_s": 5.5, "peak_rss_bytes": 1_300_000_000, "tokens": 500, "energy_j": None, "models": ["big"]},
        {"task_id": "a", "strategy": BRANCHED, "solved": True, "attempts": 3, "wall_s": 2.0, "model_s": 2.5,
         "cpu_s": 2.0, "peak_rss_bytes": 700_000_000, "tokens": 900, "energy_j": 10.0, "models": ["s1", "s2"]},
        {"task_id": "b", "strategy": BRANCHED, "solved": True, "attempts": 1, "wall_s": 1.0, "model_s": 0.5,
         "cpu_s": 1.0, "peak_rss_bytes": 600_000_000, "tokens": 100, "energy_j": 2.5, "models": ["s1"]},
    ]
    summary = summarize("x", ["a", "b"], results)
    large, branched = summary["strategies"][LARGE], summary["strategies"][BRANCHED]
    assert (large["solved"], large["pass_rate"], large["wall_s"], large["tokens"]) == (1, 0.5, 10.0, 800)
    assert large["per_solved_task"]["model_s"] == 8.0 and large["energy_j"] is None
    assert large["peak_rss_bytes"] == 1_300_000_000
    assert large["per_solved_task"]["peak_rss_bytes"] == 1_200_000_000   # the peak over the tasks it solved
    assert branched["pass_rate"] == 1.0 and branched["attempts"] == 4 and branched["energy_j"] == 12.5
    assert branched["per_solved_task"]["cpu_s"] == 1.5 and branched["models"] == ["s1", "s2"]
    table = markdown_table(summary)
    assert "| large | big | 50% | 9%–91% | 1 |" in table and "| branched | s1, s2 | 100% | 34%–100% | 2 |" in table
    # CPU s per task and per solved task, with their bootstrap intervals (one solved task of two: no finite high end)
    assert "| 4.5 (3.5–5.5) | 9.0 (3.5–∞) |" in table and "| 1.5 (1.0–2.0) | 1.5 (1.0–2.0) |" in table


def test_builtin_tasks_have_exact_answers_their_checker_accepts():
    from experiment.checking import judge_exact
    for task in builtin_tasks():
        answer = task["check"]["answer"]
        assert judge_exact(task, f"Let me think.\nAnswer: {answer}").passed, task["task_id"]
        assert not judge_exact(task, "Answer: 123456789").passed, task["task_id"]


def test_tasks_are_named_as_humaneval_names_them_or_by_number_alone():
    from experiment.tasks import TaskSpecError, select_tasks
    chosen = select_tasks("humaneval:2,HumanEval/7,humaneval/9")
    assert [t["task_id"] for t in chosen] == ["HumanEval/2", "HumanEval/7", "HumanEval/9"]
    assert [t["task_id"] for t in select_tasks("humaneval:2")] == ["HumanEval/0", "HumanEval/1"]
    for bad in ("humaneval:HumanEval/999", "humaneval:0", "nope:3", "humaneval:"):
        with pytest.raises(TaskSpecError):
            select_tasks(bad)


def test_compare_refuses_a_bad_experiment_name_before_it_starts_anything(capsys):
    import compare
    with pytest.raises(SystemExit) as exit_:
        compare.main(["--tasks", "builtin:1", "--experiment", "../elsewhere"])
    assert exit_.value.code == 2 and "--experiment takes" in capsys.readouterr().err
    args = compare.parse_args(["--tasks", "builtin:1", "--experiment", "mine"])
    assert args.command == "python compare.py --tasks builtin:1 --experiment mine"


def test_compare_reports_a_service_that_refuses_without_a_traceback(capsys):
    import compare
    code = compare.main(["--tasks", "builtin:1", "--strategies", "large", "--experiment", "x",
                         "--url", "http://127.0.0.1:9", "--timeout-s", "1", "--connect-patience-s", "1"])
    assert code == 1 and capsys.readouterr().err.startswith("compare.py: ")


def test_a_signal_inside_a_held_section_stops_the_run_only_at_its_end():
    """compare.py's guard: a task's result recorded has its attempts written before SIGTERM stops
    the run (exit 143), Ctrl-C outside any section stops it at once, and cancelling the run's jobs
    is not cut short by another signal."""
    import os
    import signal

    from compare import Termination

    guard = Termination()
    previous = {s: signal.signal(s, guard.handle) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        written = []
        with pytest.raises(SystemExit) as stopped:
            with guard.held():
                os.kill(os.getpid(), signal.SIGTERM)        # the handler runs here, inside the section
                written.append("attempts")
        assert written == ["attempts"] and stopped.value.code == 143
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            written.append("never")
        with guard.held(then_stop=False):
            os.kill(os.getpid(), signal.SIGTERM)
            written.append("cancelled")
        assert written == ["attempts", "cancelled"]
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
