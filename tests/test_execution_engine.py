"""The engine's failure handling, for real against the GPU simulator: out of memory, timeouts,
cancellation of running jobs, and a runtime that goes away. No job is left running."""
import json
import time

import requests

from helpers import wait_until


def submit(client, **body):
    r = client.post("/api/submit", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def finished(client, job_id, timeout=20):
    job = client.get(f"/api/job/{job_id}?wait={timeout}").get_json()
    assert job["status"] in ("complete", "failed", "cancelled"), job
    return job


def test_out_of_memory_answer_is_counted_and_the_job_retried_once_memory_is_freed(running_service):
    # Polling /api/ps rarely, so that the manager does not notice what another client does.
    # gemma:2b takes 1.78 GB with its KV cache, phi3:mini 3.81 GB: one at a time in 4.5 GB.
    service, client = running_service(SIM_VRAM_GB=4.5, VRAM_SAFETY_MARGIN_MB=0, RUNTIME_POLL_INTERVAL=30.0)
    assert finished(client, submit(client, model="gemma:2b", prompt="warm up"))["status"] == "complete"
    sim = service.runtime.url
    # Another client of the same runtime swaps gemma out for phi3 behind the manager's back.
    requests.post(f"{sim}/api/generate", json={"model": "gemma:2b", "keep_alive": 0}, timeout=10).raise_for_status()
    requests.post(f"{sim}/api/generate", json={"model": "phi3:mini", "keep_alive": -1}, timeout=10).raise_for_status()

    job = finished(client, submit(client, model="gemma:2b", prompt="again"), timeout=30)
    assert job["status"] == "complete", job
    assert job["attempts"] == 2                       # first try ran out of memory, second ran
    stats = client.get("/api/stats").get_json()
    assert stats["errors"]["oom"] == 1
    sim_stats = requests.get(f"{sim}/api/sim/stats", timeout=5).json()
    assert sim_stats["oom_errors"] == 1
    loaded = [m["name"] for m in requests.get(f"{sim}/api/ps", timeout=5).json()["models"]]
    assert loaded == ["gemma:2b"]                     # phi3 (idle, not ours) was evicted to make room


def test_timeout_fails_the_job_with_the_reason(running_service):
    _, client = running_service(SIM_TOKENS_PER_S=200.0)
    job = finished(client, submit(client, model="qwen2.5:0.5b", prompt="long", timeout_s=0.5,
                                  options={"num_predict": 2000}))
    assert job["status"] == "failed" and "timed out" in job["error"]
    assert client.get("/api/stats").get_json()["errors"]["timeout"] == 1
    assert client.get("/api/stats").get_json()["running"] == 0


def test_cancelling_a_running_job_stops_its_request(running_service):
    service, client = running_service(SIM_TOKENS_PER_S=200.0)
    job_id = submit(client, model="qwen2.5:0.5b", prompt="long", options={"num_predict": 4000})
    wait_until(lambda: client.get(f"/api/job/{job_id}").get_json()["status"] == "running", message="running")
    r = client.post(f"/api/job/{job_id}/cancel")
    assert r.status_code == 200 and r.get_json()["previous"] == "running"
    sim = service.runtime.url
    wait_until(lambda: requests.get(f"{sim}/api/sim/stats", timeout=5).json()["running"] == 0,
               timeout=5, message="the runtime to stop generating")
    assert client.get(f"/api/job/{job_id}").get_json()["status"] == "cancelled"
    wait_until(lambda: not service.core.running_ids(), message="engine to let go of the job")


def test_cancelling_a_waiting_job(running_service):
    service, client = running_service()
    service.stop()                                     # nothing runs it
    job_id = submit(client, model="qwen2.5:0.5b", prompt="never")
    r = client.post(f"/api/job/{job_id}/cancel")
    assert r.status_code == 200 and r.get_json()["previous"] in ("pending", "queued")
    assert client.get(f"/api/job/{job_id}").get_json()["status"] == "cancelled"


def test_a_runtime_that_crashes_is_restarted_and_its_jobs_in_flight_run_again(running_service):
    service, client = running_service(RUNTIME_POLL_INTERVAL=0.1, SIM_TOKENS_PER_S=100.0)
    assert finished(client, submit(client, model="qwen2.5:0.5b", prompt="ok", options={"num_predict": 4}))["status"] == "complete"
    in_flight = submit(client, model="qwen2.5:0.5b", prompt="long", options={"num_predict": 300})
    wait_until(lambda: client.get(f"/api/job/{in_flight}").get_json()["status"] == "running", message="running")
    old_pid = service.runtime.process.process.pid
    service.runtime.process.process.kill()
    # The runtime is gone (not one request cut off): the job goes back to the queue, waits for
    # the runtime the service starts again, and runs there.
    job = finished(client, in_flight, timeout=60)
    assert job["status"] == "complete" and job["attempts"] == 2
    # a new process (its port may be the old one again: the OS can hand out a freed port twice)
    assert service.runtime.process.process.pid != old_pid
    later = finished(client, submit(client, model="qwen2.5:0.5b", prompt="after", options={"num_predict": 4}),
                     timeout=30)
    assert later["status"] == "complete"
    assert client.get("/api/stats").get_json()["running"] == 0
    assert client.get("/api/health").status_code == 200


def test_jobs_wait_while_an_external_runtime_is_down(running_service):
    # Ollama that does not answer: the jobs wait (health says why) rather than fail.
    # No delay between load retries (LOAD_RETRY_DELAY_S): were the scheduler to try loads while the
    # runtime does not answer, several attempts would fit in the wait below.
    service, client = running_service(BACKEND="ollama", OLLAMA_URL="http://127.0.0.1:9", VRAM_TOTAL_MB=8000,
                                      LOAD_RETRY_DELAY_S=0.0)
    submitted = time.time()
    job_id = submit(client, model="qwen2.5:0.5b", prompt="patience")
    # several load attempts' worth: five readings of the runtime since (every RUNTIME_POLL_INTERVAL,
    # 0.2 s here), each followed by some ten scheduler passes (every 0.02 s)
    readings: set[float] = set()

    def read_five_times():
        readings.add(service.state.taken_at)
        return len([t for t in readings if t > submitted]) >= 5
    wait_until(read_five_times, message="five readings of the runtime")
    assert client.get(f"/api/job/{job_id}").get_json()["status"] in ("pending", "queued")
    health = client.get("/api/health")
    assert health.status_code == 503 and "runtime does not answer" in health.get_json()["reason"]


def test_model_missing_on_runtime_fails_its_jobs_clearly(running_service):
    service, client = running_service()
    # The registry knows the model (from an earlier runtime, say) but this runtime lacks it.
    service.registry.learn("ghost:1b", 500_000_000)
    service.publish()
    job = finished(client, submit(client, model="ghost:1b", prompt="boo"), timeout=30)
    assert job["status"] == "failed" and "not available on the runtime" in job["error"]
