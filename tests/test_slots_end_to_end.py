"""Slot-aware scheduling end to end, against a runtime that behaves like Ollama: the simulator
with one FIFO slot per model, which serves requests beyond a model's slots first come, first
served. The manager must never put more requests inside it than there are slots, so that the
next free slot goes to the most urgent job; timeouts run from the slot; cancel is at once."""
import json
import threading
import time

import requests

from helpers import wait_until

MODEL = "qwen2.5:0.5b"


def submit(client, **body):
    r = client.post("/api/submit", data=json.dumps({"model": MODEL, **body}), content_type="application/json")
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def finished(client, job_id, timeout=30):
    job = client.get(f"/api/job/{job_id}?wait={timeout}").get_json()
    assert job["status"] in ("complete", "failed", "cancelled"), job
    return job


def sim_stats(service):
    return requests.get(service.runtime.url + "/api/sim/stats", timeout=5).json()


def test_the_runtime_alone_serves_first_come_first_served(running_service):
    # The control: sent straight to the runtime, the high-priority request is served last.
    service, _ = running_service(SIM_NUM_PARALLEL=1, SIM_TOKENS_PER_S=400.0)
    url = service.runtime.url
    requests.post(url + "/api/generate", json={"model": MODEL, "keep_alive": "5m"}, timeout=10).raise_for_status()

    def send(prompt):
        # the first holds the slot for 7.5 s, so that all nine are inside at once even on a busy machine
        tokens = 3000 if prompt == "low-0" else 100
        requests.post(url + "/api/generate", json={"model": MODEL, "prompt": prompt, "stream": False,
                                                   "options": {"num_predict": tokens}}, timeout=60).raise_for_status()
    def inside():
        stats = sim_stats(service)
        return stats["running"] + stats["waiting"]
    threads = []
    for i, prompt in enumerate([f"low-{i}" for i in range(8)] + ["high"]):
        threads.append(threading.Thread(target=send, args=(prompt,)))
        threads[-1].start()
        # each in before the next is sent (a sleep between them is not an order on a busy machine)
        wait_until(lambda i=i: inside() >= i + 1 or not threads[-1].is_alive(), message=f"request {i} inside")
    for t in threads:
        t.join()
    served = [s["prompt"] for s in sim_stats(service)["served"]]
    assert served[-1] == "high" and sim_stats(service)["max_in_flight"][MODEL] == 9


def test_a_high_priority_job_after_eight_low_ones_is_served_next_and_no_more_than_the_slots_are_inside(
        running_service):
    service, client = running_service(SIM_NUM_PARALLEL=1, SIM_TOKENS_PER_S=400.0)
    assert finished(client, submit(client, prompt="warm-up", options={"num_predict": 2}))["status"] == "complete"
    lows = [submit(client, prompt=f"low-{i}", priority="low", options={"num_predict": 60}) for i in range(8)]
    wait_until(lambda: sim_stats(service)["running"] == 1, message="the first low job to run")
    high = submit(client, prompt="high", priority="high", options={"num_predict": 20})
    jobs = {job_id: finished(client, job_id) for job_id in lows + [high]}
    assert all(j["status"] == "complete" for j in jobs.values())
    served = [s["prompt"] for s in sim_stats(service)["served"]]
    assert served[:3] == ["warm-up", "low-0", "high"]               # the next free slot went to it
    assert served[3:] == [f"low-{i}" for i in range(1, 8)]
    assert sim_stats(service)["max_in_flight"][MODEL] == 1          # never more than its one slot inside
    # Its wait was spent in the manager's queue, and says so; its run is the work alone.
    metrics = jobs[high]["metrics"]
    assert metrics["runtime_wait_s"] < 0.05 and metrics["queue_wait_s"] > 2 * metrics["runtime_wait_s"]
    assert 0.03 < metrics["run_s"] < 0.2                            # 20 tokens at 400 tokens/s
    assert abs(metrics["queue_wait_s"] + metrics["load_s"] + metrics["run_s"] - metrics["total_s"]) < 1e-3


def test_more_slots_run_more_at_once_and_pay_kv_memory_for_them(running_service):
    service, client = running_service(SIM_NUM_PARALLEL=3, SIM_TOKENS_PER_S=200.0)
    ids = [submit(client, prompt=f"p{i}", options={"num_predict": 40}) for i in range(7)]
    for job_id in ids:
        assert finished(client, job_id)["status"] == "complete"
    stats = sim_stats(service)
    assert stats["max_running"][MODEL] == 3 and stats["max_in_flight"][MODEL] == 3
    loaded = client.get("/api/stats").get_json()["resources"]["loaded_models"]
    row = next(m for m in loaded if m["name"] == MODEL)
    assert row["slots"] == 3 and row["context_length"] == 4096
    model = next(m for m in client.get("/api/models").get_json()["models"] if m["name"] == MODEL)
    assert model["learned_bytes"] == 398_000_000 + model["kv_cache_bytes"] and model["slots"] == 3


def test_a_jobs_timeout_runs_from_its_slot_not_from_its_claim(running_service):
    # One slot, each job about 0.4 s of work, timeout 0.8 s: the later ones wait longer than their
    # timeout in the queue, yet none times out, because the clock starts at the slot.
    _, client = running_service(SIM_NUM_PARALLEL=1, SIM_TOKENS_PER_S=100.0)
    ids = [submit(client, prompt=f"t{i}", timeout_s=0.8, options={"num_predict": 40}) for i in range(4)]
    jobs = [finished(client, job_id) for job_id in ids]
    assert [j["status"] for j in jobs] == ["complete"] * 4
    assert jobs[-1]["metrics"]["total_s"] > 1.0


def test_a_stalled_runtime_times_the_job_out_at_its_timeout_and_frees_the_slot(running_service):
    service, client = running_service(SIM_NUM_PARALLEL=1)
    requests.post(service.runtime.url + "/api/sim/faults", json={"stall": 1}, timeout=5).raise_for_status()
    stalled = submit(client, prompt="stall", timeout_s=1.0)
    job = finished(client, stalled)
    assert job["status"] == "failed" and "timed out" in job["error"]
    assert 0.9 < job["metrics"]["run_s"] + job["metrics"]["runtime_wait_s"] < 1.6
    assert finished(client, submit(client, prompt="after", options={"num_predict": 4}))["status"] == "complete"


def test_cancel_stops_a_running_request_at_once_even_when_the_runtime_sends_nothing(running_service):
    service, client = running_service(SIM_NUM_PARALLEL=1)
    requests.post(service.runtime.url + "/api/sim/faults", json={"stall": 1}, timeout=5).raise_for_status()
    job_id = submit(client, prompt="stall", timeout_s=60)
    wait_until(lambda: sim_stats(service)["running"] == 1, message="the stalled request to hold its slot")
    started = time.time()
    assert client.post(f"/api/job/{job_id}/cancel").status_code == 200
    wait_until(lambda: not service.core.running_ids(), timeout=5, message="the engine to let go")
    assert time.time() - started < 1.0                               # not at the next chunk: there is none
    wait_until(lambda: sim_stats(service)["running"] == 0, timeout=5, message="the runtime to free the slot")
    assert client.get(f"/api/job/{job_id}").get_json()["status"] == "cancelled"
