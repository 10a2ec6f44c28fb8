"""API keys, tenants and quotas through the HTTP API: 401 without a key, each tenant sees only its
own jobs and ledger, admins see all, a priority above the key's is 403, too many waiting or too
fast is 429, one tenant cannot fill the queue for the others, and the result cache."""
import argparse
import json

import pytest

from api import create_app
from helpers import auth, make_config, make_key
from service.facade import Service
from tenancy import keys_cli


def submit(client, key, body=None, headers=None, **kw):
    body = body or {"model": "qwen2.5:0.5b", "prompt": "hi"}
    return client.post("/api/submit", data=json.dumps(body), content_type="application/json",
                       headers={**auth(key), **(headers or {})}, **kw)


@pytest.fixture
def idle(tmp_path):
    """A service that does not schedule (nothing runs): submitted jobs stay waiting."""
    cfg = make_config(tmp_path, AUTH_REQUIRED=True, QUEUE_MAX_SIZE=4, KEY_CACHE_S=0.0)
    service = Service(cfg)
    yield service, create_app(cfg, service).test_client()
    service.raw_store.close()


def test_without_a_valid_key_every_route_but_the_probes_is_401(idle):
    service, client = idle
    for method, path in [("get", "/api/jobs"), ("get", "/api/stats"), ("post", "/api/submit"),
                         ("get", "/api/tags"), ("post", "/api/generate"), ("get", "/v1/models"),
                         ("post", "/v1/chat/completions"), ("get", "/api/ledger")]:
        r = getattr(client, method)(path)
        assert r.status_code == 401, path
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/v1/models").get_json()["error"]["code"] == "invalid_api_key"
    assert client.get("/api/jobs", headers=auth("mm-nope-nope")).status_code == 401
    assert client.get("/api/ping").status_code == 200
    assert client.get("/api/health").status_code == 503       # answers (not ready): no key needed
    key = make_key(service, "alice")
    assert client.get("/api/jobs", headers={"X-API-Key": key}).status_code == 200


def test_a_tenant_sees_polls_cancels_and_lists_only_its_own_jobs(idle):
    service, client = idle
    alice, bob, admin = make_key(service, "alice"), make_key(service, "bob"), make_key(service, "ops", admin=True)
    job_a = submit(client, alice).get_json()["job_id"]
    job_b = submit(client, bob).get_json()["job_id"]
    assert client.get(f"/api/job/{job_a}", headers=auth(alice)).get_json()["tenant"] == "alice"
    assert client.get(f"/api/job/{job_a}", headers=auth(bob)).status_code == 404
    assert client.get(f"/api/job/{job_a}?wait=1", headers=auth(bob)).status_code == 404
    assert client.post(f"/api/job/{job_a}/cancel", headers=auth(bob)).status_code == 404
    assert [j["job_id"] for j in client.get("/api/jobs", headers=auth(bob)).get_json()["jobs"]] == [job_b]
    listed = {j["job_id"] for j in client.get("/api/jobs", headers=auth(admin)).get_json()["jobs"]}
    assert listed == {job_a, job_b}
    assert client.post(f"/api/job/{job_a}/cancel", headers=auth(alice)).status_code == 200
    stats = client.get("/api/stats", headers=auth(admin)).get_json()
    assert stats["tenants"] == {"bob": {"waiting": 1}}
    assert "tenants" not in client.get("/api/stats", headers=auth(alice)).get_json()


def test_revoked_key_stops_working(idle):
    service, client = idle
    key = make_key(service, "carol")
    assert client.get("/api/jobs", headers=auth(key)).status_code == 200
    args = argparse.Namespace(keys_action="revoke", key=key)
    assert keys_cli.run(args, service.config, store=service.raw_store) == 0
    assert client.get("/api/jobs", headers=auth(key)).status_code == 401
    records = service.raw_store.list_keys()
    assert all("key_hash" in r and key not in json.dumps(r) for r in records)     # stored hashed only


def test_priority_above_the_keys_maximum_is_403_and_the_default_is_capped(idle):
    service, client = idle
    key = make_key(service, "batch", max_priority="low")
    r = submit(client, key, {"model": "qwen2.5:0.5b", "prompt": "x", "priority": "high"})
    assert r.status_code == 403 and "priority" in r.get_json()["error"]
    job_id = submit(client, key).get_json()["job_id"]
    assert client.get(f"/api/job/{job_id}", headers=auth(key)).get_json()["priority"] == "low"
    r = client.post("/api/generate", data=json.dumps({"model": "qwen2.5:0.5b", "prompt": "x"}),
                    content_type="application/json", headers={**auth(key), "X-Priority": "normal"})
    assert r.status_code == 403


def test_max_waiting_and_rate_are_429(idle):
    service, client = idle
    key = make_key(service, "small", max_waiting=2)
    assert [submit(client, key).status_code for _ in range(3)] == [202, 202, 429]
    fast = make_key(service, "fast", rate=2)
    codes = [submit(client, fast) for _ in range(3)]
    assert [r.status_code for r in codes] == [202, 202, 429]
    assert 1 <= int(codes[2].headers["Retry-After"]) <= 30 and "minute" in codes[2].get_json()["error"]


def test_one_tenant_filling_the_queue_does_not_lock_out_another(idle):
    service, client = idle                       # QUEUE_MAX_SIZE = 4
    greedy, polite = make_key(service, "greedy"), make_key(service, "polite")
    codes = [submit(client, greedy).status_code for _ in range(6)]
    assert codes == [202] * 4 + [429] * 2
    assert [submit(client, polite).status_code for _ in range(3)] == [202, 202, 429]   # its share: 4 / 2
    assert submit(client, greedy).status_code == 429


