"""The GPU simulator: its physics in virtual time, and its Ollama API on the wall clock, with
Ollama's slots, queue, KV memory, context reloads and cancellation, and its fault injection."""
import json
import threading
import time
from typing import Any

import pytest
import requests

from helpers import wait_until
from model_registry import DESIGN_CATALOG
from runtime.client import ModelNotFound, OllamaClient, RuntimeOutOfMemory
from runtime.launcher import ManagedRuntime, make_http_server
from scheduling.model_memory import kv_cache_bytes
from simulator.__main__ import main as simulator_main
from simulator.physics import EnergyMeter, SharedThroughput, SimOutOfMemory, VirtualGpu
from simulator.server import Simulator, create_sim_app

SPECS = {s.name: s for s in DESIGN_CATALOG}
QWEN = "qwen2.5:0.5b"
MINILM = "all-minilm:latest"
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


def footprint(name: str, num_ctx: int, slots: int) -> int:
    spec = SPECS[name]
    return spec.size_bytes + kv_cache_bytes(spec.arch, num_ctx, slots, spec.size_bytes)


def test_jobs_share_throughput_with_a_modest_batching_gain():
    tp: SharedThroughput[str] = SharedThroughput(tokens_per_s=100, batch_gain=0.25)
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


def test_energy_meter_integrates_idle_and_busy_power():
    meter = EnergyMeter(idle_w=60, busy_w=300, now=0.0)
    meter.update(2.0, busy=True)                   # 2 s idle
    meter.update(3.0, busy=False)                  # 1 s busy
    assert meter.update(4.0, busy=False) == pytest.approx(2 * 60 + 300 + 60)


def test_cli_refuses_bad_slot_settings():
    for args in (["--num-parallel", "0"], ["--max-queue", "0"], ["--num-ctx", "32"]):
        with pytest.raises(SystemExit) as exc:
            simulator_main(args)
        assert exc.value.code == 2


# --- the HTTP API, one simulator for the module (as the service starts it) ------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    runtime = ManagedRuntime("sim", "simulator", ["--vram-gb", "4.5", "--load-gbps", "20", "--tokens-per-s", "2000",
                                                   "--default-tokens", "20"],
                             tmp_path_factory.mktemp("sim") / "sim.log")
    url = runtime.start()
    yield url
    runtime.stop()


def test_ollama_api_load_generate_chat_embed_unload(sim):
    client = OllamaClient(sim)
    assert client.version().endswith("sim")
    assert {m["name"] for m in client.tags()} >= {"phi3:mini", "all-minilm:latest"}
    client.load(QWEN, "5m", timeout=10)
    ps = client.ps()
    assert [m["name"] for m in ps] == [QWEN] and ps[0]["size_vram"] == footprint(QWEN, 4096, 1)
    final = client.stream("/api/generate", {"model": QWEN, "prompt": "hi", "options": {"num_predict": 30}},
                          deadline=time.time() + 10)
    assert final["done"] and final["eval_count"] == 30 and len(final["response"].split()) == 30
    final = client.stream("/api/chat", {"model": QWEN, "messages": [{"role": "user", "content": "x"}]},
                          deadline=time.time() + 10)
    assert final["message"]["role"] == "assistant" and final["eval_count"] == 20
    client.load(MINILM, "5m", timeout=10, embedding=True)
    emb = client.embed({"model": MINILM, "input": ["a", "b"]}, deadline=time.time() + 10)
    assert len(emb["embeddings"]) == 2 and len(emb["embeddings"][0]) == 384
    assert client.unload(QWEN)["done_reason"] == "unload"
    assert [m["name"] for m in client.ps()] == [MINILM]
    client.unload(MINILM)
    with pytest.raises(ModelNotFound):
        client.load("nope:1b", "5m", timeout=10)


def test_load_beyond_memory_fails_like_ollama(sim):
    client = OllamaClient(sim)
    client.load("phi3:mini", "5m", timeout=10)                # 2.2 GB + 1.6 GB of KV cache at 4096
    with pytest.raises(RuntimeOutOfMemory):
        client.load("gemma:2b", "5m", timeout=10)
    stats = client.get_json("/api/sim/stats")
    assert stats["oom_errors"] == 1 and stats["peak_vram_bytes"] <= 4_500_000_000
    client.unload("phi3:mini")


def test_keep_alive_expires_idle_models(sim):
    requests.post(f"{sim}/api/generate", json={"model": "smollm:360m", "keep_alive": "300ms"}, timeout=10)
    assert [m["name"] for m in requests.get(f"{sim}/api/ps").json()["models"]] == ["smollm:360m"]
    # unloaded 300 ms after its request, and no later than 0.8 s from here, as before
    wait_until(lambda: requests.get(f"{sim}/api/ps").json()["models"] == [], timeout=0.8,
               message="the idle model to expire")


