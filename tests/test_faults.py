"""Faults, injected for real and bounded in time: a runtime that answers errors, garbage or cuts
its streams; a store that fails to commit, is locked by another process, or goes away and
comes back; an API worker killed mid-submit. Each ends with every acknowledged job terminal
(complete, or failed with a reason), none left running, none missing, and no prompt served
twice (counted at the runtime)."""
import collections
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

import pytest
import requests

import store.sqlite_db as sqlite_db
from helpers import ROOT, free_port, sample_job, terminate, wait_until
from scheduling.leadership import LEASE_TTL_S
from store.sqlite import SqliteStore

MODEL = "qwen2.5:0.5b"
FINISHED = ("complete", "failed", "cancelled")


def submit(client, **body):
    r = client.post("/api/submit", data=json.dumps({"model": MODEL, **body}), content_type="application/json")
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def finished(client, job_id, timeout=30):
    job = client.get(f"/api/job/{job_id}?wait={timeout}").get_json()
    assert job["status"] in FINISHED, job
    return job


def faults(service, **body):
    requests.post(service.runtime.url + "/api/sim/faults", json=body, timeout=5).raise_for_status()


def served(url):
    return collections.Counter(s["prompt"] for s in requests.get(url + "/api/sim/stats", timeout=5).json()["served"])


def test_a_runtime_answering_errors_garbage_or_cutting_streams_fails_those_jobs_with_the_reason(running_service):
    service, client = running_service(SIM_NUM_PARALLEL=1)
    assert finished(client, submit(client, prompt="warm", options={"num_predict": 2}))["status"] == "complete"
    cases: dict[str, tuple[dict[str, Any], str]] = {
        "error": ({"error": 1, "status": 500, "message": "llama runner process has terminated: exit status 2"},
                  "exit status 2"),
        "garbage": ({"garbage": 1}, "invalid stream chunk"),
        "drop": ({"drop": 1}, "before the answer was done")}
    for name, (fault, reason) in cases.items():
        faults(service, **fault)
        job = finished(client, submit(client, prompt=name, options={"num_predict": 8}))
        assert job["status"] == "failed" and reason in job["error"], (name, job)
    ok = finished(client, submit(client, prompt="after", options={"num_predict": 4}))
    assert ok["status"] == "complete"                               # the service goes on
    assert max(served(service.runtime.url).values()) == 1
    assert client.get("/api/stats").get_json()["running"] == 0


def test_a_failed_commit_acknowledges_nothing_and_leaves_the_store_usable(tmp_path, monkeypatch):
    store = SqliteStore(tmp_path / "jobs.db")
    real = sqlite_db._transaction

    def commit_fails(conn):
        try:
            yield conn
        except BaseException:
            sqlite_db._rollback(conn)
            raise
        sqlite_db._rollback(conn)
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_db, "_transaction", commit_fails)
    with pytest.raises(sqlite3.OperationalError):
        store.enqueue(sample_job(job_id="lost"))
    monkeypatch.setattr(sqlite_db, "_transaction", real)
    assert store.get("lost") is None                                # never acknowledged, never stored
    assert store.enqueue(sample_job(job_id="next")) == 0            # the writer is not stuck in a transaction
    assert store.counts().waiting == 1
    store.close()


def test_jobs_finish_after_the_sqlite_file_was_locked_by_another_process_for_10_s(running_service):
    service, client = running_service(SIM_NUM_PARALLEL=2, SIM_TOKENS_PER_S=200.0)
    ids = [submit(client, prompt=f"locked {i}", options={"num_predict": 300}) for i in range(6)]
    wait_until(lambda: client.get("/api/stats").get_json()["running"] >= 1, message="jobs to run")
    locker = subprocess.Popen([sys.executable, "-c", (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(10); c.execute('COMMIT')"),
        str(service.config.DATA_DIR / "model_manager.db")], stdout=subprocess.PIPE, text=True)
    assert locker.stdout is not None                                # stdout=PIPE
    try:
        assert locker.stdout.readline().strip() == "locked"
        r = client.post("/api/submit", data=json.dumps({"model": MODEL, "prompt": "during"}),
                        content_type="application/json")
        assert r.status_code == 503 and r.headers["Retry-After"]   # not stored: not acknowledged
        assert client.get("/api/ping").status_code == 200
    finally:
        locker.wait(30)
    jobs = [finished(client, job_id, timeout=60) for job_id in ids]
    assert [j["status"] for j in jobs] == ["complete"] * 6
    assert max(served(service.runtime.url).values()) == 1
    assert client.get("/api/stats").get_json()["running"] == 0


@pytest.mark.slow
def test_jobs_finish_after_the_mongodb_server_was_away_until_the_lease_expired(running_service, tmp_path):
    directory = tmp_path / "mongo"
    directory.mkdir()
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "nx-27017")
    command = [exe, "--db", str(directory / "nx.db"), "--host", "127.0.0.1", "-p", str(port),
               "--pid-file", str(directory / "nx.pid"), "--log-file", str(directory / "nx.log")]

    def start_mongo():
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until(lambda: _answers(port), timeout=30, message="nx-27017 to answer")
        return proc
    mongo = start_mongo()
    from runtime.launcher import ManagedRuntime
    sim = ManagedRuntime("sim", "simulator", ["--num-parallel", "2", "--tokens-per-s", "200", "--load-gbps", "50"],
                         tmp_path / "sim.log")
    sim_url = sim.start()            # a runtime of its own, like an Ollama server: it outlives leadership changes
    try:
        service, client = running_service(STORE="mongodb", MONGODB_URI=f"mongodb://127.0.0.1:{port}/",
                                          MONGODB_COLLECTION_PREFIX="away_", BACKEND="ollama", OLLAMA_URL=sim_url,
                                          OLLAMA_NUM_PARALLEL=2, VRAM_TOTAL_MB=20000)
        ids = [submit(client, prompt=f"away {i}", options={"num_predict": 300}) for i in range(6)]
        wait_until(lambda: client.get("/api/stats").get_json()["running"] >= 1, message="jobs to run")
        mongo.terminate()
        mongo.wait(10)
        away_since = time.time()        # the lease was last renewed before this
        # Away until the leader has noticed (it steps down before its lease could expire) and the
        # lease has expired: the store comes back to a lease the next term takes at a new epoch.
        wait_until(lambda: not service.leading, timeout=30, message="the leader to step down")
        wait_until(lambda: time.time() > away_since + LEASE_TTL_S, timeout=30, message="its lease to expire")
        mongo = start_mongo()

        def all_ended():
            jobs = [client.get(f"/api/job/{job_id}").get_json() for job_id in ids]
            return jobs if all(j["status"] in FINISHED for j in jobs) else None
        jobs = wait_until(all_ended, timeout=90, interval=0.5, message="every job to end")
        assert all(j["status"] == "complete" or j["error"] for j in jobs), jobs
        assert max(served(sim_url).values()) == 1
        assert client.get("/api/stats").get_json()["running"] == 0
        service.stop()                     # while the store answers: a clean shutdown
    finally:
        mongo.terminate()
        mongo.wait(10)
        sim.stop()


