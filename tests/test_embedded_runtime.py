"""The embedded runtime, for real: llama.cpp inference on small models from PyPI, spoken to
through the execution engine's Ollama client and through the official `ollama` client."""
import json
import threading
import time

import ollama
import pytest
import requests

from embedded_runtime.catalog import CATALOG, EmbeddedModel, ModelFiles, ModelUnavailable, is_installed, sha256_of
from embedded_runtime.runner import SlotGate
from helpers import present, require_models, wait_until
from runtime.client import OllamaClient
from runtime.launcher import ManagedRuntime

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def runtime(tmp_path_factory, model_cache):
    require_models("smollm2:135m", "gemma3:270m")
    logs = tmp_path_factory.mktemp("embedded")
    proc = ManagedRuntime("embedded", "embedded_runtime", ["--cache-dir", str(model_cache), "--log-dir", str(logs),
                                                            "--num-ctx", "1024"], logs / "runtime.log")
    url = proc.start()
    yield url
    proc.stop()


def test_engine_client_load_generate_chat_ps_tags_unload(runtime):
    client = OllamaClient(runtime)
    names = {m["name"] for m in client.tags()}
    assert {"smollm2:135m", "gemma3:270m"} <= names
    client.load("smollm2:135m", "5m", timeout=60)
    ps = client.ps()
    assert [m["name"] for m in ps] == ["smollm2:135m"]
    assert ps[0]["size"] > 100_000_000 and ps[0]["size_vram"] == 0      # the runner's measured RSS
    final = client.stream("/api/generate", {"model": "smollm2:135m", "prompt": "Name a colour.",
                                            "options": {"num_predict": 12, "temperature": 0}},
                          deadline=time.time() + 60)
    assert final["done"] and final["response"].strip()
    assert final["eval_count"] > 0 and final["eval_duration"] > 0 and final["prompt_eval_count"] > 0
    final = client.stream("/api/chat", {"model": "smollm2:135m", "options": {"num_predict": 8},
                                        "messages": [{"role": "user", "content": "Say hello."}]},
                          deadline=time.time() + 60)
    assert final["message"]["role"] == "assistant" and final["message"]["content"].strip()
    assert client.unload("smollm2:135m")["done_reason"] == "unload"
    wait_until(lambda: client.ps() == [], message="the runner to stop")


def test_keep_alive_expiry_unloads_the_model(runtime):
    client = OllamaClient(runtime)
    client.load("smollm2:135m", "1s", timeout=60)
    assert [m["name"] for m in client.ps()] == ["smollm2:135m"]
    wait_until(lambda: client.ps() == [], timeout=10, message="keep_alive to expire")


def test_official_ollama_client_generate_chat_stream_list_ps(runtime):
    client = ollama.Client(host=runtime)
    answer = client.generate(model="smollm2:135m", prompt="What is 2+2?", options={"num_predict": 10})
    assert answer.done and present(answer.response).strip() and present(answer.eval_count) > 0
    pieces = list(client.generate(model="smollm2:135m", prompt="Count to three.", stream=True,
                                  options={"num_predict": 10}))
    assert len(pieces) > 2 and pieces[-1].done and "".join(present(p.response) for p in pieces).strip()
    reply = client.chat(model="smollm2:135m", messages=[{"role": "user", "content": "Hi!"}],
                        options={"num_predict": 8})
    assert reply.message.role == "assistant" and present(reply.message.content).strip()
    chunks = list(client.chat(model="smollm2:135m", messages=[{"role": "user", "content": "Hi!"}], stream=True,
                              options={"num_predict": 8}))
    assert chunks[-1].done and "".join(present(c.message.content) for c in chunks).strip()
    assert "smollm2:135m" in {m.model for m in client.list().models}
    assert [m.model for m in client.ps().models] == ["smollm2:135m"]
    with pytest.raises(ollama.ResponseError) as err:
        client.generate(model="no-such-model:1b", prompt="x")
    assert err.value.status_code == 404