def test_bad_requests_get_400(sim):
    assert requests.post(f"{sim}/api/generate", data="{", timeout=5).status_code == 400
    assert requests.post(f"{sim}/api/generate", json={"model": "phi3:mini", "keep_alive": "soon"}).status_code == 400
    assert requests.post(f"{sim}/api/generate", json={"prompt": "x"}).status_code == 400
    options: object
    for options in ([], {"num_predict": "many"}, {"num_ctx": "8k"}, {"num_ctx": 0}, {"num_ctx": -1},
                    {"num_ctx": True}, {"num_ctx": 2048.5}):
        r = requests.post(f"{sim}/api/generate", json={"model": "phi3:mini", "prompt": "x", "options": options})
        assert r.status_code == 400 and "options" in r.json()["error"], options
    r = requests.post(f"{sim}/api/embed", json={"model": MINILM, "input": "x", "options": {"num_ctx": "big"}})
    assert r.status_code == 400 and "num_ctx" in r.json()["error"]
    assert requests.get(f"{sim}/api/ps").json()["models"] == []          # nothing was loaded for them


def test_unknown_models_get_ollamas_404(sim):
    for path, body in (("/api/generate", {"prompt": "x"}), ("/api/chat", {"messages": []}), ("/api/embed", {})):
        r = requests.post(f"{sim}{path}", json={"model": "nope:1b", **body}, timeout=5)
        assert r.status_code == 404
        assert r.json() == {"error": 'model "nope:1b" not found, try pulling it first'}
    assert requests.post(f"{sim}/api/show", json={"model": "nope:1b"}, timeout=5).status_code == 404


def test_show_describes_the_architecture(sim):
    show = requests.post(f"{sim}/api/show", json={"model": "smollm:360m"}, timeout=5).json()
    info = show["model_info"]
    assert info["general.architecture"] == "llama"
    assert (info["llama.block_count"], info["llama.attention.head_count"], info["llama.attention.head_count_kv"],
            info["llama.embedding_length"], info["llama.context_length"]) == (32, 15, 5, 960, 2048)
    assert show["parameters"] == "num_ctx 4096" and show["capabilities"] == ["completion"]
    gemma = requests.post(f"{sim}/api/show", json={"model": "gemma:2b"}, timeout=5).json()["model_info"]
    assert gemma["gemma.attention.key_length"] == 256


# --- slots, queue, reloads, faults: a fresh simulator in this process for each test --------------
@pytest.fixture
def serve():
    """Starts GPU simulators in this process, on werkzeug's threaded server as `python -m
    simulator` serves; 100 tokens/s, 20 tokens an answer unless said otherwise."""
    started = []

    def start(**settings) -> str:
        simulator = Simulator(**{"vram_gb": 8, "load_gbps": 50, "tokens_per_s": 100, "default_tokens": 20,
                                 **settings})
        server = make_http_server("127.0.0.1", 0, create_sim_app(simulator))
        threading.Thread(target=server.serve_forever, name="sim-http", daemon=True).start()
        started.append((server, simulator))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, simulator in started:
        server.shutdown()
        server.server_close()
        simulator.close()


def stats(url: str) -> dict:
    return requests.get(f"{url}/api/sim/stats", timeout=5).json()


def final_of(response: requests.Response) -> dict:
    """The last object of an answer (streamed or not)."""
    assert response.status_code == 200, response.text
    return json.loads(response.text.strip().splitlines()[-1])


class Requests:
    """Requests sent from threads (each answer read in full), kept in the order sent."""

    def __init__(self, url: str):
        self.url = url
        self.threads: list[threading.Thread] = []
        self.answers: dict[int, requests.Response | Exception] = {}

    def send(self, body: dict, path: str = "/api/generate", timeout: float = 15) -> int:
        index = len(self.threads)

        def run():
            try:
                self.answers[index] = requests.post(self.url + path, json=body, timeout=timeout)
            except requests.RequestException as exc:
                self.answers[index] = exc
        thread = threading.Thread(target=run, name=f"client-{index}")
        thread.start()
        self.threads.append(thread)
        return index

    def join(self) -> list:
        for thread in self.threads:
            thread.join(20)
        return [self.answers[i] for i in range(len(self.threads))]