def _answers(port):
    from pymongo import MongoClient
    c: MongoClient[dict[str, Any]]
    try:
        with MongoClient(f"mongodb://127.0.0.1:{port}/", serverSelectionTimeoutMS=300) as c:
            c.admin.command("ping")
        return True
    except Exception:
        return False


@pytest.mark.slow
def test_a_worker_killed_mid_submit_loses_no_acknowledged_job_and_a_retried_submit_makes_no_second_one(tmp_path):
    sim_proc_env = {**os.environ}
    from runtime.launcher import ManagedRuntime
    sim = ManagedRuntime("sim", "simulator", ["--num-parallel", "4", "--tokens-per-s", "2000", "--load-gbps", "50",
                                              "--default-tokens", "8"], tmp_path / "sim.log", env=sim_proc_env)
    sim_url = sim.start()
    port = free_port()
    env = {**os.environ, "HTTP_PORT": str(port), "DATA_DIR": str(tmp_path / "data"), "LOG_FILE": str(tmp_path / "mm.log"),
           "BACKEND": "ollama", "OLLAMA_URL": sim_url, "OLLAMA_NUM_PARALLEL": "4", "VRAM_TOTAL_MB": "20000",
           "STORE": "sqlite", "MONGODB_URI": "", "GUNICORN_WORKERS": "2"}
    gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                                env=env, stdout=open(tmp_path / "gunicorn.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _healthy(url), timeout=60, message="gunicorn to serve")
        keys = [uuid.uuid4().hex for _ in range(400)]
        answers: dict[str, set[str]] = collections.defaultdict(set)
        lost_answers = []
        lock = threading.Lock()

        def client(part):
            for key in part:
                body = {"model": MODEL, "prompt": f"k {key}"}
                for _ in range(50):                       # retry with the same key until acknowledged
                    try:
                        r = requests.post(url + "/api/submit", json=body, headers={"Idempotency-Key": key}, timeout=10)
                    except requests.RequestException:
                        with lock:
                            lost_answers.append(key)
                        time.sleep(0.1)
                        continue
                    if r.status_code in (200, 202):
                        with lock:
                            answers[key].add(r.json()["job_id"])
                        break
                    assert r.status_code in (429, 503), r.text
                    time.sleep(0.1)
        threads = [threading.Thread(target=client, args=(keys[i::8],)) for i in range(8)]
        for t in threads:
            t.start()
        wait_until(lambda: len(answers) >= 100, timeout=60, message="submissions to flow")
        leader = int(requests.get(url + "/api/stats", timeout=5).json()["scheduler"]["leader"].split(":")[1])
        workers = [p.pid for p in __import__("psutil").Process(gunicorn.pid).children() if p.pid != leader]
        os.kill(workers[0], signal.SIGKILL)                # an API worker, mid-submit: gunicorn starts another
        assert len(answers) < len(keys)                    # the kill came while submissions went on
        for t in threads:
            t.join(120)
        assert sorted(answers) == sorted(keys)             # every submission was acknowledged in the end
        assert all(len(ids) == 1 for ids in answers.values())    # and a retry never made a second job
        job_ids = [next(iter(ids)) for ids in answers.values()]

        def all_ended():
            jobs = [requests.get(f"{url}/api/job/{j}", timeout=5).json() for j in job_ids]
            return jobs if all(j.get("status") in FINISHED for j in jobs) else None
        jobs = wait_until(all_ended, timeout=90, interval=0.5, message="every job to end")
        assert all(j["status"] == "complete" for j in jobs), [j for j in jobs if j["status"] != "complete"][:3]
        counts = collections.Counter(s["prompt"] for s in requests.get(sim_url + "/api/sim/stats", timeout=5).json()["served"])
        assert max(counts.values()) == 1
    finally:
        terminate(gunicorn)
        sim.stop()


def _healthy(url):
    try:
        return requests.get(url + "/api/health", timeout=1).status_code == 200
    except requests.RequestException:
        return False
