"""Model Manager on its zero-setup default, the embedded runtime: real completions, a runner
killed mid-job, and least-recently-used eviction in a RAM budget."""
import json
import os
import signal

import psutil
import pytest
import requests

import submit_test_job
from helpers import require_models, wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.slow]


def test_default_service_returns_a_real_completion(main_process, model_cache, capsys):
    require_models("smollm2:135m")
    # No Ollama answers at OLLAMA_URL and no backend is named: the embedded runtime starts.
    proc = main_process(args=(), OLLAMA_URL="http://127.0.0.1:9", EMBEDDED_MODEL_CACHE=model_cache)
    code = submit_test_job.main(["--url", proc.url, "--model", "smollm2:135m", "--json", "--quiet"])
    out = capsys.readouterr().out
    summary = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and summary["completed"] == 1, out
    assert summary["output_tokens"] > 0 and "answer:" in out
    stats = requests.get(proc.url + "/api/stats", timeout=5).json()
    assert stats["runtime"]["kind"] == "embedded"
    assert stats["resources"]["vram"]["source"] == "host"


def submit(client, **body):
    r = client.post("/api/submit", data=json.dumps(body), content_type="application/json")
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def job(client, job_id, wait=0):
    return client.get(f"/api/job/{job_id}?wait={wait}").get_json()


@pytest.fixture
def embedded(running_service, model_cache):
    def start(**overrides):
        return running_service(BACKEND="embedded", EMBEDDED_MODEL_CACHE=model_cache, **overrides)
    return start


def test_killing_a_runner_fails_only_its_jobs_and_the_model_comes_back(embedded):
    require_models("smollm2:135m", "gemma3:270m")
    service, client = embedded()
    # a fixed seed: without one, an answer can end after a few tokens now and then
    long_id = submit(client, model="smollm2:135m", prompt="Write a long story about the sea.",
                     options={"num_predict": 2000, "temperature": 0.8, "seed": 1})
    other_id = submit(client, model="gemma3:270m", prompt="Once upon a time", options={"num_predict": 48})
    wait_until(lambda: job(client, long_id)["status"] == "running", timeout=60, message="the long job to run")
    ps = requests.get(service.runtime.url + "/api/ps", timeout=5).json()["models"]
    pid = next(m["pid"] for m in ps if m["name"] == "smollm2:135m")
    # well into its 2000 tokens: killed mid-generation. The runner (loaded before the job ran, idle
    # until its request came) has spent a second of CPU on it: past the prompt (about 0.3 s), tens of
    # tokens in, far from the end (at about 70 tokens/s).
    runner = psutil.Process(pid)
    cpu = lambda: sum(runner.cpu_times()[:2])  # noqa: E731
    before = cpu()
    wait_until(lambda: cpu() - before >= 1.0, timeout=120, message="the runner to be well into the answer")
    os.kill(pid, signal.SIGKILL)

    killed = job(client, long_id, wait=60)
    assert killed["status"] == "failed"
    assert "smollm2:135m" in killed["error"] and "stopped while answering" in killed["error"]
    assert "signal 9" in killed["error"]
    assert job(client, other_id, wait=120)["status"] == "complete"
    again = job(client, submit(client, model="smollm2:135m", prompt="Hi", options={"num_predict": 8}), wait=120)
    assert again["status"] == "complete" and again["metrics"]["output_tokens"] > 0


def test_third_model_that_does_not_fit_evicts_the_least_recently_used_idle_one(embedded, caplog):
    require_models("smollm2:135m", "gemma3:270m", "qwen2.5-coder:0.5b")
    # 1100 MiB for models: smollm2 (~0.22 GB) and gemma3 (~0.37 GB) fit together; qwen2.5-coder
    # (planned 0.64 GB until measured) does not fit beside both, but does beside gemma3.
    service, client = embedded(VRAM_TOTAL_MB=1100, VRAM_SAFETY_MARGIN_MB=0)
    for model in ("smollm2:135m", "gemma3:270m"):
        done = job(client, submit(client, model=model, prompt="Hello", options={"num_predict": 4}), wait=120)
        assert done["status"] == "complete", done
    loaded = lambda: sorted(m["name"] for m in requests.get(service.runtime.url + "/api/ps", timeout=5).json()["models"])  # noqa: E731
    assert loaded() == ["gemma3:270m", "smollm2:135m"]                 # two at once, within budget

    done = job(client, submit(client, model="qwen2.5-coder:0.5b", prompt="def add(a, b):",
                              options={"num_predict": 8}), wait=180)
    assert done["status"] == "complete", done
    assert loaded() == ["gemma3:270m", "qwen2.5-coder:0.5b"]           # smollm2, used longest ago, went
    stats = client.get("/api/stats").get_json()
    assert stats["scheduler"]["unloads"] == 1 and stats["errors"]["oom"] == 0
    used = sum(m["size"] for m in stats["resources"]["loaded_models"])
    assert used <= 1100 * 1024 * 1024


def test_a_preempted_chat_resumes_on_the_embedded_runtime_and_completes_whole(embedded):
    """One slot; a long low-priority chat is stopped for a high-priority job and continues from its
    partial answer (llama.cpp continues a final assistant message): one answer of the length asked."""
    require_models("smollm2:135m")
    service, client = embedded(EMBEDDED_NUM_PARALLEL=1, PREEMPT_AFTER_S=0.5)
    messages = [{"role": "user", "content": "Write a long story about the sea."}]
    long_id = submit(client, model="smollm2:135m", kind="chat", messages=messages, priority="low",
                     options={"num_predict": 400, "temperature": 0})
    wait_until(lambda: job(client, long_id)["status"] == "running", timeout=60, message="the long job to run")
    wait_until(lambda: (service.answers is not None), message="the service")
    urgent = submit(client, model="smollm2:135m", prompt="Say hi.", priority="high", options={"num_predict": 8})
    assert job(client, urgent, wait=60)["status"] == "complete"
    resumed = job(client, long_id, wait=120)
    assert resumed["status"] == "complete" and resumed["preempted"] == 1, resumed
    assert resumed["metrics"]["wasted_tokens"] == 0 and resumed["metrics"]["preemptions"] == 1
    assert resumed["metrics"]["output_tokens"] == 400                     # the whole answer, not only its rest
    assert len(resumed["result"]["message"]["content"]) > 400            # the partial answer and the rest