def test_result_cache_answers_identical_deterministic_requests_of_the_same_tenant(running_service):
    service, client = running_service(AUTH_REQUIRED=True, KEY_CACHE_S=0.0)
    alice, bob = make_key(service, "alice"), make_key(service, "bob")
    body = {"model": "qwen2.5:0.5b", "prompt": "cache me", "options": {"temperature": 0}, "cache": True}
    first = submit(client, alice, body, query_string={"wait": 20}).get_json()
    assert first["status"] == "complete" and not first["metrics"].get("cached")
    second = submit(client, alice, body).get_json()
    assert second["status"] == "complete" and second["metrics"]["cached"] is True
    assert second["metrics"]["cached_from"] == first["job_id"] and second["result"] == first["result"]
    other = submit(client, bob, body, query_string={"wait": 20}).get_json()      # never across tenants
    assert not other["metrics"].get("cached")
    sampled = {**body, "options": {"temperature": 0.8}}                          # not reproducible: not cached
    assert not submit(client, alice, sampled, query_string={"wait": 20}).get_json()["metrics"].get("cached")
    r = client.post("/api/generate", data=json.dumps({**body, "stream": False}), content_type="application/json",
                    headers=auth(alice))
    assert r.get_json()["response"] == first["result"]["response"]
    job = client.get(f"/api/job/{r.headers['X-Job-Id']}", headers=auth(alice)).get_json()
    assert job["metrics"]["cached"] is True
    cache = client.get("/api/stats", headers=auth(alice)).get_json()["cache"]
    assert cache == {"hits": 2, "misses": 2}


@pytest.mark.parametrize("host, auth_required, allow_open, refused", [
    ("127.0.0.1", False, False, False), ("localhost", False, False, False), ("::1", False, False, False),
    ("0.0.0.0", False, False, True), ("10.1.2.3", False, False, True),
    ("0.0.0.0", True, False, False), ("0.0.0.0", False, True, False),
])
def test_an_open_port_without_keys_is_refused_unless_meant(tmp_path, host, auth_required, allow_open, refused):
    cfg = make_config(tmp_path, HTTP_HOST=host, AUTH_REQUIRED=auth_required, ALLOW_OPEN=allow_open)
    assert (cfg.exposure_error() is not None) == refused


def test_main_refuses_to_listen_open(tmp_path):
    import subprocess
    import sys

    from helpers import ROOT
    out = subprocess.run([sys.executable, "main.py", "--host", "0.0.0.0", "--backend", "sim"], cwd=ROOT,
                         env={"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path), "LOG_FILE": str(tmp_path / "l.log")},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "AUTH_REQUIRED" in out.stdout


def test_idempotency_keys_are_per_tenant(idle):
    service, client = idle
    alice, bob = make_key(service, "alice"), make_key(service, "bob")
    body = {"model": "qwen2.5:0.5b", "prompt": "same"}
    first = submit(client, alice, body, headers={"Idempotency-Key": "k-1"})
    r = client.post("/api/submit", data=json.dumps(body), content_type="application/json",
                    headers={**auth(bob), "Idempotency-Key": "k-1"})
    assert r.status_code == 202 and r.get_json()["job_id"] != first.get_json()["job_id"]
    again = client.post("/api/submit", data=json.dumps(body), content_type="application/json",
                        headers={**auth(alice), "Idempotency-Key": "k-1"})
    assert again.get_json()["job_id"] == first.get_json()["job_id"] and again.get_json()["idempotent_replay"]


def test_without_auth_required_a_placeholder_key_is_no_one(tmp_path):
    cfg = make_config(tmp_path, AUTH_REQUIRED=False)
    service = Service(cfg)
    try:
        client = create_app(cfg, service).test_client()
        assert client.get("/api/jobs", headers=auth("ollama")).status_code == 200   # what OpenAI clients send
    finally:
        service.raw_store.close()


def test_admin_routes_need_an_admin_key(idle):
    service, client = idle
    user, admin = make_key(service, "team"), make_key(service, "ops", admin=True)
    assert client.get("/api/admin/nodes").status_code == 401
    assert client.get("/api/admin/nodes", headers=auth(user)).status_code == 403
    assert client.post("/api/admin/nodes", json={"url": "http://x:1"}, headers=auth(user)).status_code == 403
    assert client.get("/api/admin/nodes", headers=auth(admin)).status_code == 200


def test_tasks_are_shared_for_reading_but_only_their_tenant_changes_them(idle):
    service, client = idle
    alice, bob, admin = make_key(service, "alice"), make_key(service, "bob"), make_key(service, "ops", admin=True)
    task = {"task_id": "t/1", "suite": "s", "prompt": "2+2?", "check": {"kind": "exact", "answer": "4"}}

    def put(key, body):
        return client.post("/api/tasks", data=json.dumps({"tasks": [body]}), content_type="application/json",
                           headers=auth(key))
    assert put(alice, task).status_code == 200
    assert client.get("/api/tasks/t/1", headers=auth(bob)).get_json()["prompt"] == "2+2?"
    assert put(bob, task).status_code == 200                      # the same task again: nothing changes
    changed = {**task, "check": {"kind": "exact", "answer": "5"}}
    r = put(bob, changed)
    assert r.status_code == 403 and r.get_json()["task_id"] == "t/1"
    assert client.get("/api/tasks/t/1", headers=auth(alice)).get_json()["check"]["answer"] == "4"
    assert put(alice, changed).status_code == 200 and put(admin, task).status_code == 200
