"""The per-job ledger: one document per finished job in job_metrics, a summary on the job, and
resource figures that agree with the operating system's own accounting of the runner process."""
import json
import os
import threading
import time

import pytest
import requests

from helpers import drop_mongo, mongo_store, require_models, wait_until
from runtime.node_urls import node_label

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime from /proc/<pid>/stat, in seconds."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_rss_bytes(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def submit(client, **body):
    r = client.post("/api/submit", data=json.dumps(body), content_type="application/json", query_string={"wait": 120})
    assert r.status_code == 200, r.get_json()
    return r.get_json()


@pytest.mark.embedded
def test_embedded_job_ledger_agrees_with_the_os_within_ten_percent(running_service, model_cache):
    require_models("smollm2:135m")
    service, client = running_service(BACKEND="embedded", EMBEDDED_MODEL_CACHE=model_cache)
    first = submit(client, model="smollm2:135m", prompt="warm up", options={"num_predict": 4})
    assert first["metrics"]["runtime_pid"] > 0           # even the job that waited for the load
    pid = next(m["pid"] for m in requests.get(service.runtime.url + "/api/ps", timeout=5).json()["models"])
    cpu_before = proc_cpu_seconds(pid)
    job = submit(client, model="smollm2:135m", prompt="Write a short poem about autumn leaves.",
                 options={"num_predict": 96, "temperature": 0.7}, metadata={"experiment": "ledger", "strategy": "solo"})
    cpu_os = proc_cpu_seconds(pid) - cpu_before
    rss_os = proc_rss_bytes(pid)
    assert job["status"] == "complete"

    entries = service.store.list_metrics(job_id=job["job_id"])
    assert len(entries) == 1
    ledger = entries[0]
    assert ledger["run_s"] > 0 and ledger["output_tokens"] > 0 and ledger["prompt_tokens"] > 0
    assert ledger["runtime_pid"] == pid
    assert cpu_os > 0.3, "the job was too short to compare CPU time"
    assert ledger["runtime_cpu_s"] == pytest.approx(cpu_os, rel=0.10)
    assert ledger["runtime_peak_rss_bytes"] == pytest.approx(rss_os, rel=0.10)
    cpus = os.cpu_count()
    assert cpus is not None
    assert 0 < ledger["runtime_cpu_pct"] <= 100 * cpus
    assert 0 <= ledger["host_cpu_pct"] <= 100
    assert ledger["model_size_bytes"] > 0 and ledger["model_size_vram_bytes"] == 0
    assert "gpu_energy_j" not in ledger                          # no GPU here: absent, not zero
    assert ledger["tags"] == {"experiment": "ledger", "strategy": "solo"}
    assert ledger["success"] is True and ledger["error"] is None and ledger["kind"] == "generate"
    # the node by its label, never its URL (a tenant reads its own ledger entries)
    assert ledger["node"] == node_label(service.runtime.kind, service.runtime.url) and ledger["load_s"] == 0
    # The same summary is on the job itself.
    assert job["metrics"]["runtime_cpu_s"] == ledger["runtime_cpu_s"]
    sampler = client.get("/api/stats").get_json()["scheduler"]["sampler"]
    assert sampler["cpu_pct_of_core"] < 1.0


@pytest.mark.embedded
def test_four_jobs_sharing_one_runner_are_charged_its_cpu_once_between_them(running_service, model_cache):
    require_models("smollm2:135m")
    service, client = running_service(BACKEND="embedded", EMBEDDED_MODEL_CACHE=model_cache,
                                      EMBEDDED_NUM_PARALLEL=4, NUM_CTX=1024)
    submit(client, model="smollm2:135m", prompt="warm up", options={"num_predict": 2})
    pid = next(m["pid"] for m in requests.get(service.runtime.url + "/api/ps", timeout=5).json()["models"])
    cpu_before = proc_cpu_seconds(pid)
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(submit(
        client, model="smollm2:135m", prompt=f"Write a short story about a robot named R{i}.",
        options={"num_predict": 64, "temperature": 0.8, "seed": i}))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    cpu_os = proc_cpu_seconds(pid) - cpu_before
    assert [j["status"] for j in results] == ["complete"] * 4
    entries = [service.store.list_metrics(job_id=j["job_id"])[0] for j in results]
    charged = sum(e["runtime_cpu_s"] for e in entries)
    assert cpu_os > 0.5, "the jobs were too short to compare CPU time"
    assert charged == pytest.approx(cpu_os, rel=0.10)             # not 4x: each second charged once
    assert max(e["runner_jobs_max"] for e in entries) == 4          # they really ran together
    assert all(1.0 <= e["runner_jobs_mean"] <= e["runner_jobs_max"] for e in entries)
    assert all(e["model_slots"] == 4 for e in entries)
    assert sum(e["run_s"] for e in entries) > 0


