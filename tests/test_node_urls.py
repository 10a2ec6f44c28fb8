"""Node URLs: checked at every way in (settings at start, /api/admin/nodes, the store's list of
added nodes), never followed through a redirect, never shown to a non-admin (nor on /api/health
to anyone without an admin key), and a client's control characters never start a log line."""
from __future__ import annotations

import http.server
import logging
import subprocess
import sys
import threading
import time
from typing import Any

import pytest
from pydantic import ValidationError

from config import Config
from helpers import ROOT, make_config, wait_until
from runtime.backends import ollama_answers
from runtime.client import OllamaClient, RuntimeRedirected
from runtime.launcher import ManagedRuntime
from runtime.node_urls import node_label, validate_node_url
from scheduling.view import NODES_KEY
from telemetry.logs import get_logger, setup_logging
from tenancy.keys import ApiKey, key_hash, new_key

FORGED = "[12:00:00.000] [SYSTEM] admin key created for mallory"
BAD_URLS = {
    "metadata": "http://169.254.169.254/latest/meta-data",
    "metadata-root": "http://169.254.169.254",
    "link-local": "http://169.254.10.10:11434",
    "port": "http://gpu1:99999",
    "path": "http://gpu1:11434/api",
    "query": "http://gpu1:11434?x=1",
    "credentials": "http://user:secret@gpu1:11434",
    "huge-host": "http://" + "a" * 100_000 + ":11434",
    "no-host": "http://",
    "crlf": "http://gpu1:11434\r\n" + FORGED,
    "integer-ip": "http://2852039166:80",          # 169.254.169.254 as one number
}


