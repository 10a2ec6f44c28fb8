"""Several runtime nodes end to end: simulated nodes started by the service (SIM_NODES), and
standalone simulators addressed as Ollama nodes (OLLAMA_URLS), which can be killed and restarted
like a real node's Ollama."""
import collections
import random
import signal

import pytest
import requests

from helpers import wait_until
from runtime.launcher import ManagedRuntime
from vram_scheduler import Phase

pytestmark = pytest.mark.slow


def sim_stats(url):
    return requests.get(url + "/api/sim/stats", timeout=5).json()


def idle(stats):
    """A simulator holds no request: none running, none waiting for a slot."""
    return stats["running"] == 0 and stats["waiting"] == 0


def settled(service):
    """The scheduler's table holds one model, loaded, and its latest reading of the runtime was taken
    after the table last changed it."""
    models = service.core.states()
    return ([m.phase for m in models] == [Phase.LOADED]
            and service.state is not None and service.state.taken_at > models[0].changed_at)


def wait_for_jobs(client, ids, timeout=120):
    def ended():
        jobs = [client.get(f"/api/job/{job_id}").get_json() for job_id in ids]
        return jobs if all(j["status"] in ("complete", "failed", "cancelled") for j in jobs) else None
    return wait_until(ended, timeout=timeout, interval=0.2, message="every job to end")


def test_200_random_jobs_on_three_6gb_nodes_all_complete_without_running_out_of_memory(running_service):
    service, client = running_service(SIM_NODES=3, SIM_VRAM_GB=6)
    urls = [n.url for n in service.term.nodes]
    assert len(urls) == 3
    models = client.get("/api/models").get_json()["models"]
    assert len(models) >= 10 and all(m["fits"] for m in models)          # every registry model, one slot each
    rng = random.Random(7)
    ids = []
    for i in range(200):
        m = rng.choice(models)
        embed = "embedding" in m.get("capabilities", []) and "completion" not in m.get("capabilities", [])
        body = ({"model": m["name"], "kind": "embed", "input": f"text {i}"} if embed else
                {"model": m["name"], "prompt": f"job {i}", "options": {"num_predict": rng.randint(4, 40)}})
        body["priority"] = rng.choice(["low", "normal", "high"])
        resp = client.post("/api/submit", json=body)
        assert resp.status_code == 202, resp.get_json()
        ids.append(resp.get_json()["job_id"])
    jobs = wait_for_jobs(client, ids)
    assert collections.Counter(j["status"] for j in jobs) == {"complete": 200}
    stats = [sim_stats(u) for u in urls]
    assert [s["oom_errors"] for s in stats] == [0, 0, 0]
    assert all(s["peak_vram_bytes"] <= s["vram_total_bytes"] for s in stats)
    served_on = {url: {a["model"] for a in s["answered"]} for url, s in zip(urls, stats, strict=False)}
    assert sum(1 for models in served_on.values() if models) >= 2          # models placed on two nodes at least
    service.publish()
    nodes = client.get("/api/stats").get_json()["nodes"]
    assert [n["url"] for n in nodes] == urls and all(n["ok"] for n in nodes)
    assert all(set(n["vram"]) >= {"total", "used", "free"} and "slots_in_use" in n for n in nodes)


def test_a_multi_gpu_node_places_models_per_gpu_and_never_overfills_one(running_service):
    # 2 GPUs of 2.5 GB: no model may be split (GPU_SPLIT=single), so memory free on both is not one pool
    service, client = running_service(SIM_VRAM_GB=5, SIM_GPUS_PER_NODE=2, GPU_SPLIT="single", SIM_NUM_PARALLEL=1,
                                      VRAM_SAFETY_MARGIN_MB=100)
    names = ["phi3:mini", "gemma:2b", "smollm:1.7b", "qwen2.5:1.5b", "llama3.2:1b", "tinyllama:1.1b"]
    ids = [client.post("/api/submit", json={"model": names[i % len(names)], "prompt": f"p{i}"}).get_json()["job_id"]
           for i in range(36)]
    jobs = wait_for_jobs(client, ids)
    by_status = collections.Counter(j["status"] for j in jobs)
    stats = sim_stats(service.runtime.url)
    assert stats["oom_errors"] == 0
    assert len(stats["gpus"]) == 2
    # phi3:mini needs more than one 2.5 GB GPU: it can never fit, and says so, while the rest complete
    failed = {j["model"] for j in jobs if j["status"] == "failed"}
    assert failed <= {"phi3:mini"} and by_status["complete"] >= 30
    for j in jobs:
        if j["status"] == "failed":
            assert "can ever be used" in j["error"]


