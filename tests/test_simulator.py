"""The GPU simulator: its physics in virtual time, and its Ollama API on the wall clock."""
import time

import pytest
import requests

from runtime_client import ModelNotFound, OllamaClient, RuntimeOutOfMemory
from runtime_launcher import ManagedRuntime
from simulator.physics import SharedThroughput, SimOutOfMemory, VirtualGpu


def test_jobs_share_throughput_with_a_modest_batching_gain():
    tp = SharedThroughput(tokens_per_s=100, batch_gain=0.25)
    tp.add("a", 100, now=0.0)
    assert tp.next_finish() == pytest.approx(1.0)            # alone: 100 tokens at 100 tok/s
    tp.add("b", 100, now=0.5)                                  # a has 50 left; two share 100*(1+0.25)
    assert tp.per_job_rate() == pytest.approx(62.5)
    assert tp.next_finish() == pytest.approx(0.5 + 50 / 62.5)
    assert tp.advance(1.3) == ["a"]
    assert tp.produced("b") == pytest.approx(50.0)
    assert tp.next_finish() == pytest.approx(1.8)
    assert tp.advance(2.0) == ["b"] and len(tp) == 0
    # Running more at once is not free: four jobs take longer each than one alone.
    assert SharedThroughput(100, 0.25).per_job_rate(4) == pytest.approx(37.5)


def test_virtual_gpu_refuses_loads_that_do_not_fit():
    gpu = VirtualGpu(total_bytes=10, load_bytes_per_s=5)
    assert gpu.begin_load("a", 6) == pytest.approx(1.2)
    with pytest.raises(SimOutOfMemory):
        gpu.begin_load("b", 5)
    assert gpu.oom_errors == 1 and gpu.used_bytes == 6
    gpu.unload("a")
    assert gpu.begin_load("b", 5) == 1.0 and gpu.peak_bytes == 6


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    runtime = ManagedRuntime("sim", "simulator", ["--vram-gb", "3.5", "--load-gbps", "20", "--tokens-per-s", "2000",
                                                   "--default-tokens", "20"],
                             tmp_path_factory.mktemp("sim") / "sim.log")
    url = runtime.start()
    yield url
    runtime.stop()


def test_ollama_api_load_generate_chat_embed_unload(sim):
    client = OllamaClient(sim)
    assert client.version().endswith("sim")
    assert {m["name"] for m in client.tags()} >= {"phi3:mini", "all-minilm:latest"}
    client.load("qwen2.5:0.5b", "5m", timeout=10)
    ps = client.ps()
    assert [m["name"] for m in ps] == ["qwen2.5:0.5b"] and ps[0]["size_vram"] == 398_000_000
    final = client.stream("/api/generate", {"model": "qwen2.5:0.5b", "prompt": "hi", "options": {"num_predict": 30}},
                          deadline=time.time() + 10)
    assert final["done"] and final["eval_count"] == 30 and len(final["response"].split()) == 30
    final = client.stream("/api/chat", {"model": "qwen2.5:0.5b", "messages": [{"role": "user", "content": "x"}]},
                          deadline=time.time() + 10)
    assert final["message"]["role"] == "assistant" and final["eval_count"] == 20
    client.load("all-minilm:latest", "5m", timeout=10, embedding=True)
    emb = client.embed({"model": "all-minilm:latest", "input": ["a", "b"]}, deadline=time.time() + 10)
    assert len(emb["embeddings"]) == 2 and len(emb["embeddings"][0]) == 384
    assert client.unload("qwen2.5:0.5b")["done_reason"] == "unload"
    assert [m["name"] for m in client.ps()] == ["all-minilm:latest"]
    client.unload("all-minilm:latest")
    with pytest.raises(ModelNotFound):
        client.load("nope:1b", "5m", timeout=10)


def test_load_beyond_memory_fails_like_ollama(sim):
    client = OllamaClient(sim)
    client.load("phi3:mini", "5m", timeout=10)
    with pytest.raises(RuntimeOutOfMemory):
        client.load("gemma:2b", "5m", timeout=10)
    stats = client.get_json("/api/sim/stats")
    assert stats["oom_errors"] == 1 and stats["peak_vram_bytes"] <= 3_500_000_000
    client.unload("phi3:mini")


def test_keep_alive_expires_idle_models(sim):
    requests.post(f"{sim}/api/generate", json={"model": "smollm:360m", "keep_alive": "300ms"}, timeout=10)
    assert [m["name"] for m in requests.get(f"{sim}/api/ps").json()["models"]] == ["smollm:360m"]
    time.sleep(0.8)
    assert requests.get(f"{sim}/api/ps").json()["models"] == []


def test_bad_requests_get_400(sim):
    assert requests.post(f"{sim}/api/generate", data="{", timeout=5).status_code == 400
    assert requests.post(f"{sim}/api/generate", json={"model": "phi3:mini", "keep_alive": "soon"}).status_code == 400
    assert requests.post(f"{sim}/api/generate", json={"prompt": "x"}).status_code == 400
    for options in ([], {"num_predict": "many"}):
        r = requests.post(f"{sim}/api/generate", json={"model": "phi3:mini", "prompt": "x", "options": options})
        assert r.status_code == 400 and "options" in r.json()["error"]


