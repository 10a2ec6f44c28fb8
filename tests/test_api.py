"""The HTTP API against a real service on the GPU simulator: every error status, and the happy path."""
import json

import pytest

from api import create_app
from helpers import make_config
from service.facade import Service


@pytest.fixture(scope="module")
def api(module_service):
    # 3.5 GB virtual GPU: capacity 2.43 GB after the 1 GiB margin, so phi3:mini (2.86 GB planned)
    # can never fit while gemma:2b (2.21 GB) can.
    _, client = module_service(SIM_VRAM_GB=3.5, MAX_PROMPT_BYTES=20_000)
    return client


def submit(client, body, **kw):
    return client.post("/api/submit", data=json.dumps(body) if not isinstance(body, (bytes, str)) else body,
                       content_type="application/json", **kw)


def test_submit_then_poll_until_complete(api):
    r = submit(api, {"model": "qwen2.5:0.5b", "prompt": "hello", "priority": "high",
                     "metadata": {"experiment": "e1"}})
    assert r.status_code == 202
    body = r.get_json()
    assert body["status"] == "pending" and body["position"] == 0 and len(body["job_id"]) == 32
    assert r.headers["Location"] == f"/api/job/{body['job_id']}"
    job = api.get(f"/api/job/{body['job_id']}?wait=20").get_json()
    assert job["status"] == "complete", job
    assert job["result"]["response"].strip()
    m = job["metrics"]
    assert m["output_tokens"] == 16 and m["prompt_tokens"] >= 1 and m["run_s"] > 0
    assert m["queue_wait_s"] >= 0 and m["tokens_per_s"] > 0 and m["total_s"] >= m["run_s"]
    assert job["metadata"] == {"experiment": "e1"} and job["priority"] == "high"
    for key in ("submitted_at", "started_at", "completed_at"):
        assert job[key].endswith("+00:00")


def test_chat_and_embed_kinds(api):
    r = submit(api, {"model": "qwen2.5:0.5b", "kind": "chat",
                     "messages": [{"role": "user", "content": "hi"}]}, query_string={"wait": 20})
    assert r.status_code == 200 and r.get_json()["result"]["message"]["role"] == "assistant"
    r = submit(api, {"model": "all-minilm", "kind": "embed", "input": ["a", "b"]}, query_string={"wait": 20})
    job = r.get_json()
    assert r.status_code == 200 and job["model"] == "all-minilm:latest"
    assert len(job["result"]["embeddings"]) == 2


