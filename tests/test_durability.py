"""Jobs survive a kill -9 of the service: pending jobs run after a restart, running ones are
re-queued (or failed, if so configured); none is lost and none completes twice."""

import pytest
import requests

from helpers import wait_until
from store.sqlite import SqliteStore

pytestmark = pytest.mark.slow
SLOW_SIM = dict(SIM_TOKENS_PER_S=100, SIM_DEFAULT_TOKENS=60, SIM_NUM_PARALLEL=2, SIM_LOAD_GBPS=50)


def submit_many(url, n):
    ids = []
    for i in range(n):
        r = requests.post(url + "/api/submit", json={"model": "qwen2.5:0.5b", "prompt": f"job {i}"}, timeout=10)
        assert r.status_code == 202
        ids.append(r.json()["job_id"])
    return ids


def kill_while_running(main_process, **env):
    proc = main_process(**SLOW_SIM, **env)
    ids = submit_many(proc.url, 10)
    wait_until(lambda: requests.get(proc.url + "/api/stats", timeout=5).json()["running"] >= 1,
               timeout=30, message="jobs to run")
    proc.kill()
    store = SqliteStore(proc.directory / "data" / "model_manager.db")
    before = store.statuses(ids)
    store.close()
    running = [i for i, s in before.items() if s == "running"]
    waiting = [i for i, s in before.items() if s in ("pending", "queued")]
    assert running and waiting, before            # the kill caught both kinds
    proc.restart()
    return proc, ids, running, waiting


def all_finished(url, ids):
    jobs = {i: requests.get(f"{url}/api/job/{i}", timeout=5).json() for i in ids}
    return jobs if all(j["status"] in ("complete", "failed", "cancelled") for j in jobs.values()) else None


def test_kill_9_then_restart_requeues_running_jobs_and_runs_the_rest(main_process):
    proc, ids, running, waiting = kill_while_running(main_process)
    jobs = wait_until(lambda: all_finished(proc.url, ids), timeout=90, message="every job to finish")
    assert {j["status"] for j in jobs.values()} == {"complete"}, jobs
    store = SqliteStore(proc.directory / "data" / "model_manager.db")
    try:
        for job_id in ids:
            assert len(store.list_metrics(job_id=job_id)) == 1      # completed exactly once
            assert store.get(job_id)["attempts"] == (2 if job_id in running else 1)   # started twice if interrupted
        assert all(store.get(i).get("recovered") for i in running)
        assert not any(store.get(i).get("recovered") for i in waiting)
    finally:
        store.close()
    stats = requests.get(proc.url + "/api/stats", timeout=5).json()
    assert stats["queue"]["by_status"]["complete"] == len(ids)   # from the store, across the restart


def test_kill_9_then_restart_can_fail_running_jobs_instead(main_process):
    proc, ids, running, waiting = kill_while_running(main_process, RECOVER_RUNNING="fail")
    jobs = wait_until(lambda: all_finished(proc.url, ids), timeout=90, message="every job to finish")
    for job_id in running:
        assert jobs[job_id]["status"] == "failed" and "stopped" in jobs[job_id]["error"]
    for job_id in waiting:
        assert jobs[job_id]["status"] == "complete"
    listed = requests.get(proc.url + "/api/jobs", params={"status": "failed"}, timeout=5).json()
    assert sorted(j["job_id"] for j in listed["jobs"]) == sorted(running)


def test_sigterm_stops_the_service_and_its_runtime(main_process):
    import signal

    import psutil
    proc = main_process()
    children = psutil.Process(proc.process.pid).children(recursive=True)
    assert any("simulator" in " ".join(c.cmdline()) for c in children)
    proc.process.send_signal(signal.SIGTERM)
    assert proc.process.wait(20) == 0
    gone, alive = psutil.wait_procs(children, timeout=10)
    assert not alive