def test_requests_beyond_the_slots_wait_first_come_first_served(serve):
    url = serve(num_parallel=1, default_tokens=30)
    sent = Requests(url)
    for i in range(4):
        sent.send({"model": QWEN, "prompt": f"prompt {i}"})                # streamed
        time.sleep(0.03)
    finals = [final_of(r) for r in sent.join()]
    assert all(f["done"] and f["eval_count"] == 30 for f in finals)
    s = stats(url)
    assert s["max_running"][QWEN] == 1 and s["max_in_flight"][QWEN] == 4
    assert [e["prompt"] for e in s["served"]] == [f"prompt {i}" for i in range(4)]
    assert [e["model"] for e in s["served"]] == [QWEN] * 4
    assert s["waiting"] == 0 and s["running"] == 0 and s["completed"] == 4
    # The last one waited for three others (0.3 s each); its eval_duration is its own generation only.
    last = finals[3]
    assert last["load_duration"] > 0.5e9
    assert 0.25e9 < last["eval_duration"] < 0.5e9 and last["prompt_eval_duration"] < 0.01e9
    assert last["total_duration"] >= last["load_duration"] + last["eval_duration"]
    assert all(isinstance(f[k], int) for f in finals for k in ("total_duration", "load_duration", "eval_duration"))


def test_each_model_runs_num_parallel_requests_at_once_and_embedding_models_one(serve):
    url = serve(num_parallel=2)
    sent = Requests(url)
    for i in range(3):
        sent.send({"model": QWEN, "prompt": f"p{i}", "stream": False})
        time.sleep(0.03)
    for _ in range(2):          # 400 tokens of input each: ~0.4 s apiece on the one slot
        sent.send({"model": MINILM, "input": ["x" * 1600]}, path="/api/embed")
    answers = sent.join()
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers]
    s = stats(url)
    assert s["max_running"] == {QWEN: 2, MINILM: 1} and s["max_in_flight"][QWEN] == 3
    assert s["num_parallel"] == 2
    assert [e["prompt"] for e in s["served"] if e["model"] == MINILM] == ["x" * 1600] * 2
    sizes = {m["name"]: (m["size"], m["size_vram"]) for m in requests.get(f"{url}/api/ps").json()["models"]}
    assert sizes == {QWEN: (footprint(QWEN, 4096, 2),) * 2, MINILM: (footprint(MINILM, 4096, 1),) * 2}


def test_a_full_queue_answers_503_like_ollama(serve):
    url = serve(num_parallel=1, max_queue=2)
    sent = Requests(url)
    sent.send({"model": QWEN, "prompt": "long", "options": {"num_predict": 100}})       # 1 s
    wait_until(lambda: stats(url)["running"] == 1, timeout=5, message="the first request to run")
    sent.send({"model": QWEN, "prompt": "b", "options": {"num_predict": 5}})
    wait_until(lambda: stats(url)["waiting"] == 1, timeout=5, message="one request to wait")
    sent.send({"model": QWEN, "prompt": "c", "options": {"num_predict": 5}})
    wait_until(lambda: stats(url)["waiting"] == 2, timeout=5, message="two requests to wait")
    r = requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "d"}, timeout=5)
    assert r.status_code == 503 and r.json() == {"error": BUSY_MESSAGE}
    assert all(r.status_code == 200 for r in sent.join())
    s = stats(url)
    assert s["rejected_busy"] == 1 and [e["prompt"] for e in s["served"]] == ["long", "b", "c"]


def test_load_reserves_weights_and_kv_cache_and_another_num_ctx_reloads(serve):
    url = serve(num_parallel=2)
    r = requests.post(f"{url}/api/generate", json={"model": QWEN, "stream": False}, timeout=5)
    assert r.json()["done_reason"] == "load"
    [model] = requests.get(f"{url}/api/ps").json()["models"]
    assert model["size"] == model["size_vram"] == footprint(QWEN, 4096, 2) and model["context_length"] == 4096
    assert stats(url)["vram_used_bytes"] == footprint(QWEN, 4096, 2)

    sent = Requests(url)
    sent.send({"model": QWEN, "prompt": "running", "options": {"num_predict": 60}})     # 0.6 s at 4096
    wait_until(lambda: stats(url)["running"] == 1, timeout=5, message="the first request to run")
    sent.send({"model": QWEN, "prompt": "bigger", "options": {"num_ctx": 8192}, "stream": False})
    wait_until(lambda: stats(url)["waiting"] == 1, timeout=5, message="the reload to wait")
    sent.send({"model": QWEN, "prompt": "after", "stream": False})     # a slot is free, but it comes later
    first, bigger, after = [final_of(r) for r in sent.join()]
    assert first["eval_count"] == 60 and first["done_reason"] == "length"       # not cut short by the reload
    assert bigger["load_duration"] > 0.3e9                                        # waited for it to finish
    s = stats(url)
    assert [e["prompt"] for e in s["served"]] == ["running", "bigger", "after"]
    assert (s["loads"], s["unloads"]) == (2, 1)                                   # one reload, "after" fits it
    [model] = requests.get(f"{url}/api/ps").json()["models"]
    assert model["size"] == model["size_vram"] == footprint(QWEN, 8192, 2) and model["context_length"] == 8192
    assert s["vram_used_bytes"] == footprint(QWEN, 8192, 2)
    # A load that asks for another context reloads too; one that asks for none keeps what is loaded.
    requests.post(f"{url}/api/generate", json={"model": QWEN, "options": {"num_ctx": 2048}}, timeout=5)
    requests.post(f"{url}/api/generate", json={"model": QWEN}, timeout=5)
    [model] = requests.get(f"{url}/api/ps").json()["models"]
    assert model["context_length"] == 2048 and model["size"] == footprint(QWEN, 2048, 2)
    assert stats(url)["loads"] == 3