@pytest.mark.parametrize("body, field", [
    (b"{not json", "body"),
    (b"", "body"),
    (b"[1, 2]", "body"),
    ({"prompt": "hi"}, "model"),
    ({"model": 7, "prompt": "hi"}, "model"),
    ({"model": "qwen2.5:0.5b"}, "prompt"),
    ({"model": "qwen2.5:0.5b", "prompt": 5}, "prompt"),
    ({"model": "qwen2.5:0.5b", "prompt": "hi", "priority": "urgent"}, "priority"),
    ({"model": "qwen2.5:0.5b", "prompt": "hi", "kind": "train"}, "kind"),
    ({"model": "qwen2.5:0.5b", "prompt": "hi", "timeout_s": "soon"}, "timeout_s"),
    ({"model": "qwen2.5:0.5b", "prompt": "hi", "timeout_s": -1}, "timeout_s"),
    ({"model": "qwen2.5:0.5b", "prompt": "hi", "timeout_s": 10**9}, "timeout_s"),
    ({"model": "qwen2.5:0.5b", "prompt": "hi", "options": []}, "options"),
    ({"model": "qwen2.5:0.5b", "kind": "chat"}, "messages"),
    ({"model": "qwen2.5:0.5b", "kind": "chat", "messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"model": "qwen2.5:0.5b", "kind": "embed"}, "input"),
    ({"model": "qwen2.5:0.5b", "prompt": "hi", "metadata": {"$where": 1}}, "metadata"),
    ({"model": "qwen2.5:0.5b", "prompt": "hi", "metadata": {"a": {"b.c": 1}}}, "metadata"),
    ({"model": "qwen2.5:0.5b", "kind": "embed", "input": "x"}, "kind"),   # a model without embeddings
])
def test_bad_input_is_a_400_naming_the_field(api, body, field):
    r = submit(api, body)
    assert r.status_code == 400, r.get_json()
    payload = r.get_json()
    assert payload["field"] == field and payload["error"]


def test_unknown_model_is_404_with_suggestions(api):
    r = submit(api, {"model": "phi3:mni", "prompt": "hi"})
    assert r.status_code == 404
    assert "phi3:mini" in r.get_json()["suggestions"]


def test_model_that_can_never_fit_is_422_with_models_that_do(api):
    r = submit(api, {"model": "phi3:mini", "prompt": "hi"})
    assert r.status_code == 422
    body = r.get_json()
    assert body["need_bytes"] > body["capacity_bytes"]
    assert "gemma:2b" in body["fitting_models"] and "phi3:mini" not in body["fitting_models"]


def test_oversized_body_is_413(api):
    r = submit(api, {"model": "qwen2.5:0.5b", "prompt": "x" * 30_000})
    assert r.status_code == 413 and "MAX_PROMPT_BYTES" in r.get_json()["error"]


def test_unknown_job_and_routes(api):
    assert api.get("/api/job/nope").status_code == 404
    assert api.post("/api/job/nope/cancel").status_code == 404
    r = api.get("/api/nothing")
    assert r.status_code == 404 and "error" in r.get_json()
    r = api.get("/api/submit")
    assert r.status_code == 405 and "error" in r.get_json()


@pytest.mark.parametrize("query, field", [("status=lost", "status"), ("limit=abc", "limit"),
                                          ("limit=0", "limit"), ("limit=5000", "limit")])
def test_job_listing_rejects_bad_filters(api, query, field):
    r = api.get(f"/api/jobs?{query}")
    assert r.status_code == 400 and r.get_json()["field"] == field


def test_bad_wait_is_400(api):
    assert api.get("/api/job/x?wait=abc").status_code == 400
    assert api.get("/api/job/x?wait=-1").status_code == 400
    assert api.get("/api/job/x?wait=nan").status_code == 400


def test_cancel_finished_job_is_409(api):
    job = submit(api, {"model": "qwen2.5:0.5b", "prompt": "hi"}, query_string={"wait": 20}).get_json()
    assert job["status"] == "complete"
    r = api.post(f"/api/job/{job['job_id']}/cancel")
    assert r.status_code == 409 and r.get_json()["status"] == "complete"


def test_listing_stats_models_and_health(api):
    submit(api, {"model": "qwen2.5:0.5b", "prompt": "hi"}, query_string={"wait": 20})
    jobs = api.get("/api/jobs?status=complete&model=qwen2.5:0.5b&limit=5").get_json()
    assert jobs["count"] >= 1 and all(j["status"] == "complete" for j in jobs["jobs"])
    stats = api.get("/api/stats").get_json()
    assert set(stats) >= {"running", "queue", "resources", "scheduler", "errors", "runtime"}
    assert stats["queue"]["by_status"]["complete"] >= 1
    assert stats["resources"]["vram"]["total"] == 3_500_000_000
    assert stats["runtime"]["kind"] == "sim" and stats["runtime"]["url"].startswith("http://127.0.0.1:")
    assert set(stats["errors"]) == {"oom", "runtime", "timeout"}
    assert stats["scheduler"]["passes"] > 0 and stats["scheduler"]["loads"] >= 1
    ledger = api.get("/api/ledger?model=qwen2.5:0.5b&limit=3").get_json()
    assert 1 <= ledger["count"] <= 3 and ledger["entries"][0]["model"] == "qwen2.5:0.5b"
    assert api.get("/api/ledger?limit=0").status_code == 400
    models = {m["name"]: m for m in api.get("/api/models").get_json()["models"]}
    assert models["phi3:mini"]["fits"] is False and models["gemma:2b"]["fits"] is True
    # measured through /api/ps: the weights and the KV cache of one slot of NUM_CTX tokens
    assert models["qwen2.5:0.5b"]["learned_bytes"] == 398_000_000 + models["qwen2.5:0.5b"]["kv_cache_bytes"]
    assert models["qwen2.5:0.5b"]["slots"] == 1 and models["qwen2.5:0.5b"]["num_ctx"] == 4096
    assert api.get("/api/health").status_code == 200


def test_queue_full_is_429_with_retry_after_and_health_503_without_scheduler(tmp_path):
    cfg = make_config(tmp_path, QUEUE_MAX_SIZE=3)
    service = Service(cfg)                      # never started: nothing drains the queue
    client = create_app(cfg, service).test_client()
    for _ in range(3):
        assert submit(client, {"model": "qwen2.5:0.5b", "prompt": "hi"}).status_code == 202
    r = submit(client, {"model": "qwen2.5:0.5b", "prompt": "hi"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0
    assert client.get("/api/health").status_code == 503
    assert client.get("/api/stats").get_json()["queue"]["total_jobs"] == 3
    service.store.close()
