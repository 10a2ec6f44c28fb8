"""compare.py end to end: an embedded service it starts, real CPU inference on two HumanEval
tasks under both strategies, code judged in the sandbox, costs from the service's ledger."""
import base64
import json
import subprocess
import sys

import pytest

import compare
from helpers import ROOT, require_models
from store.sqlite import SqliteStore

pytestmark = [pytest.mark.slow, pytest.mark.embedded]


def test_humaneval_and_builtin_tasks_under_every_strategy_then_resumed_with_no_model_call(tmp_path, model_cache,
                                                                                         capsys):
    """The issue's command on the embedded runtime (small models and answers, to stay quick): every
    strategy carries its interval, pairs are compared, and --resume makes no model call."""
    require_models("smollm2:135m", "qwen2.5-coder:0.5b")
    args = ["--tasks", "humaneval:HumanEval/0,HumanEval/2+builtin:multi-shopping,extract-email",
            "--strategies", "large,branched,sample-select,decompose", "--large", "qwen2.5-coder:0.5b",
            "--small", "smollm2:135m,qwen2.5-coder:0.5b", "--branches", "3", "--samples", "2", "--max-tokens", "96",
            "--out", str(tmp_path), "--experiment", "e2e", "--model-cache", str(model_cache)]
    assert compare.main(args) == 0
    out = tmp_path / "e2e"
    summary = json.loads((out / "summary.json").read_text())
    tasks = ["HumanEval/0", "HumanEval/2", "builtin/multi-shopping", "builtin/extract-email"]
    assert summary["experiment"] == "e2e" and summary["tasks"] == tasks
    assert summary["command"].startswith("python compare.py --tasks humaneval:HumanEval/0,HumanEval/2+builtin")
    assert set(summary["strategies"]) == {"large", "branched", "sample-select", "decompose"}
    for name, s in summary["strategies"].items():
        for key in ("pass_rate", "pass_rate_ci95", "solved", "wall_s", "model_s", "cpu_s", "peak_rss_bytes",
                    "tokens", "energy_j", "per_solved_task", "per_task_ci95"):
            assert key in s, (name, key)
        low, high = s["pass_rate_ci95"]
        assert 0 <= low <= s["pass_rate"] <= high <= 1
        assert s["model_s"] > 0 and s["cpu_s"] > 0 and s["tokens"] > 0 and s["peak_rss_bytes"] > 100e6
        assert s["energy_j"] is None                             # no GPU here: none reported, none invented
    assert summary["strategies"]["large"]["models"] == ["qwen2.5-coder:0.5b"]
    assert len(summary["comparisons"]) == 6 and all(c["tasks"] == 4 for c in summary["comparisons"])
    assert set(summary["by_k"]["sample-select"]) == {"1", "2"}
    assert summary["by_k"]["sample-select"]["2"]["cpu_s"] == pytest.approx(summary["strategies"]["sample-select"]["cpu_s"],
                                                                          rel=0.01)
    assert set(summary["pareto"]) == {"cpu_s", "peak_rss_bytes"} and all(summary["pareto"].values())
    votes = summary["by_vote"]["sample-select"]            # self-consistency on the two built-in tasks
    assert set(votes) == {"1", "2"} and all(row["tasks"] == 2 for row in votes.values())

    attempts = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    for a in attempts:
        assert set(a) >= {"task_id", "strategy", "branch", "model", "job_id", "completion", "passed", "error"}
    assert sum(a["strategy"] == "large" for a in attempts) == 4
    roles = {a.get("role") for a in attempts if a["strategy"] == "decompose"}
    assert {"planner", "combiner"} <= roles
    # a task counts as solved exactly when its chosen answer passed the hidden tests
    for r in summary["per_task"]:
        mine = [a for a in attempts if a["task_id"] == r["task_id"] and a["strategy"] == r["strategy"]]
        assert r["attempts"] == len(mine)
        if r["strategy"] in ("large", "branched"):
            assert r["solved"] == any(a["passed"] for a in mine)
        if r["strategy"] == "decompose":
            assert r["solved"] == mine[-1]["passed"] and mine[-1]["role"] == "combiner"

    report = (out / "report.html").read_text()
    assert report.count("data:image/png;base64,") == 3 and "Pareto frontier" in report
    frontier = (out / "frontier.png").read_bytes()      # the frontier alone, the report's first figure
    assert frontier.startswith(b"\x89PNG") and base64.b64encode(frontier).decode() in report
    assert "| large |" in capsys.readouterr().out

    # the service kept the tasks, the tagged ledger and the per-task results
    store = SqliteStore(next((out / "service" / "data").glob("*.db")))
    try:
        task = store.get_task("HumanEval/2")
        assert task is not None and task["check"]["entry_point"] == "truncate_number"
        results = store.list_results("e2e")
        assert sorted((r["task_id"], r["strategy"]) for r in results) == sorted(
            (t, s) for t in tasks for s in summary["strategies"])
        entries = [store.list_metrics(job_id=a["job_id"])[0] for a in attempts]
        assert all(e["tags"]["experiment"] == "e2e" and e["tags"]["task_id"] == a["task_id"]
                   and e["tags"]["strategy"] == a["strategy"] and e["tags"]["branch"] == a["branch"]
                   for e, a in zip(entries, attempts, strict=False))
        jobs_before = len(store.list_jobs(None, None, 10_000, None))
    finally:
        store.close()

    assert compare.main([*args, "--resume"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert again["strategies"] == summary["strategies"] and again["comparisons"] == summary["comparisons"]
    store = SqliteStore(next((out / "service" / "data").glob("*.db")))
    try:
        assert len(store.list_jobs(None, None, 10_000, None)) == jobs_before          # no model call at all
    finally:
        store.close()
    capsys.readouterr()


def test_a_task_spec_that_names_nothing_is_refused(tmp_path, capsys):
    assert compare.main(["--tasks", "humaneval:HumanEval/999", "--out", str(tmp_path)]) == 2
    assert "no humaneval task" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        compare.main(["--strategies", "large,bogus"])


def test_a_docker_sandbox_without_an_engine_is_a_clear_error(tmp_path, capsys, monkeypatch):
    pytest.importorskip("docker")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    assert compare.main(["--tasks", "builtin:1", "--sandbox", "docker", "--out", str(tmp_path)]) == 2
    assert "the docker sandbox cannot run here" in capsys.readouterr().err


def test_a_resumed_run_makes_no_model_call_for_what_was_recorded(main_process, tmp_path, capsys):
    """A run on the simulator's service, then the same run with one more task and --resume: only
    the new task's model calls are made; once more with --resume: none, and the same summary."""
    import requests

    service = main_process(("--backend", "sim"), SIM_DEFAULT_TOKENS=8)
    common = ["--url", service.url, "--large", "qwen2.5:0.5b", "--small", "qwen2.5:0.5b,smollm:360m",
              "--branches", "2", "--max-tokens", "8", "--out", str(tmp_path), "--experiment", "again"]

    def jobs() -> int:
        return len(requests.get(service.url + "/api/jobs", params={"limit": 1000}, timeout=5).json()["jobs"])

    assert compare.main(["--tasks", "builtin:2", *common]) == 0
    first_jobs = jobs()
    assert compare.main(["--tasks", "builtin:3", "--resume", *common]) == 0
    third_task_jobs = jobs() - first_jobs
    assert 2 <= third_task_jobs <= 3                     # large once, branched 1 or 2 attempts: that task only
    summary = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert all(s["tasks"] == 3 for s in summary["strategies"].values())
    attempts = (tmp_path / "again" / "results.jsonl").read_text().splitlines()
    assert compare.main(["--tasks", "builtin:3", "--resume", *common]) == 0
    assert jobs() == first_jobs + third_task_jobs                                   # no model call at all
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["strategies"] == summary["strategies"] and again["comparisons"] == summary["comparisons"]
    assert (tmp_path / "again" / "results.jsonl").read_text().splitlines() == attempts
    # killed (no clean-up, as by SIGKILL) right after it resumed, before its first new task was
    # recorded: the attempts recorded before are all still there, none cut off
    killed = subprocess.run([sys.executable, "-c", "import os, sys, compare\n"
                             "compare.run_strategy = lambda *args: os._exit(9)\n"
                             "sys.exit(compare.main(sys.argv[1:]))", "--tasks", "builtin:4", "--resume", *common],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert killed.returncode == 9, killed.stderr
    assert (tmp_path / "again" / "results.jsonl").read_text().splitlines() == attempts
    capsys.readouterr()


def test_a_run_stopped_by_sigterm_cancels_the_jobs_it_left_unanswered(main_process, tmp_path):
    """SIGTERM part way (the jobs of a branched round submitted, slow to answer): the run cancels
    them, so that the models are not kept busy for nobody, and exits 143; nothing is recorded."""
    import signal
    import time

    import requests

    service = main_process(("--backend", "sim"), SIM_TOKENS_PER_S=2)       # 40 tokens: 20 s a job
    run = subprocess.Popen([sys.executable, "compare.py", "--url", service.url, "--tasks", "builtin:2",
                            "--strategies", "branched", "--small", "qwen2.5:0.5b,smollm:360m", "--max-tokens", "40",
                            "--out", str(tmp_path), "--experiment", "stopped"],
                           cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def jobs() -> list[dict]:
        listed = requests.get(service.url + "/api/jobs", params={"limit": 100}, timeout=5).json()["jobs"]
        return [j for j in listed if j["metadata"].get("experiment") == "stopped"]

    deadline = time.monotonic() + 60
    while len(jobs()) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(jobs()) == 2 and all(j["status"] in ("queued", "running") for j in jobs())
    run.send_signal(signal.SIGTERM)
    _, err = run.communicate(timeout=30)
    assert run.returncode == 143 and "2 unanswered job(s) cancelled" in err
    assert [j["status"] for j in jobs()] == ["cancelled", "cancelled"]
    assert requests.get(service.url + "/api/experiments/stopped/results", timeout=5).json()["results"] == []


def test_sample_select_samples_at_a_temperature_and_reports_every_k(main_process, tmp_path, capsys):
    import requests

    service = main_process(("--backend", "sim"), SIM_DEFAULT_TOKENS=8)
    code = compare.main(["--url", service.url, "--tasks", "builtin:2+humaneval:HumanEval/0", "--strategies",
                         "sample-select", "--small", "qwen2.5:0.5b,smollm:360m", "--samples", "3", "--max-tokens", "8",
                         "--out", str(tmp_path), "--experiment", "samples"])
    assert code == 0
    summary = json.loads((tmp_path / "samples" / "summary.json").read_text())
    assert set(summary["sample_select_by_k"]) == {"1", "2", "3"}
    assert all(v["tasks"] == 3 and "pass_rate_ci95" in v for v in summary["sample_select_by_k"].values())
    attempts = [json.loads(line) for line in (tmp_path / "samples" / "results.jsonl").read_text().splitlines()]
    assert len(attempts) == 9 and all("public_passed" in a for a in attempts)
    jobs = requests.get(service.url + "/api/jobs", params={"limit": "100"}, timeout=5).json()["jobs"]
    seeds = sorted(j["metadata"]["branch"] for j in jobs if j["metadata"].get("task_id") == "HumanEval/0")
    assert seeds == [0, 1, 2]
    capsys.readouterr()