@pytest.fixture
def two_nodes(tmp_path):
    """Two standalone simulators with 4 slots per model, as two Ollama nodes of 6 GB."""
    started = []

    def start(name, port=0):
        sim = ManagedRuntime("sim", "simulator", ["--num-parallel", "4", "--tokens-per-s", "300", "--load-gbps", "50",
                                                  "--default-tokens", "16", "--vram-gb", "6"],
                             tmp_path / f"{name}.log", fixed_port=port)
        url = sim.start()
        started.append(sim)
        return sim, url
    yield start
    for sim in started:
        sim.stop()


def jobs_running_on(client, url_a, url_b, per_model, tokens, on_b):
    """Jobs for two models, submitted until both nodes run some (`on_b` or more on node b)."""
    ids = [client.post("/api/submit", json={"model": model, "prompt": f"{model} job {i}",
                                            "options": {"num_predict": tokens}}).get_json()["job_id"]
           for i in range(per_model) for model in ("qwen2.5:0.5b", "llama3.2:1b")]
    wait_until(lambda: sim_stats(url_b)["running"] >= on_b and sim_stats(url_a)["running"] >= 1,
               message="jobs running on both nodes")
    return ids


def test_a_node_killed_mid_run_has_its_jobs_finish_elsewhere_none_lost_none_answered_twice(running_service, two_nodes):
    sim_a, url_a = two_nodes("a")
    sim_b, url_b = two_nodes("b")
    service, client = running_service(BACKEND="ollama", OLLAMA_URLS=f"{url_a}#vram=6,{url_b}#vram=6",
                                      OLLAMA_NUM_PARALLEL=4, NODE_DOWN_AFTER_S=1.0, REPLICA_AFTER=4)
    ids = jobs_running_on(client, url_a, url_b, per_model=12, tokens=200, on_b=2)
    before_kill = sim_stats(url_b)["answered"]
    sim_b.process.send_signal(signal.SIGKILL)
    sim_b.process.wait(10)
    jobs = wait_for_jobs(client, ids)
    assert [j["status"] for j in jobs] == ["complete"] * len(ids), [j.get("error") for j in jobs]  # none lost
    answered = collections.Counter(a["prompt"] for a in sim_stats(url_a)["answered"] + before_kill)
    assert len(answered) == len(ids) and max(answered.values()) == 1        # none answered twice
    assert any(j["attempts"] >= 2 for j in jobs)                            # those cut off ran again
    service.publish()
    down = {n["url"]: n["ok"] for n in client.get("/api/stats").get_json()["nodes"]}
    assert down == {url_a: True, url_b: False}
    # the node comes back on its address: it rejoins and takes work again
    port = int(url_b.rsplit(":", 1)[1])
    _, url_b2 = two_nodes("b-again", port)
    assert url_b2 == url_b

    def rejoined():
        service.publish()
        return {n["url"]: n["ok"] for n in client.get("/api/stats").get_json()["nodes"]}[url_b]
    wait_until(rejoined, timeout=20, message="the node to rejoin")


def test_nodes_are_added_and_removed_at_run_time_by_admins_only(running_service, two_nodes, tmp_path):
    _, url_a = two_nodes("a")
    _, url_b = two_nodes("b")
    service, client = running_service(BACKEND="ollama", OLLAMA_URLS=f"{url_a}#vram=6", OLLAMA_NUM_PARALLEL=4)
    assert client.post("/api/admin/nodes", json={"url": "ftp://x"}).status_code == 400
    assert client.post("/api/admin/nodes", json={"url": "http://x:1#gpu=2"}).status_code == 400
    assert client.post("/api/admin/nodes", data="{").status_code == 400
    resp = client.post("/api/admin/nodes", json={"url": url_b})
    assert resp.status_code == 202
    wait_until(lambda: len(service.term.nodes) == 2, message="the node to be added")
    # a simulator answers its own stats route: its memory is read from it
    assert service.term.nodes[1].runtime.kind == "sim"
    service.publish()
    listed = client.get("/api/admin/nodes").get_json()
    assert [n["url"] for n in listed["nodes"]] == [url_a, url_b]
    assert client.delete("/api/admin/nodes", json={"url": url_b}).status_code == 202
    wait_until(lambda: [n.url for n in service.term.nodes] == [url_a], message="the node to be removed")
    ids = [client.post("/api/submit", json={"model": "qwen2.5:0.5b", "prompt": f"p{i}"}).get_json()["job_id"]
           for i in range(6)]
    wait_for_jobs(client, ids)
    assert sim_stats(url_b)["completed"] == 0                               # a removed node gets no work


