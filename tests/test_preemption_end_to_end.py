"""Preemption end to end on the GPU simulator: urgent work takes a slot, or memory, from running
low-priority work within seconds, and the stopped job resumes and ends with its whole answer, one
continuous stream for a client that follows it."""
import json
import threading

from helpers import wait_until
from simulator.server import _words

CHAT = [{"role": "user", "content": "tell me a long story"}]


def post(client, path, body, **kw):
    return client.post(path, data=json.dumps(body), content_type="application/json", **kw)


def submit(client, model, priority, num_predict, messages=None) -> str:
    body = {"model": model, "priority": priority, "options": {"num_predict": num_predict}}
    body.update({"kind": "chat", "messages": messages} if messages else {"prompt": "go"})
    answer = post(client, "/api/submit", body)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["job_id"]


def done(service, job_id):
    job = service.get(job_id)
    return job if job is not None and job["status"] == "complete" else None


def content(job) -> str:
    return job["result"]["message"]["content"]


def test_urgent_work_takes_the_slot_of_a_long_low_priority_chat_which_resumes_whole(running_service):
    service, client = running_service(OLLAMA_NUM_PARALLEL=1, SIM_TOKENS_PER_S=200.0)
    low = submit(client, "qwen2.5:0.5b", "low", 2000, CHAT)                     # 10 s alone
    wait_until(lambda: service.get(low)["status"] == "running", message="the low job to start")
    high = submit(client, "qwen2.5:0.5b", "high", 20)
    wait_until(lambda: done(service, high), timeout=10, message="the high job")
    waited = service.get(high)["started_at"] - service.get(high)["submitted_at"]
    assert waited <= 2.0, waited
    finished = wait_until(lambda: done(service, low), timeout=30, message="the preempted job")
    assert finished["preempted"] == 1 and finished["metrics"]["preemptions"] == 1
    assert finished["metrics"]["output_tokens"] == 2000 and finished["metrics"]["wasted_tokens"] == 0  # resumed
    assert finished["metrics"]["tokens_per_s"] <= 200 * 1.1                    # this run's speed, not the answer's
    # the words an uninterrupted run gives (the simulator draws them from the conversation): nothing
    # repeated, nothing lost
    assert content(finished) == _words(str(CHAT), 0, 2000)
    metrics = client.get("/metrics").get_data(as_text=True)
    assert "model_manager_jobs_preempted_total 1.0" in metrics


def test_urgent_work_for_a_model_that_does_not_fit_gets_memory_held_by_low_priority_work(running_service):
    service, client = running_service(OLLAMA_NUM_PARALLEL=1, SIM_TOKENS_PER_S=200.0, SIM_VRAM_GB=5.0,
                                      VRAM_SAFETY_MARGIN_MB=0)
    low = submit(client, "phi3:mini", "low", 2000)                              # gemma:2b does not fit beside it
    wait_until(lambda: service.get(low)["status"] == "running", timeout=10, message="the low job to start")
    high = submit(client, "gemma:2b", "high", 20)
    wait_until(lambda: done(service, high), timeout=15, message="the high job")
    waited = service.get(high)["started_at"] - service.get(high)["submitted_at"]
    assert waited <= 4.0, waited                                                # including its load
    finished = wait_until(lambda: done(service, low), timeout=30, message="the preempted job")
    assert finished["preempted"] == 1 and finished["metrics"]["wasted_tokens"] > 0      # a generate starts over
    assert finished["metrics"]["output_tokens"] == 2000


def test_a_streamed_chat_that_is_preempted_reaches_its_client_as_one_continuous_answer(running_service):
    service, client = running_service(OLLAMA_NUM_PARALLEL=1, SIM_TOKENS_PER_S=200.0)
    body = {"model": "qwen2.5:0.5b", "messages": CHAT, "options": {"num_predict": 600}}
    received: dict = {}

    def follow():
        r = post(client, "/api/chat", body, headers={"X-Priority": "low"})
        received["job_id"] = r.headers["X-Job-Id"]
        received["chunks"] = [json.loads(line) for line in r.get_data(as_text=True).splitlines() if line.strip()]

    reader = threading.Thread(target=follow)
    reader.start()
    wait_until(lambda: any(j["status"] == "running" for j in service.list_jobs(None, None, 10, None)),
               message="the streamed job to start")
    high = submit(client, "qwen2.5:0.5b", "high", 20)
    reader.join(timeout=30)
    assert not reader.is_alive()
    chunks = received["chunks"]
    assert chunks[-1]["done"] and chunks[-1]["eval_count"] == 600
    streamed = "".join(c["message"]["content"] for c in chunks)
    job = service.get(received["job_id"])
    assert job["preempted"] == 1 and done(service, high)
    assert streamed == content(job) and len(streamed.split()) == 600
    # live to the end: the resumed run's pieces are streamed as they come, not sent in one lump at the end
    assert sum(1 for c in chunks if c["message"]["content"]) >= 590