def test_base_model_completes_but_refuses_chat(runtime):
    client = OllamaClient(runtime)
    final = client.stream("/api/generate", {"model": "gemma3:270m", "prompt": "The capital of France is",
                                            "options": {"num_predict": 6}}, deadline=time.time() + 60)
    assert final["response"].strip()
    r = requests.post(f"{runtime}/api/chat", json={"model": "gemma3:270m", "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 400 and "no chat template" in r.json()["error"]
    r = requests.post(f"{runtime}/api/embed", json={"model": "gemma3:270m", "input": "hi"})
    assert r.status_code == 400 and "embeddings" in r.json()["error"]
    client.unload("gemma3:270m")


def test_uninstalled_model_names_its_install_command(runtime):
    missing = [m for m in CATALOG.values() if not is_installed(m)]
    if not missing:
        pytest.skip("every catalog model is installed here")
    r = requests.post(f"{runtime}/api/generate", json={"model": missing[0].name, "prompt": "x"})
    assert r.status_code == 404
    assert f'make models MODELS="{missing[0].name}"' in r.json()["error"]


def test_bad_requests_are_400(runtime):
    assert requests.post(f"{runtime}/api/generate", data="{").status_code == 400
    assert requests.post(f"{runtime}/api/generate", json={"model": "smollm2:135m", "prompt": 5}).status_code == 400
    assert requests.post(f"{runtime}/api/chat", json={"model": "smollm2:135m", "messages": "hi"}).status_code == 400
    r = requests.post(f"{runtime}/api/generate", json={"model": "smollm2:135m", "prompt": "x", "options": []})
    assert r.status_code == 400


def test_a_runner_does_not_grow_with_the_prompts_it_has_seen(runtime):
    """llama.cpp keeps earlier prompts' KV state in host memory (8 GiB of it by default) unless told
    not to: after 8 different prompts a runner here takes what it took after the first (with
    llama.cpp's default it grew by about 38 MB, the prompts' KV state), so the memory the scheduler
    budgeted at load stays true over a long run (EMBEDDED_PROMPT_CACHE_MIB, default 0)."""
    _load(runtime, "smollm2:135m")
    words = " ".join(f"w{j}" for j in range(60))

    def ask(i: int) -> None:
        r = requests.post(f"{runtime}/api/generate", json={"model": "smollm2:135m", "prompt": f"Story {i}: {words}",
                                                          "stream": False, "options": {"num_predict": 1}}, timeout=120)
        assert r.status_code == 200, r.text

    ask(0)
    before = _ps(runtime)[0]["size"]
    for i in range(1, 9):
        ask(i)
    assert _ps(runtime)[0]["size"] - before < 15_000_000
    _unload(runtime, "smollm2:135m")


def _ps(url: str) -> list[dict]:
    return requests.get(f"{url}/api/ps", timeout=10).json()["models"]


def _load(url: str, model: str, **options) -> None:
    r = requests.post(f"{url}/api/generate", json={"model": model, "keep_alive": "5m", "options": options},
                      timeout=60)
    assert r.status_code == 200 and r.json()["done_reason"] == "load", r.text


def _unload(url: str, model: str) -> None:
    requests.post(f"{url}/api/generate", json={"model": model, "keep_alive": 0}, timeout=60)
    wait_until(lambda: model not in {m["name"] for m in _ps(url)}, message=f"{model} to unload")


def _stream_generate(url: str, body: dict, record: dict) -> None:
    """A streaming /api/generate; notes when its first chunk and its end arrived, and the chunks."""
    with requests.post(f"{url}/api/generate", json={**body, "stream": True}, stream=True, timeout=60) as r:
        record["chunks"] = []
        for line in r.iter_lines():
            if line:
                record.setdefault("first", time.monotonic())
                record["chunks"].append(json.loads(line))
    record["end"] = time.monotonic()


def test_num_ctx_loads_and_a_different_one_reloads_after_requests_in_flight(runtime):
    name = "smollm2:135m"
    _unload(runtime, name)
    _load(runtime, name, num_ctx=1024)
    [before] = _ps(runtime)
    assert before["context_length"] == 1024 and before["num_parallel"] == 1

    in_flight: dict = {}
    worker = threading.Thread(target=_stream_generate, args=(runtime, {
        "model": name, "prompt": "Count from one to twenty.", "options": {"num_predict": 40, "temperature": 0}},
        in_flight))
    worker.start()
    wait_until(lambda: "first" in in_flight, timeout=30, message="the first request to stream")
    r = requests.post(f"{runtime}/api/generate", json={"model": name, "prompt": "Hi", "stream": False,
                                                       "options": {"num_ctx": 2048, "num_predict": 4}}, timeout=60)
    reloaded_at = time.monotonic()
    worker.join(30)
    assert r.status_code == 200 and r.json()["done"] and r.json()["load_duration"] > 0
    final = in_flight["chunks"][-1]
    assert final["done"] and "error" not in final          # the request in flight was not cut short
    assert in_flight["end"] <= reloaded_at
    [after] = _ps(runtime)
    assert after["context_length"] == 2048 and after["pid"] != before["pid"]
    assert after["size"] != before["size"]                  # the runner's RSS: a larger KV cache

    r = requests.post(f"{runtime}/api/generate", json={"model": name, "prompt": "Hi", "stream": False,
                                                       "options": {"num_predict": 2}}, timeout=60)
    assert r.status_code == 200 and _ps(runtime)[0]["pid"] == after["pid"]    # no num_ctx: no reload
    _load(runtime, name, num_ctx=100_000)
    assert _ps(runtime)[0]["context_length"] == CATALOG[name].context_length == 8192   # the trained context
    _unload(runtime, name)


def test_show_gives_the_gguf_metadata(runtime):
    r = requests.post(f"{runtime}/api/show", json={"model": "smollm2:135m"}, timeout=30)
    assert r.status_code == 200
    assert r.json()["parameters"] == "num_ctx 1024"
    info = r.json()["model_info"]
    assert info["general.architecture"] == "llama"
    assert {k: info[f"llama.{k}"] for k in ("block_count", "attention.head_count", "attention.head_count_kv",
                                            "embedding_length", "context_length")} == {
        "block_count": 30, "attention.head_count": 9, "attention.head_count_kv": 3, "embedding_length": 576,
        "context_length": 8192}
    assert "tokenizer.ggml.tokens" not in info                 # the vocabulary is left out
    info = requests.post(f"{runtime}/api/show", json={"model": "gemma3:270m"}, timeout=30).json()["model_info"]
    assert info["gemma3.attention.key_length"] == 256 and info["gemma3.attention.head_count_kv"] == 1


@pytest.mark.parametrize("num_ctx", [0, -5, 1.5, "2048", True])
def test_bad_num_ctx_is_400(runtime, num_ctx):
    for path, extra in (("generate", {"prompt": "x"}), ("generate", {}),
                        ("chat", {"messages": [{"role": "user", "content": "x"}]})):
        r = requests.post(f"{runtime}/api/{path}", json={"model": "smollm2:135m", "options": {"num_ctx": num_ctx},
                                                         **extra}, timeout=30)
        assert r.status_code == 400 and r.json()["error"] == "options.num_ctx must be a positive integer"


def test_waiting_requests_are_served_in_arrival_order(runtime):
    name = "smollm2:135m"
    _load(runtime, name)                                       # one slot (--parallel 1)
    records: list[dict] = [{}, {}, {}]
    workers = []
    for i, record in enumerate(records):
        body = {"model": name, "prompt": f"Write a short poem about the number {i}.",
                "options": {"num_predict": 16, "temperature": 0}}
        workers.append(threading.Thread(target=_stream_generate, args=(runtime, body, record)))
        workers[-1].start()
        time.sleep(0.05)
    for worker in workers:
        worker.join(60)
    assert all(r["chunks"][-1]["done"] for r in records)
    firsts = [r["first"] for r in records]
    ends = [r["end"] for r in records]
    assert firsts == sorted(firsts) and ends == sorted(ends)
    assert ends[0] <= firsts[1] and ends[1] <= firsts[2]       # one at a time
    _unload(runtime, name)


def test_slot_gate_lets_waiters_in_by_arrival_and_drops_those_whose_client_left():
    gate = SlotGate(1)
    assert gate.enter(lambda: False)                             # the one slot is taken
    order, results, gone = [], {}, {"b": False}

    def wait_turn(name: str) -> None:
        results[name] = gate.enter(lambda: gone.get(name, False))
        if results[name]:
            order.append(name)
            time.sleep(0.02)
            gate.leave()

    workers = []
    for i, name in enumerate("abc"):
        workers.append(threading.Thread(target=wait_turn, args=(name,)))
        workers[-1].start()
        wait_until(lambda i=i: len(gate._waiting) == i + 1, message=f"{name} to queue")
    gone["b"] = True                                             # b's client hangs up while it waits
    gate.leave()
    for worker in workers:
        worker.join(5)
    assert order == ["a", "c"] and results == {"a": True, "b": False, "c": True}
    assert gate.enter(lambda: False)                             # every slot came back


def test_chunked_model_is_joined_once_and_checked(tmp_path, monkeypatch):
    pkg = tmp_path / "pkgs"
    for i, payload in enumerate([b"GGUF-part-one|", b"part-two"], start=1):
        (pkg / f"fake_model_part{i}" / "data").mkdir(parents=True)
        (pkg / f"fake_model_part{i}" / "__init__.py").write_text("")
        (pkg / f"fake_model_part{i}" / "data" / f"part{i:02d}.bin").write_bytes(payload)
    monkeypatch.syspath_prepend(str(pkg))
    whole = tmp_path / "whole"
    whole.write_bytes(b"GGUF-part-one|part-two")
    good = EmbeddedModel("fake:1m", ("fake",), (("fake_model_part1", "data/part01.bin"),
                                                ("fake_model_part2", "data/part02.bin")),
                         sha256_of(whole), 22, "llama", "1M", "Q4", True, 512)
    files = ModelFiles(tmp_path / "cache")
    path = files.path(good)
    assert path.read_bytes() == b"GGUF-part-one|part-two" and path.parent == tmp_path / "cache"
    assert files.path(good) == path                       # second time: already joined and verified
    bad = EmbeddedModel("bad:1m", good.packages, good.parts, "0" * 64, 22, "llama", "1M", "Q4", True, 512)
    with pytest.raises(ModelUnavailable) as err:
        files.path(bad)
    assert err.value.status == 500 and "SHA-256" in str(err.value)
    missing = EmbeddedModel("gone:1m", ("gone==1",), (("not_a_package_here", "x.bin"),), "0" * 64, 1,
                            "llama", "1M", "Q4", True, 512)
    with pytest.raises(ModelUnavailable, match='make models MODELS="gone:1m"'):
        files.path(missing)
