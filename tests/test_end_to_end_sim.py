"""The whole service as users run it: `main.py --backend sim` in its own process, driven by
`submit_test_job.py --random 200`, on a 6 GB virtual GPU that cannot hold the ten models at once."""
import json
import statistics

import pytest
import requests

import submit_test_job

pytestmark = pytest.mark.slow


@pytest.fixture
def sim_service(main_process):
    proc = main_process(SIM_VRAM_GB=6, SIM_LOAD_GBPS=10, SIM_TOKENS_PER_S=800, SIM_DEFAULT_TOKENS=32)
    return proc.url, proc.directory


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

    params: dict[str, str | int] = {"limit": 1000, "status": "complete"}
    jobs = requests.get(url + "/api/jobs", params=params, timeout=10).json()["jobs"]
    waits = {p: [j["metrics"]["queue_wait_s"] for j in jobs if j["priority"] == p] for p in ("high", "low")}
    assert waits["high"] and waits["low"]
    assert statistics.mean(waits["high"]) < statistics.mean(waits["low"]), {
        p: statistics.mean(w) for p, w in waits.items()}