def test_unload_waits_for_the_requests_that_came_first_and_a_later_one_cancels_it(serve):
    url = serve(num_parallel=1)

    def loaded() -> list[str]:
        return [m["name"] for m in requests.get(f"{url}/api/ps", timeout=5).json()["models"]]

    sent = Requests(url)
    sent.send({"model": QWEN, "prompt": "a", "options": {"num_predict": 40}})
    wait_until(lambda: stats(url)["running"] == 1, timeout=5, message="the first request to run")
    sent.send({"model": QWEN, "prompt": "b", "options": {"num_predict": 10}})
    wait_until(lambda: stats(url)["waiting"] == 1, timeout=5, message="the second request to wait")
    unload = requests.post(f"{url}/api/generate", json={"model": QWEN, "keep_alive": 0}, timeout=5).json()
    assert unload["done_reason"] == "unload" and loaded() == [QWEN]
    assert all(r.status_code == 200 for r in sent.join())
    wait_until(lambda: loaded() == [], timeout=2, message="the model to be unloaded once idle")
    assert [e["prompt"] for e in stats(url)["served"]] == ["a", "b"]

    sent = Requests(url)
    sent.send({"model": QWEN, "prompt": "c", "options": {"num_predict": 40}})
    wait_until(lambda: stats(url)["running"] == 1, timeout=5, message="the request to run")
    requests.post(f"{url}/api/generate", json={"model": QWEN, "keep_alive": 0}, timeout=5)
    sent.send({"model": QWEN, "prompt": "d", "options": {"num_predict": 10}})
    assert all(r.status_code == 200 for r in sent.join())
    time.sleep(0.2)
    assert loaded() == [QWEN] and stats(url)["unloads"] == 1


def test_a_waiting_request_whose_client_left_never_gets_a_slot(serve):
    url = serve(num_parallel=1)
    sent = Requests(url)
    sent.send({"model": QWEN, "prompt": "running", "options": {"num_predict": 100}})    # 1 s
    wait_until(lambda: stats(url)["running"] == 1, timeout=5, message="the first request to run")
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "gone"}, timeout=(5, 0.3))
    wait_until(lambda: stats(url)["waiting"] == 0, timeout=2, message="the simulator to drop the waiter")
    sent.send({"model": QWEN, "prompt": "next"})
    assert all(r.status_code == 200 for r in sent.join())
    s = stats(url)
    assert [e["prompt"] for e in s["served"]] == ["running", "next"]
    assert s["cancelled"] == 1 and s["max_in_flight"][QWEN] == 2


def test_a_client_that_leaves_mid_answer_frees_its_slot(serve):
    url = serve(num_parallel=1)
    with requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "x", "options": {"num_predict": 500}},
                       stream=True, timeout=5) as r:
        assert json.loads(next(r.iter_lines()))["done"] is False
    wait_until(lambda: stats(url)["running"] == 0, timeout=3, message="the slot to be freed")
    s = stats(url)
    assert s["cancelled"] == 1 and s["completed"] == 0 and s["utilization_pct"] == 0.0


