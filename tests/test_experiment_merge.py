"""Runs made apart (other strategies, or one strategy's tasks split over processes) merged into one
summary: the same summary one run of everything would have written."""
import json
from typing import Any

import pytest

import compare
from experiment.derived import derive
from experiment.merge import MergeError, merge
from experiment.report import summarize, write_outputs

SAMPLES = 2
# four HumanEval-like tasks and four built-in ones (exact answers: by_vote; two groups: by_group)
TASKS: list[dict[str, Any]] = ([{"task_id": f"h{i}", "suite": "humaneval", "check": {"kind": "python_tests"}} for i in range(4)]
         + [{"task_id": f"b{i}", "suite": "builtin", "divisible": i % 2 == 1, "check": {"kind": "exact"}}
            for i in range(4)])
IDS: list[str] = [t["task_id"] for t in TASKS]
MODELS = {"large": ["L"], "branched": ["s1", "s2"], "sample-select": ["s1", "s2"]}


def result(strategy: str, i: int) -> dict:
    """A task's result as the service records it; costs in binary fractions (sums are exact)."""
    solved = {"large": i % 3 != 0, "branched": i % 2 == 0, "sample-select": i in (0, 2, 5, 6)}[strategy]
    cpu = {"large": 4.5, "branched": 2.25, "sample-select": 3.0}[strategy] + i * 0.25
    return {"task_id": IDS[i], "strategy": strategy, "solved": solved, "attempts": 2, "wall_s": 1.5 + i,
            "client_wall_s": 2.0 + i, "model_s": 1.25 * i, "load_s": 0.5, "queue_wait_s": 0.125 * i,
            "eval_s": 0.25, "cpu_s": cpu, "peak_rss_bytes": 1000 * (i + 1), "tokens": 10 * i, "energy_j": None,
            "models": MODELS[strategy],
            "by_model": [{"model": m, "jobs": 1, "model_s": 0.5 * i, "queue_wait_s": 0.25, "tokens": 5 * i}
                         for m in MODELS[strategy]]}


def samples_of(i: int) -> list[dict]:
    task = IDS[i]
    return [{"task_id": task, "strategy": "sample-select", "branch": n, "job_id": f"{task}-{n}",
             "model": MODELS["sample-select"][n], "completion": "7" if (i + n) % 2 else "8",
             "public_passed": (i + n) % 3 != 0, "passed": (i + n) % 2 == 1} for n in range(SAMPLES)]


def entries(job_id: str) -> list[dict]:
    n = int(job_id.rsplit("-", 1)[1])
    return [{"submitted_at": 0.0, "finished_at": 1.0, "model": f"s{n + 1}", "runtime_cpu_s": 1.5 + n,
             "run_s": 0.75, "runtime_peak_rss_bytes": 300 + 100 * n, "prompt_tokens": 4, "output_tokens": 2}]


def run(name: str, results: list[dict], attempts: list[dict], task_ids: list[str]) -> dict:
    """What compare.py writes for a run of these results (its tasks: `task_ids`)."""
    tasks = [t for t in TASKS if t["task_id"] in task_ids]
    sampled = ["sample-select"] if any(r["strategy"] == "sample-select" for r in results) else []
    return derive(summarize(name, task_ids, results), results, attempts, tasks, sampled, SAMPLES, entries)


def every(strategy: str, tasks: range) -> list[dict]:
    return [result(strategy, i) for i in tasks]


def json_round_trip(summary: dict) -> dict:
    return json.loads(json.dumps(summary))          # as read back from summary.json


def older(summary: dict) -> dict:
    """As runs before per_task carried client_wall_s wrote it (and with no models named per task)."""
    for row in summary["per_task"]:
        del row["client_wall_s"]
        row["models"] = None
    return summary


@pytest.mark.parametrize("as_written", [json_round_trip, lambda s: older(json_round_trip(s))])
def test_a_run_split_in_two_merges_into_the_summary_of_one_run(as_written):
    attempts = [a for i in range(8) for a in samples_of(i)]
    whole = json_round_trip(run("whole", every("large", range(8)) + every("branched", range(8))
                                + every("sample-select", range(8)), attempts, IDS))
    # large, branched and the built-in half of sample-select in one run; its HumanEval half apart
    # (one group of tasks only: that run has no by_group of its own)
    first = run("first", every("large", range(8)) + every("branched", range(8)) + every("sample-select", range(4, 8)),
                attempts[8:], IDS)
    second = run("second", every("sample-select", range(4)), attempts[:8], IDS[:4])
    assert "by_group" not in second
    merged = merge("whole", [as_written(first), as_written(second)], TASKS)
    assert [m["experiment"] for m in merged["merged_from"]] == ["first", "second"]
    assert merged["strategies"] == whole["strategies"]
    assert {key: value for key, value in merged.items() if key not in ("merged_from", "per_task")} == \
        {key: value for key, value in whole.items() if key != "per_task"}
    # the per-task rows in one run's order: by strategy, then by task
    assert [(r["strategy"], r["task_id"]) for r in merged["per_task"]] == \
        [(r["strategy"], r["task_id"]) for r in whole["per_task"]]
    # the split strategy was summarized again: its intervals are over all eight tasks
    assert merged["strategies"]["sample-select"]["tasks"] == 8
    assert merged["by_k"]["sample-select"]["2"]["cpu_s"] == whole["by_k"]["sample-select"]["2"]["cpu_s"] == 8 * 4.0
    assert merged["by_group"]["sample-select"]["humaneval"]["tasks"] == 4