def test_a_node_that_stops_answering_is_marked_down_and_its_jobs_finish_elsewhere(running_service, two_nodes):
    sim_a, url_a = two_nodes("a")
    sim_b, url_b = two_nodes("b")
    service, client = running_service(BACKEND="ollama", OLLAMA_URLS=f"{url_a}#vram=6,{url_b}#vram=6",
                                      OLLAMA_NUM_PARALLEL=4, NODE_DOWN_AFTER_S=1.0, RUNTIME_CONNECT_TIMEOUT_S=0.5)
    ids = jobs_running_on(client, url_a, url_b, per_model=8, tokens=150, on_b=1)
    sim_b.process.send_signal(signal.SIGSTOP)         # alive, but answers nothing
    try:
        jobs = wait_for_jobs(client, ids, timeout=90)
        assert [j["status"] for j in jobs] == ["complete"] * len(ids)
        assert any(j["attempts"] >= 2 for j in jobs)          # the ones the node held ran again
        service.publish()
        assert {n["url"]: n["ok"] for n in client.get("/api/stats").get_json()["nodes"]} == {url_a: True, url_b: False}
    finally:
        sim_b.process.send_signal(signal.SIGCONT)

    def rejoined():
        service.publish()
        return {n["url"]: n["ok"] for n in client.get("/api/stats").get_json()["nodes"]}[url_b]
    wait_until(rejoined, timeout=20, message="the node to answer again")
    # what it had in hand, it notices was abandoned: it holds no request any more (an answer it
    # sends is counted before its slot is let go)
    wait_until(lambda: idle(sim_stats(url_b)), timeout=20, message="node b to let go of what it held")
    answered = collections.Counter(a["prompt"] for u in (url_a, url_b) for a in sim_stats(u)["answered"])
    assert max(answered.values()) == 1                # nothing answered on both nodes


def test_the_last_node_cannot_be_removed_and_a_node_url_must_say_its_memory_plainly(running_service):
    service, client = running_service()
    service.publish()
    only = client.get("/api/stats").get_json()["nodes"][0]["url"]
    assert client.delete("/api/admin/nodes", json={"url": only}).status_code == 409
    for bad in ("http://x:1#vram=nan", "http://x:1#vram=inf", "http://x:1#vram=-2", "http://x:1#vram=lots"):
        assert client.post("/api/admin/nodes", json={"url": bad}).status_code == 400, bad


def test_pinned_models_are_loaded_before_any_job_and_a_name_no_node_has_is_never_tried(running_service):
    service, client = running_service(PINNED_MODELS="qwen2.5:0.5b,no-such-model:7b")
    wait_until(lambda: sim_stats(service.runtime.url)["loads"] >= 1, message="the pinned model to load")
    # Whatever else the scheduler would load, it decides on a pass (every 0.02 s here) that has read
    # the pinned model loaded, and marks it loading in its table until the runtime has answered: wait
    # until it has planned several passes on a reading taken after the load with nothing else in hand.
    core = service.core
    wait_until(lambda: settled(service), message="a reading of the runtime after the pinned load")
    passes = core.passes
    wait_until(lambda: core.passes >= passes + 5 and settled(service), message="passes planned on that reading")
    stats = sim_stats(service.runtime.url)
    assert stats["loads"] == 1 and stats["completed"] == 0           # loaded with no job asking; nothing else tried
    ps = requests.get(service.runtime.url + "/api/ps", timeout=5).json()["models"]
    assert [m["name"] for m in ps] == ["qwen2.5:0.5b"]
    service.publish()
    assert client.get("/api/stats").get_json()["errors"]["runtime"] == 0   # no load of the unknown name was sent
