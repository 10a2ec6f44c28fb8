"""Several API workers: gunicorn serves the API from 4 processes while exactly one scheduler runs;
a job submitted through any worker can be polled through any other; if the scheduler's worker
dies, another takes over."""
import json
import os
import signal

import psutil
import pytest
import requests

from helpers import gunicorn_server, wait_until

pytestmark = pytest.mark.slow


@pytest.fixture
def gunicorn(tmp_path, request):
    env = {"BACKEND": "sim", "SIM_LOAD_GBPS": "50", "SIM_TOKENS_PER_S": "2000", "SIM_DEFAULT_TOKENS": "16",
           **getattr(request, "param", {})}
    with gunicorn_server(tmp_path, env, workers=int(env.pop("GUNICORN_WORKERS", 4))) as (url, proc):
        yield url, proc, tmp_path


def simulators(master_pid):
    return [p for p in psutil.Process(master_pid).children(recursive=True)
            if "simulator" in " ".join(p.cmdline())]


def test_four_workers_one_scheduler_and_any_worker_answers_for_any_job(gunicorn):
    url, proc, tmp_path = gunicorn
    workers = psutil.Process(proc.pid).children()
    assert len([w for w in workers if "simulator" not in " ".join(w.cmdline())]) == 4
    job_ids, submit_pids = [], set()
    for i in range(40):                           # a new connection each time: any worker may answer
        r = requests.post(url + "/api/submit", json={"model": "qwen2.5:0.5b", "prompt": f"q{i}",
                                                     "priority": ["low", "normal", "high"][i % 3]}, timeout=10)
        assert r.status_code == 202
        job_ids.append(r.json()["job_id"])
        submit_pids.add(r.headers["X-Model-Manager-Pid"])
    poll_pids = set()

    def done(job_id):
        r = requests.get(f"{url}/api/job/{job_id}", timeout=10)
        poll_pids.add(r.headers["X-Model-Manager-Pid"])
        return r.json()["status"] == "complete"
    for job_id in job_ids:
        wait_until(lambda job_id=job_id: done(job_id), timeout=60, message=f"job {job_id}")
    assert len(submit_pids) >= 2 and len(poll_pids) >= 2          # really several workers
    assert len(simulators(proc.pid)) == 1                         # one scheduler started one runtime
    leaders = {requests.get(url + "/api/stats", timeout=5).json()["scheduler"]["leader"] for _ in range(12)}
    assert len(leaders) == 1
    stats = requests.get(url + "/api/stats", timeout=5).json()
    assert stats["queue"]["by_status"]["complete"] == 40
    taking_over = [line for line in (tmp_path / "mm.log").read_text().splitlines() if "taking over" in line]
    assert len(taking_over) == 1


def test_another_worker_takes_over_when_the_schedulers_worker_dies(gunicorn):
    url, proc, _ = gunicorn
    leader = wait_until(lambda: requests.get(url + "/api/stats", timeout=5).json()["scheduler"]["leader"],
                        message="the leader to publish")
    leader_pid = int(leader.split(":")[1])
    os.kill(leader_pid, signal.SIGKILL)           # gunicorn starts a new worker; the lease expires
    r = requests.post(url + "/api/submit", json={"model": "qwen2.5:0.5b", "prompt": "after"}, timeout=10)
    job_id = r.json()["job_id"]
    wait_until(lambda: requests.get(f"{url}/api/job/{job_id}", timeout=5).json()["status"] == "complete",
               timeout=60, message="the job to run under a new scheduler")
    new_leader = requests.get(url + "/api/stats", timeout=5).json()["scheduler"]["leader"]
    assert new_leader != leader
    wait_until(lambda: len(simulators(proc.pid)) == 1, timeout=10, message="the old simulator to exit")


@pytest.mark.parametrize("gunicorn", [{"SIM_TOKENS_PER_S": "40", "SIM_DEFAULT_TOKENS": "40", "SIM_NUM_PARALLEL": "4"}],
                         indirect=True)
def test_streams_reach_clients_on_any_worker_as_they_are_produced(gunicorn):
    """A streamed Ollama request held by a worker that does not schedule gets its pieces relayed
    through the store while the job runs, and they add up to the whole answer."""
    url, proc, tmp_path = gunicorn
    leader_pid = requests.get(url + "/api/stats", timeout=5).json()["scheduler"]["leader"].split(":")[1]
    relayed = []
    for i in range(8):                  # 1 s each, in pieces every 0.25 s
        with requests.post(url + "/api/generate", json={"model": "qwen2.5:0.5b", "prompt": f"relay {i}"},
                           stream=True, timeout=60) as r:
            assert r.status_code == 200
            chunks = [json.loads(line) for line in r.iter_lines() if line]
            pid, job_id = r.headers["X-Model-Manager-Pid"], r.headers["X-Job-Id"]
        assert chunks[-1]["done"] and sum(c["done"] for c in chunks) == 1
        job = requests.get(f"{url}/api/job/{job_id}", timeout=5).json()
        assert "".join(c["response"] for c in chunks) == job["result"]["response"]
        if pid != leader_pid:
            relayed.append(len(chunks))
    assert relayed, "every request happened to reach the scheduling worker"
    assert max(relayed) >= 3, relayed          # pieces came while the job ran, not only at its end