# --- servers that say where they were reached -----------------------------------------------------
class _Recorder(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, redirect_to: str | None = None):
        self.hits: list[str] = []
        self.redirect_to = redirect_to
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self):
                server.hits.append(f"{self.command} {self.path} auth={self.headers.get('Authorization')}")
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if server.redirect_to is not None:
                    self.send_response(307)
                    self.send_header("Location", server.redirect_to + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = b'{"version": "0.0.0", "models": []}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_HEAD = _answer

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()


@pytest.fixture
def target_and_redirector():
    """`target` records every request it gets; `redirector` answers every request with a 307 to
    the same path on `target`."""
    target = _Recorder()
    redirector = _Recorder(redirect_to=target.url)
    yield target, redirector
    for server in (target, redirector):
        server.shutdown()
        server.server_close()


def _key(service, tenant: str, admin: bool = False) -> str:
    key_id, key = new_key()
    service.raw_store.put_key(ApiKey(key_id, tenant, admin=admin, created_at=time.time()).record(key_hash(key)))
    return key


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the check itself, and the settings at start --------------------------------------------------
@pytest.mark.parametrize("name", sorted(BAD_URLS))
def test_each_bad_node_url_is_refused_in_the_settings_by_name(tmp_path, name):
    with pytest.raises(ValidationError, match="OLLAMA_URLS") as refused:
        make_config(tmp_path, BACKEND="ollama", OLLAMA_URLS=f"http://gpu0:11434,{BAD_URLS[name]}")
    assert "secret" not in str(refused.value).split("input_value")[0]    # the reason does not repeat it
    with pytest.raises(ValidationError, match="OLLAMA_URL"):
        make_config(tmp_path, OLLAMA_URL=BAD_URLS[name])


def test_good_node_urls_pass_and_a_setting_lets_link_local_ones_in(tmp_path):
    for good in ("http://127.0.0.1:11434", "http://gpu-2.lan:11434/#vram=24", "https://[::1]:8443", "http://ollama_1"):
        assert validate_node_url(good) == good
    cfg = make_config(tmp_path, BACKEND="ollama", OLLAMA_URLS="http://169.254.10.10:11434#vram=8",
                      NODE_ALLOW_LINK_LOCAL=True)
    assert cfg.runtime_urls == ["http://169.254.10.10:11434#vram=8"]
    assert Config.model_fields["NODE_ALLOW_LINK_LOCAL"].default is False
    # the setting lets in link-local and metadata addresses, nothing else
    with pytest.raises(ValidationError, match="credentials"):
        make_config(tmp_path, OLLAMA_URLS="http://u:p@169.254.10.10:11434", NODE_ALLOW_LINK_LOCAL=True)


def test_main_refuses_to_start_with_a_bad_node_url(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATA_DIR": str(tmp_path / "data"), "LOG_FILE": str(tmp_path / "mm.log"),
           "OLLAMA_URLS": "http://ops:hunter2@gpu1:11434"}
    done = subprocess.run([sys.executable, "main.py", "--http-port", "0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert "invalid configuration" in done.stdout and "OLLAMA_URLS" in done.stdout and "credentials" in done.stdout


# --- the admin API ---------------------------------------------------------------------------------
def test_admin_api_refuses_each_bad_node_url_with_400_naming_the_field_and_takes_a_good_one(running_service, tmp_path):
    service, client = running_service(RUNTIME_CONNECT_TIMEOUT_S=0.5)
    for name, bad in BAD_URLS.items():
        for request in ({"json": {"url": bad}}, {"query_string": {"url": bad}}):
            r = client.post("/api/admin/nodes", **request)
            assert r.status_code == 400, (name, r.get_json())
            body = r.get_json()
            assert body["field"] == "url" and body["error"], name
            assert "\r" not in body["error"] and "\n" not in body["error"] and len(body["error"]) < 600, name
            assert "secret" not in body["error"], name
    assert service.published(NODES_KEY) is None                              # nothing was stored
    sim = ManagedRuntime("sim", "simulator", ["--vram-gb", "4"], tmp_path / "second.log")
    second = sim.start()
    try:
        r = client.post("/api/admin/nodes", json={"url": second})
        assert r.status_code == 202 and r.get_json() == {"url": second, "status": "adding"}
        wait_until(lambda: len(service.term.nodes) == 2, message="the good node to be added")
        service.publish()
        nodes = client.get("/api/admin/nodes").get_json()["nodes"]
        assert [n["url"] for n in nodes] == [service.runtime.url, second]
        assert nodes[1]["name"] == node_label("sim", second) and nodes[1]["ok"]
    finally:
        sim.stop()


def test_link_local_node_accepted_by_the_admin_api_when_the_setting_allows(running_service):
    service, client = running_service(NODE_ALLOW_LINK_LOCAL=True)
    r = client.post("/api/admin/nodes", json={"url": "http://169.254.10.10:11434#vram=4"})
    assert r.status_code == 202, r.get_json()
    assert client.post("/api/admin/nodes", json={"url": "http://u:p@169.254.10.10:1"}).status_code == 400
    # and it can be removed again, as any node
    assert client.delete("/api/admin/nodes", json={"url": "http://169.254.10.10:11434"}).status_code == 202


def test_a_crlf_node_url_left_in_the_store_is_refused_and_logged_on_one_line(running_service, tmp_path):
    log_file = tmp_path / "escaped.log"
    setup_logging(log_file, "INFO", stderr=False)
    try:
        service, client = running_service()
        bad = "http://127.0.0.1:9\r\n" + FORGED
        service.put_state(NODES_KEY, {"added": [bad], "removed": []}, time.time())   # as an older version stored it

        def logged():
            for handler in logging.getLogger("model_manager").handlers:
                handler.flush()
            return "is refused" in log_file.read_text()
        wait_until(logged, message="the refusal to be logged")
        assert len(service.term.nodes) == 1
        lines = log_file.read_text().splitlines()
        assert not any(line.startswith(FORGED) for line in lines)
        refusal = next(line for line in lines if "is refused" in line)
        assert "\\r\\n" + FORGED in refusal
    finally:
        setup_logging(None, "INFO", stderr=False)


def test_control_characters_a_client_sent_are_escaped_in_every_log_line(tmp_path):
    log_file = tmp_path / "mm.log"
    setup_logging(log_file, "INFO", stderr=False)
    try:
        value = "qwen\r\n" + FORGED + "\x1b[2K\x00"
        get_logger("API").warning("unknown model %s", value)
        try:
            raise ValueError("bad value " + value)
        except ValueError:
            get_logger("SCHEDULER").exception("pass failed for %r", value)
        logging.getLogger("werkzeug").warning("request %s", value)      # a server's own logger: escaped in place
        for handler in logging.getLogger("model_manager").handlers:
            handler.flush()
        lines = log_file.read_text().splitlines()
        assert lines[0].endswith("unknown model qwen\\r\\n" + FORGED + "\\x1b[2K\\x00")
        assert not any(line.startswith("[") and FORGED in line[:len(FORGED)] for line in lines)
        record_lines = [line for line in lines if not line.startswith("    ")]
        assert len(record_lines) == 2                        # a traceback's lines are indented under their record
        # the forged text never starts a line: escaped in messages, indented inside a traceback
        assert all(FORGED not in line or "\\n" in line or line.startswith("    ") for line in lines)
    finally:
        setup_logging(None, "INFO", stderr=False)


# --- no redirect is followed ------------------------------------------------------------------------
def test_the_runtime_client_follows_no_redirect(target_and_redirector):
    target, redirector = target_and_redirector
    client = OllamaClient(redirector.url, connect_timeout=2.0, name="node test")
    for call in (client.ps, client.version, client.tags, lambda: client.show("m"),
                 lambda: client.stream("/api/generate", {"model": "m", "prompt": "hi"}, time.time() + 5),
                 lambda: client.embed({"model": "m", "input": "hi"}, time.time() + 5)):
        with pytest.raises(RuntimeRedirected, match="redirect"):
            call()
    assert not ollama_answers(redirector.url)
    assert len(redirector.hits) >= 7 and target.hits == []


def test_a_node_that_answers_a_redirect_is_never_followed(running_service, target_and_redirector):
    target, redirector = target_and_redirector
    service, client = running_service(NODE_DOWN_AFTER_S=0.5)
    r = client.post("/api/admin/nodes", json={"url": redirector.url + "#vram=4"})
    assert r.status_code == 202
    wait_until(lambda: len(service.term.nodes) == 2, message="the redirecting node to be added")
    wait_until(lambda: sum(h.startswith("GET /api/ps") for h in redirector.hits) >= 3,
               message="the node to be read a few times")
    service.publish()
    stats = client.get("/api/stats").get_json()
    node = next(n for n in stats["nodes"] if n["url"] == redirector.url)
    assert node["ok"] is False and "redirect" in node["error"]
    job = client.post("/api/submit", json={"model": "qwen2.5:0.5b", "prompt": "hi"}).get_json()
    assert client.get(f"/api/job/{job['job_id']}?wait=20").get_json()["status"] == "complete"
    assert target.hits == []                      # nothing ever reached the redirect's target


# --- nobody but an admin sees a node URL ----------------------------------------------------------
def _infrastructure(service) -> list[str]:
    url = service.runtime.url
    host, pid = service.owner.split(":")[:2]
    return [url, url.split("://", 1)[1], f"{host}:{pid}"]           # the leader is host:pid:...


def test_non_admins_and_callers_without_a_key_see_no_node_url(running_service):
    service, client = running_service(AUTH_REQUIRED=True, KEY_CACHE_S=0.0)
    tenant, admin = _key(service, "alice"), _key(service, "ops", admin=True)
    job = client.post("/api/submit", json={"model": "qwen2.5:0.5b", "prompt": "hi"}, headers=_auth(tenant)).get_json()
    assert client.get(f"/api/job/{job['job_id']}?wait=20", headers=_auth(tenant)).get_json()["status"] == "complete"
    service.publish()
    hidden = _infrastructure(service)
    label = node_label("sim", service.runtime.url)

    for path in ("/api/health", "/api/stats", "/metrics", "/api/dashboard", f"/api/ledger?job_id={job['job_id']}"):
        for headers in ({}, _auth(tenant)):
            r = client.get(path, headers=headers)
            text = r.get_data(as_text=True)
            assert not [h for h in hidden if h in text], (path, headers, text[:2000])
    health = client.get("/api/health").get_json()
    assert health == {"status": "ok", "runtime": {"ok": True}}
    for path in ("/api/stats", "/metrics", "/api/dashboard"):
        assert client.get(path).status_code == 401
    # a tenant sees each node by its name, in the same fields
    stats = client.get("/api/stats", headers=_auth(tenant)).get_json()
    assert [(n["url"], n["name"]) for n in stats["nodes"]] == [(label, label)]
    assert stats["runtime"]["url"] == label and stats["scheduler"]["leader"] is None
    assert all(m["node"] == label for m in stats["resources"]["loaded_models"])
    dashboard = client.get("/api/dashboard", headers=_auth(tenant)).get_json()
    assert [n["url"] for n in dashboard["memory"]["nodes"]] == [label]
    assert f'node="{label}"' in client.get("/metrics", headers=_auth(tenant)).get_data(as_text=True)
    ledger = client.get(f"/api/ledger?job_id={job['job_id']}", headers=_auth(tenant)).get_json()["entries"]
    assert [e["node"] for e in ledger] == [label]
    # an admin's key sees the URL (and the same name)
    stats = client.get("/api/stats", headers=_auth(admin)).get_json()
    assert [(n["url"], n["name"]) for n in stats["nodes"]] == [(service.runtime.url, label)]
    assert client.get("/api/health", headers=_auth(admin)).get_json()["scheduler"] == service.owner


def test_health_without_keys_required_shows_no_url_either(running_service):
    service, client = running_service()
    text = client.get("/api/health").get_data(as_text=True)
    assert not [h for h in _infrastructure(service) if h in text]
    assert client.get("/api/health").get_json() == {"status": "ok", "runtime": {"ok": True}}


def test_credentials_in_a_view_are_never_shown():
    from routes.infra_view import shown_view
    view: dict[str, Any] = {"owner": "gpu-host:42:1:abc", "epoch": 3,
                            "runtime": {"kind": "ollama", "url": "http://ops:hunter2@gpu1:11434", "ok": False,
                                        "error": "cannot reach http://ops:hunter2@gpu1:11434/api/ps"},
                            "resources": {"loaded_models": [{"name": "m", "node": "http://ops:hunter2@gpu1:11434"}],
                                          "gpus": [{"index": 0, "uuid": "GPU-1234"}], "host": {"cpu_percent": 1.0}},
                            "nodes": [{"kind": "ollama", "url": "http://ops:hunter2@gpu1:11434", "ok": False,
                                       "error": "cannot reach http://ops:hunter2@gpu1:11434/api/ps",
                                       "gpus": [{"uuid": "GPU-1234"}]}]}
    admin, tenant = shown_view(view, admin=True), shown_view(view, admin=False)
    assert admin is not None and tenant is not None
    assert "hunter2" not in repr(admin) and "hunter2" not in repr(tenant)
    assert admin["nodes"][0]["url"] == "http://gpu1:11434" == admin["resources"]["loaded_models"][0]["node"]
    assert "gpu1" not in repr(tenant) and "GPU-1234" not in repr(tenant) and "gpu-host" not in repr(tenant)
    label = node_label("ollama", "http://gpu1:11434")
    assert tenant["nodes"][0]["url"] == tenant["runtime"]["url"] == label
    assert tenant["resources"]["loaded_models"][0]["node"] == tenant["nodes"][0]["name"] == label
    assert view["runtime"]["url"] == "http://ops:hunter2@gpu1:11434"      # the view itself is left as it was
