"""bench/sweep.py on a tiny grid (one worker, two user counts, three seconds a run): one Locust report
per run, named {workers}_{users}_{rate}.html, an index with the charts and links, and figures that say
the service was really loaded."""
import json
import subprocess
import sys

import pytest

from helpers import ROOT


@pytest.mark.slow
def test_a_tiny_sweep_writes_one_report_per_run_and_an_index(tmp_path):
    out = tmp_path / "reports"
    done = subprocess.run([sys.executable, "bench/sweep.py", "--workers", "1", "--users", "2", "4",
                           "--spawn-rates", "4", "--run-time", "3s", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.html")) == ["1_2_4.html", "1_4_4.html", "index.html"]
    for report in ("1_2_4.html", "1_4_4.html"):
        assert "locust" in (out / report).read_text().lower()          # Locust's own report
    index = (out / "index.html").read_text()
    assert index.count("data:image/png;base64,") == 3                  # throughput, p95, submit p95
    assert 'href="1_2_4.html"' in index and 'href="1_4_4.html"' in index
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert [(r["workers"], r["users"], r["spawn_rate"]) for r in runs] == [(1, 2, 4.0), (1, 4, 4.0)]
    for run in runs:
        assert run["requests"] > 0 and run["failures"] == 0 and run["requests_per_s"] > 0
        assert run["p95_ms"] > 0 and run["jobs_completed"] > 0


@pytest.mark.parametrize("args", [["--run-time", "soon"], ["--users", "0"], ["--workers", "-1"]])
def test_bad_arguments_are_refused_before_anything_starts(args):
    done = subprocess.run([sys.executable, "bench/sweep.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "error" in done.stderr
