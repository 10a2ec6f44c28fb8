"""The whole service as users run it: `main.py --backend sim` in its own process, driven by
`submit_test_job.py --random 200`, on a 6 GB virtual GPU that cannot hold the ten models at once."""
import json
import os
import socket
import statistics
import subprocess
import sys

import pytest
import requests

import submit_test_job
from conftest import ROOT, wait_until

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def sim_service(tmp_path):
    port = free_port()
    env = {**os.environ, "SIM_VRAM_GB": "6", "SIM_LOAD_GBPS": "10", "SIM_TOKENS_PER_S": "800",
           "SIM_DEFAULT_TOKENS": "32", "DATA_DIR": str(tmp_path / "data"), "LOG_FILE": str(tmp_path / "mm.log"),
           "STORE": "sqlite", "MONGODB_URI": "", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "main.py", "--backend", "sim", "--http-port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return requests.get(url + "/api/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False
    try:
        wait_until(healthy, timeout=30, message="the service to answer")
        yield url, tmp_path
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_200_random_jobs_complete_without_oom_with_swaps_and_priority(sim_service, capsys):
    url, _ = sim_service
    code = submit_test_job.main(["--url", url, "--random", "200", "--concurrency", "8", "--seed", "7",
                                 "--json", "--quiet", "--wait-timeout", "240"])
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0, summary
    assert summary["submitted"] == 200 and summary["completed"] == 200 and summary["lost"] == 0

    stats = requests.get(url + "/api/stats", timeout=5).json()
    sim = requests.get(stats["runtime"]["url"] + "/api/sim/stats", timeout=5).json()
    assert sim["oom_errors"] == 0 and stats["errors"]["oom"] == 0
    assert sim["peak_vram_bytes"] <= 6_000_000_000
    assert sim["unloads"] > 0, sim
    assert sim["loads"] > 10, sim          # ten models, some loaded more than once: unloaded and reloaded

    jobs = requests.get(url + "/api/jobs", params={"limit": 1000, "status": "complete"}, timeout=10).json()["jobs"]
    waits = {p: [j["metrics"]["queue_wait_s"] for j in jobs if j["priority"] == p] for p in ("high", "low")}
    assert waits["high"] and waits["low"]
    assert statistics.mean(waits["high"]) < statistics.mean(waits["low"]), {
        p: statistics.mean(w) for p, w in waits.items()}