def test_fault_stall_holds_the_slot_until_the_client_leaves(serve):
    url = serve(num_parallel=1)
    assert requests.post(f"{url}/api/sim/faults", json={"stall": 1}, timeout=5).json()["stall"] == 1
    sent = Requests(url)
    started = time.time()
    with requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "stalls"}, stream=True,
                       timeout=(5, 1)) as r:
        lines = r.iter_lines()
        assert json.loads(next(lines))["done"] is False                           # the first chunk comes
        sent.send({"model": QWEN, "prompt": "behind", "stream": False})
        wait_until(lambda: stats(url)["waiting"] == 1, timeout=5, message="the next request to wait")
        time.sleep(0.3)
        s = stats(url)
        assert (s["running"], s["waiting"], s["utilization_pct"]) == (1, 1, 0.0)  # holds its slot, generates nothing
        with pytest.raises(requests.exceptions.ConnectionError):                  # read timeout: nothing more
            next(lines)
        assert time.time() - started >= 1.0
    left = time.time()
    [behind] = sent.join()
    assert final_of(behind)["done"] and time.time() - left < 2.0                  # the slot was freed
    assert requests.get(f"{url}/api/sim/faults", timeout=5).json()["stall"] == 0
    # Not streamed: no answer at all until the client gives up.
    requests.post(f"{url}/api/sim/faults", json={"stall": 1}, timeout=5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "s", "stream": False}, timeout=(5, 1))
    r = requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "ok", "stream": False}, timeout=3)
    assert final_of(r)["done"]
    assert stats(url)["cancelled"] == 2


def test_fault_error_answers_with_the_status_and_message(serve):
    url = serve()
    pending = requests.post(f"{url}/api/sim/faults", json={"error": 2, "status": 503, "message": "boom"}).json()
    assert (pending["error"], pending["status"], pending["message"]) == (2, 503, "boom")
    r = requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "x"}, timeout=5)
    assert r.status_code == 503 and r.json() == {"error": "boom"}
    r = requests.post(f"{url}/api/embed", json={"model": MINILM, "input": "x"}, timeout=5)
    assert r.status_code == 503 and r.json() == {"error": "boom"}
    assert final_of(requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "x"}, timeout=5))["done"]
    requests.post(f"{url}/api/sim/faults", json={"error": 1})
    r = requests.post(f"{url}/api/chat", json={"model": QWEN, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 500 and r.json() == {"error": "llama runner process has terminated: exit status 2"}


def test_fault_garbage_and_drop_break_the_stream(serve):
    url = serve()
    requests.post(f"{url}/api/sim/faults", json={"garbage": 1, "drop": 1}, timeout=5)
    r = requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "x"}, timeout=5)
    first, garbage, *rest = r.text.splitlines()
    assert r.status_code == 200 and json.loads(first)["done"] is False and rest == []
    with pytest.raises(ValueError):
        json.loads(garbage)
    got: list[dict[str, Any]] = []
    with pytest.raises(requests.exceptions.ChunkedEncodingError):                 # the connection is cut
        with requests.post(f"{url}/api/chat", json={"model": QWEN, "messages": [{"role": "user", "content": "x"}]},
                           stream=True, timeout=5) as r:
            got.extend(json.loads(line) for line in r.iter_lines())
    assert [g["done"] for g in got] == [False]
    wait_until(lambda: stats(url)["running"] == 0, timeout=3, message="the slots to be freed")
    assert final_of(requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "x"}, timeout=5))["done"]
    # Garbage and drop apply to streamed answers only; clearing drops what is pending.
    requests.post(f"{url}/api/sim/faults", json={"garbage": 2, "drop": 3}, timeout=5)
    r = requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "x", "stream": False}, timeout=5)
    assert r.json()["done"] and requests.get(f"{url}/api/sim/faults", timeout=5).json()["garbage"] == 2
    assert requests.post(f"{url}/api/sim/faults", json={"clear": True}, timeout=5).json() == {
        "stall": 0, "error": 0, "garbage": 0, "drop": 0, "status": 500,
        "message": "llama runner process has terminated: exit status 2"}
    assert requests.post(f"{url}/api/sim/faults", json={"stall": -1}, timeout=5).status_code == 400


def test_energy_grows_faster_while_generating(serve):
    url = serve(idle_watts=60, busy_watts=300)
    t0, e0 = time.time(), stats(url)["energy_j"]
    time.sleep(0.5)
    t1, e1 = time.time(), stats(url)["energy_j"]
    r = requests.post(f"{url}/api/generate", json={"model": QWEN, "prompt": "x", "stream": False,
                                                   "options": {"num_predict": 60}}, timeout=5)
    t2, e2 = time.time(), stats(url)["energy_j"]
    assert final_of(r)["eval_count"] == 60
    idle_w, busy_w = (e1 - e0) / (t1 - t0), (e2 - e1) / (t2 - t1)
    assert idle_w == pytest.approx(60, rel=0.2)
    assert busy_w > 200 and busy_w > 3 * idle_w