def test_jobs_sharing_the_gpu_divide_its_energy_between_them(running_service):
    # The simulator's GPU draws 300 W while anything generates: three jobs at once for about a
    # second share those joules; charging each the whole device would count them three times.
    service, client = running_service(SIM_NUM_PARALLEL=3, SIM_TOKENS_PER_S=150.0)
    submit(client, model="qwen2.5:0.5b", prompt="warm", options={"num_predict": 2})
    stats = lambda: requests.get(service.runtime.url + "/api/sim/stats", timeout=5).json()   # noqa: E731
    before = stats()["energy_j"]
    results = []
    threads = [threading.Thread(target=lambda i=i: results.append(submit(
        client, model="qwen2.5:0.5b", prompt=f"share {i}", options={"num_predict": 120}))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    device = stats()["energy_j"] - before
    entries = [service.store.list_metrics(job_id=j["job_id"])[0] for j in results]
    charged = sum(e["gpu_energy_j"] for e in entries)
    assert max(e["gpu_jobs_max"] for e in entries) == 3
    assert 0.8 * device <= charged <= device + 1.0            # the device's joules, counted once
    assert all(e["gpu_energy_j"] < 0.6 * charged for e in entries)


def test_failed_jobs_are_in_the_ledger_with_their_error(running_service):
    service, client = running_service(SIM_TOKENS_PER_S=100)
    r = client.post("/api/submit", data=json.dumps({"model": "qwen2.5:0.5b", "prompt": "x", "timeout_s": 0.2,
                                                    "options": {"num_predict": 500}}),
                    content_type="application/json", query_string={"wait": 30})
    job = r.get_json()
    assert job["status"] == "failed"
    ledger = service.store.list_metrics(job_id=job["job_id"])[0]
    assert ledger["success"] is False and ledger["error_kind"] == "timeout" and "timed out" in ledger["error"]


def test_the_service_works_the_same_on_mongodb(running_service, nx_mongo):
    prefix = f"svc{int(time.time() * 1000) % 10**8}_"
    service, client = running_service(STORE="mongodb", MONGODB_URI=nx_mongo, MONGODB_COLLECTION_PREFIX=prefix)
    job = submit(client, model="qwen2.5:0.5b", prompt="hello", metadata={"experiment": "mongo"})
    assert job["status"] == "complete" and job["result"]["response"]
    assert client.get("/api/stats").get_json()["queue"]["by_status"]["complete"] == 1
    assert client.get("/api/jobs").get_json()["count"] == 1
    entry = service.store.list_metrics(job_id=job["job_id"])[0]
    assert entry["tags"] == {"experiment": "mongo"} and entry["output_tokens"] == 16
    raw = service.store.jobs.find_one({"_id": job["job_id"]})    # plain documents, for anyone to query
    assert raw["status"] == "complete" and raw["metrics"]["output_tokens"] == 16


@pytest.mark.mongodb_real
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MONGODB_URI"), reason="TTL expiry needs a real MongoDB (MONGODB_URI); "
                    "nx-27017 stores $set datetimes as strings, so its TTL index cannot work")
def test_finished_jobs_expire_through_the_ttl_index_on_real_mongodb():
    from helpers import sample_job
    store = mongo_store(os.environ["MONGODB_URI"], retention_s=1)
    try:
        store.enqueue(sample_job(job_id="ttl"))
        store.take_new()
        store.claim("ttl", "r", {})
        store.finish("ttl", "r", "complete", {"completed_at": time.time()})
        # MongoDB's TTL monitor runs once a minute.
        wait_until(lambda: store.get("ttl") is None, timeout=150, interval=2, message="the TTL index to delete it")
    finally:
        drop_mongo(store)