def test_runs_of_other_strategies_on_the_same_tasks_are_compared_pairwise():
    large = run("large-only", every("large", range(8)), [], IDS)
    sampled = run("samples", every("sample-select", range(8)), [a for i in range(8) for a in samples_of(i)], IDS)
    merged = merge("both", [json_round_trip(large), json_round_trip(sampled)])
    assert [(c["first"], c["second"]) for c in merged["comparisons"]] == [("large", "sample-select")]
    pair = merged["comparisons"][0]
    assert (pair["both"], pair["only_first"], pair["only_second"]) == (2, 3, 2)  # large: 1,2,4,5,7; samples: 0,2,5,6
    assert merged["strategies"]["large"] == large["strategies"]["large"]       # one run's strategy kept as it was
    # the frontier over both runs: one sample (1.5 CPU s, 300 B, 4 of 8) and large (5.4 CPU s, 8000 B, 5 of 8);
    # both samples (4 CPU s a task, 4 of 8) cost more for no more
    assert merged["pareto"] == {"cpu_s": ["sample-select@1", "large"], "peak_rss_bytes": ["sample-select@1", "large"]}


def test_a_task_run_twice_under_one_strategy_is_refused():
    first = run("first", every("large", range(5)), [], IDS[:5])
    second = run("second", every("large", range(4, 8)), [], IDS[4:])
    with pytest.raises(MergeError, match="b0 under large is in both first and second"):
        merge("m", [first, second])
    with pytest.raises(MergeError, match="at least two"):
        merge("m", [first])


def test_a_strategy_split_over_runs_with_other_models_is_refused():
    first = run("first", every("large", range(4)), [], IDS[:4])
    second = run("second", every("large", range(4, 8)), [], IDS[4:])
    second["strategies"]["large"]["models"] = ["a-larger-one"]
    with pytest.raises(MergeError, match="large ran with other models in the runs"):
        merge("m", [first, second])


def test_runs_with_other_sample_counts_are_refused():
    first = json_round_trip(run("first", every("sample-select", range(4)), [a for i in range(4) for a in samples_of(i)],
                                IDS[:4]))
    second = json_round_trip(run("second", every("sample-select", range(4, 8)),
                                 [a for i in range(4, 8) for a in samples_of(i)], IDS[4:]))
    del second["by_k"]["sample-select"]["2"]
    with pytest.raises(MergeError, match="same --samples"):
        merge("m", [first, second])


def test_compare_merge_writes_one_report_from_two_run_folders(tmp_path, capsys):
    attempts = [a for i in range(8) for a in samples_of(i)]
    for name, results, mine in (("a", every("large", range(8)), []),
                                ("b", every("sample-select", range(8)), attempts)):
        write_outputs(tmp_path / name, run(name, results, mine, IDS), mine, f"python compare.py --experiment {name}")
    argv = ["--merge", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--out", str(tmp_path), "--experiment", "ab"]
    assert compare.main(argv) == 0
    summary = json.loads((tmp_path / "ab" / "summary.json").read_text())
    assert summary["merged_from"] == [{"experiment": "a", "command": "python compare.py --experiment a"},
                                      {"experiment": "b", "command": "python compare.py --experiment b"}]
    assert list(summary["strategies"]) == ["large", "sample-select"]
    assert summary["command"].startswith("python compare.py --merge")
    assert len((tmp_path / "ab" / "results.jsonl").read_text().splitlines()) == len(attempts)
    assert (tmp_path / "ab" / "frontier.png").read_bytes().startswith(b"\x89PNG")
    assert "| large | sample-select | 2 | 3 | 2 |" in capsys.readouterr().out
    # refused, with a reason and exit code 2: a folder without a run, the output one of the inputs
    assert compare.main(["--merge", f"{tmp_path / 'a'},{tmp_path / 'nothing'}", "--out", str(tmp_path),
                         "--experiment", "x"]) == 2
    assert "holds no finished run" in capsys.readouterr().err
    assert compare.main(["--merge", f"{tmp_path / 'a'},{tmp_path / 'b'}", "--out", str(tmp_path),
                         "--experiment", "a"]) == 2
    assert "is one of the runs merged" in capsys.readouterr().err
    assert compare.main(["--merge", f"{tmp_path / 'a'},{tmp_path / 'ab'}", "--out", str(tmp_path),
                         "--experiment", "b"]) == 2                       # b holds a run: not written over
    assert "holds a run" in capsys.readouterr().err
    assert compare.main(argv) == 0                                         # a merge is written again
    capsys.readouterr()
    broken = json.loads((tmp_path / "b" / "summary.json").read_text())
    del broken["per_task"]
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "summary.json").write_text(json.dumps(broken))
    (tmp_path / "c" / "results.jsonl").write_text("")
    assert compare.main(["--merge", f"{tmp_path / 'a'},{tmp_path / 'c'}", "--out", str(tmp_path),
                         "--experiment", "x"]) == 2
    assert "has no per_task rows" in capsys.readouterr().err
    # a summary older than its results.jsonl (written before a --resume went on)
    (tmp_path / "c" / "summary.json").write_text((tmp_path / "a" / "summary.json").read_text())
    (tmp_path / "c" / "results.jsonl").write_text(json.dumps(samples_of(0)[0]) + "\n")
    assert compare.main(["--merge", f"{tmp_path / 'b'},{tmp_path / 'c'}", "--out", str(tmp_path),
                         "--experiment", "x"]) == 2
    assert "holds an attempt its summary.json does not" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.parse_args(["--merge", str(tmp_path / "a"), "--experiment", "y"])     # one folder: nothing to merge
