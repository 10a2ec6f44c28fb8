"""submit_test_job.py against a running service: each mode, its summary, JSON and HTML output."""
import json

import pytest

import submit_test_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from helpers import MainProcess
    directory = tmp_path_factory.mktemp("stj")
    proc = MainProcess(directory, ["--backend", "sim"],
                       {"SIM_LOAD_GBPS": "50", "SIM_TOKENS_PER_S": "5000", "SIM_DEFAULT_TOKENS": "8"}).start()
    yield proc.url
    proc.stop()


def run(capsys, *argv):
    code = submit_test_job.main(["--quiet", "--json", *argv])
    out = capsys.readouterr().out
    return code, json.loads(out.strip().splitlines()[-1]), out


def test_single_job_prints_its_answer(url, capsys):
    code, summary, out = run(capsys, "--url", url, "--model", "qwen2.5:0.5b", "--priority", "high")
    assert code == 0 and summary["completed"] == 1 and summary["mode"] == "single"
    assert "answer:" in out and "metrics:" in out and "p50" in out


def test_batch_runs_four_predefined_jobs(url, capsys):
    code, summary, _ = run(capsys, "--url", url, "--batch")
    assert code == 0 and summary["submitted"] == 4 and summary["completed"] == 4


def test_spam_submits_only_and_checks_nothing_was_lost(url, capsys, tmp_path):
    report = tmp_path / "report.html"
    code, summary, _ = run(capsys, "--url", url, "--spam", "150", "--concurrency", "8", "--html", str(report))
    assert code == 0 and summary["submitted"] == 150 and summary["lost"] == 0
    assert summary["server_errors_5xx"] == 0 and summary["submit_latency_ms"]["p99"] is not None
    assert "data:image/png;base64" in report.read_text()


def test_unknown_model_is_reported_as_rejected(url, capsys):
    code, summary, _ = run(capsys, "--url", url, "--model", "nope:1b", "--no-check")
    assert code == 0 and summary["rejected_by_status"] == {"404": 1} and summary["submitted"] == 0


def test_bad_arguments_and_unreachable_service(capsys):
    with pytest.raises(SystemExit):
        submit_test_job.main(["--random", "0"])
    assert submit_test_job.main(["--url", "http://127.0.0.1:9", "--quiet"]) == 2
