"""The dashboard: its data endpoint and files (in process), and the page itself in headless
Chromium (Debian's package, driven by Playwright) against `python main.py --backend sim`: it
loads without console errors, shows submitted jobs, running ones and the loaded models, and
where keys are required asks for one and shows only that tenant's jobs.

`DASHBOARD_SCREENSHOT=docs/dashboard.png` saves the screenshot the README shows."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from helpers import MainProcess, make_config, wait_until

CHROMIUM = Path("/usr/bin/chromium")
# Flags that work on machines without a network: no background connections, no sandbox as root.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SIM_ENV = {"BACKEND": "sim", "SIM_VRAM_GB": "6", "SIM_NUM_PARALLEL": "2", "SIM_TOKENS_PER_S": "200",
           "SIM_LOAD_GBPS": "8", "SIM_DEFAULT_TOKENS": "8"}
MODELS = ["qwen2.5:0.5b", "llama3.2:1b", "gemma:2b", "qwen2.5:1.5b"]


# --- the endpoint and the files, in process -----------------------------------------------------
def test_data_endpoint_shows_the_queue_models_jobs_and_ledger(running_service):
    service, client = running_service()
    ids = [client.post("/api/submit", json={"model": m, "prompt": "hi"}).get_json()["job_id"] for m in MODELS[:3]]
    for job_id in ids:
        assert client.get(f"/api/job/{job_id}?wait=20").get_json()["status"] == "complete"
    service.publish()
    body = client.get("/api/dashboard?jobs=5&ledger=10").get_json()
    assert [j["job_id"] for j in body["recent_jobs"]][:3] == ids[::-1]
    assert {m["name"] for m in body["models"]} == set(MODELS[:3])
    for m in body["models"]:
        assert m["weights_bytes"] > 0 and m["kv_cache_bytes"] > 0
        assert m["weights_bytes"] + m["kv_cache_bytes"] + m["other_bytes"] == m["memory_bytes"]
        assert m["footprint"] == "learned" and m["slots"] == 1
    assert body["memory"]["total"] == 24e9 and body["memory"]["budget"] > 0
    assert {p["model"] for p in body["ledger"]["points"]} == set(MODELS[:3])
    assert all(row["jobs"] == 1 and row["tokens_per_s"] > 0 for row in body["ledger"]["models"])
    assert [e["kind"] for e in body["activity"]["events"]] == ["load"] * 3
    assert body["scheduler"]["loads"] == 3 and body["queue"]["total"] == 0
    assert body["viewer"] == {"tenant": None, "admin": True, "auth_required": False}


@pytest.mark.parametrize("query", ["jobs=0", "jobs=201", "jobs=x", "ledger=0", "ledger=1001", "ledger=1.5"])
def test_bad_counts_are_400_json(running_service, query):
    _, client = running_service()
    r = client.get(f"/api/dashboard?{query}")
    assert r.status_code == 400 and r.get_json()["field"] == query.split("=")[0]


def test_page_and_files_are_served_without_a_key_but_data_needs_one(running_service):
    _, client = running_service(AUTH_REQUIRED=True)
    for path in ("/", "/dashboard"):
        r = client.get(path)
        assert r.status_code == 200 and r.mimetype == "text/html"
        assert b'data-auth-required="true"' in r.data
    assert client.get("/dashboard/static/dashboard.js").status_code == 200
    assert client.get("/dashboard/static/dashboard.css").mimetype == "text/css"
    missing = client.get("/dashboard/static/nothing.js")
    assert missing.status_code == 404 and "error" in missing.get_json()
    r = client.get("/api/dashboard")
    assert r.status_code == 401 and "error" in r.get_json()
    assert client.post("/").status_code == 405


def test_activity_log_keeps_the_last_events_and_half_an_hour_of_minutes():
    from telemetry.activity import MINUTES_KEPT, RECENT_EVENTS, ActivityLog
    log = ActivityLog()
    for i in range(RECENT_EVENTS + 5):                                  # minute 10: 17 loads, 18 evictions
        log.record("load" if i % 2 else "evict", f"m{i}", "sim@x", at=600.0 + i)
    log.record("unload", "later", "sim@x", at=60.0 * (10 + MINUTES_KEPT - 1))
    shown = log.snapshot()
    assert len(shown["events"]) == RECENT_EVENTS and shown["events"][-1]["model"] == "later"
    assert shown["per_minute"] == [{"minute": 600, "load": 17, "unload": 0, "evict": 18},
                                   {"minute": 60 * (10 + MINUTES_KEPT - 1), "load": 0, "unload": 1, "evict": 0}]
    log.record("load", "last", "sim@x", at=60.0 * (10 + MINUTES_KEPT))  # minute 10 is now over half an hour ago
    assert [b["minute"] for b in log.snapshot()["per_minute"]] == [60 * (10 + MINUTES_KEPT - 1), 60 * (10 + MINUTES_KEPT)]
    with pytest.raises(ValueError):
        log.record("explode", "m", "sim@x", at=0.0)


# --- the page in Chromium ------------------------------------------------------------------------
def _browser_unavailable() -> str | None:
    if not CHROMIUM.exists():
        return f"Chromium is not installed at {CHROMIUM} (`make browser` installs Debian's package)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -r requirements-dev.txt)"
    return None


@pytest.fixture(scope="module")
def browser():
    reason = _browser_unavailable()
    if reason:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(reason)        # in CI the browser test must run
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class WatchedPage:
    """A page whose console errors and uncaught exceptions are kept."""

    def __init__(self, browser):
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))

    def texts(self, selector: str) -> list[str]:
        return self.page.locator(selector).all_inner_texts()

    def job_ids_shown(self) -> set[str]:
        return set(self.page.locator("#recent-jobs tr[data-job-id]").evaluate_all(
            "rows => rows.map(r => r.dataset.jobId)"))


def _submit(url: str, model: str, priority: str, tokens: int, key: str | None = None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = requests.post(url + "/api/submit", json={"model": model, "prompt": "why?", "priority": priority,
                                                 "options": {"num_predict": tokens}}, headers=headers, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()["job_id"]


@pytest.fixture
def sim_service(tmp_path):
    started: list[MainProcess] = []

    def start(**env: str) -> MainProcess:
        proc = MainProcess(tmp_path, ["--backend", "sim"], {**SIM_ENV, **env})
        started.append(proc)
        return proc.start()
    yield start
    for proc in started:
        proc.stop()


@pytest.mark.slow
def test_page_shows_submitted_jobs_running_ones_and_the_loaded_models(browser, sim_service, tmp_path):
    service = sim_service()
    url = service.url
    priorities = ["high", "normal", "low"]
    # short jobs on four models that do not all fit in memory: loads, and an eviction
    warmup = [_submit(url, MODELS[i % 4], priorities[i % 3], 4) for i in range(8)]
    for job_id in warmup:
        wait_until(lambda job_id=job_id: requests.get(f"{url}/api/job/{job_id}?wait=5", timeout=10).json()["status"]
                   == "complete", timeout=30, message=f"job {job_id}")
    watched = WatchedPage(browser)
    watched.page.goto(url + "/")
    # longer jobs (about 4 s of work in all) on three models: some run, the rest wait
    ids = [_submit(url, MODELS[i % 3], priorities[i % 3], 60 + 10 * (i % 3)) for i in range(14)]
    wait_until(lambda: set(ids) <= watched.job_ids_shown(), timeout=15, message="the submitted jobs on the page")
    wait_until(lambda: int(watched.page.inner_text("#running-total") or 0) > 0, timeout=15,
               message="running jobs on the page")
    wait_until(lambda: len(watched.texts("#models-table tbody tr td:first-child")) >= 3, timeout=15,
               message="three loaded models on the page")
    shown_models = set(watched.texts("#models-table tbody tr td:first-child"))
    assert shown_models <= set(MODELS)
    stats = requests.get(url + "/api/stats", timeout=5).json()
    assert shown_models & {m["name"] for m in stats["resources"]["loaded_models"]}
    bar_titles = " ".join(watched.page.locator("#memory-bars svg title").all_text_contents())
    assert all(name in bar_titles for name in shown_models)
    assert watched.page.locator("#activity-events li.kind-load").count() >= 3
    assert watched.page.locator("#tps-chart circle").count() >= len(warmup)
    watched.page.wait_for_timeout(300)        # the charts' last frame drawn
    shot = tmp_path / "dashboard.png"
    watched.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 20_000
    if os.environ.get("DASHBOARD_SCREENSHOT"):
        Path(os.environ["DASHBOARD_SCREENSHOT"]).write_bytes(shot.read_bytes())
    # it refreshes by itself: a job that was waiting shows as complete without a reload
    wait_until(lambda: "complete" in watched.page.inner_text(f'#recent-jobs tr[data-job-id="{ids[-1]}"]'),
               timeout=60, message="the last job to show as complete")
    assert watched.errors == []


def _make_key(data_dir_owner: Path, tenant: str) -> str:
    from jobs.model import Priority
    from store import open_store
    from tenancy.keys import ApiKey, key_hash, new_key
    store = open_store(make_config(data_dir_owner))
    try:
        key_id, key = new_key()
        store.put_key(ApiKey(key_id, tenant, Priority.HIGH, None, None, False, time.time()).record(key_hash(key)))
    finally:
        store.close()
    return key


@pytest.mark.slow
def test_page_asks_for_a_key_and_shows_that_tenants_jobs(browser, sim_service, tmp_path):
    alice, bob = _make_key(tmp_path, "alice"), _make_key(tmp_path, "bob")   # in the store main.py will open
    service = sim_service(AUTH_REQUIRED="true")
    url = service.url
    alices = [_submit(url, MODELS[0], "normal", 4, alice) for _ in range(2)]
    bobs = [_submit(url, MODELS[0], "normal", 4, bob)]
    watched = WatchedPage(browser)
    watched.page.goto(url + "/")
    watched.page.wait_for_selector("#key-needed", state="visible")
    assert watched.page.locator("#board").is_hidden()
    watched.page.fill("#key-input", alice)
    watched.page.click("#key-form button[type=submit]")
    wait_until(lambda: set(alices) <= watched.job_ids_shown(), timeout=15, message="alice's jobs on the page")
    assert not set(bobs) & watched.job_ids_shown()
    assert "tenant alice" in watched.page.inner_text("#viewer")
    assert watched.page.locator("#key-needed").is_hidden()
    watched.page.reload()            # the key is kept for the tab
    wait_until(lambda: set(alices) <= watched.job_ids_shown(), timeout=15, message="alice's jobs after a reload")
    assert watched.errors == []


def test_a_waiting_jobs_row_shows_its_place_and_start_and_tenants_are_listed_by_usage():
    from dashboard.data import job_row, tenant_usage
    waiting = {"job_id": "j", "model": "m", "kind": "generate", "priority": "normal", "status": "queued"}
    assert job_row(waiting, (3, 12.5))["position"] == 3 and job_row(waiting, (3, 12.5))["eta_s"] == 12.5
    assert "position" not in job_row({**waiting, "status": "complete"})
    rows = tenant_usage({"": {"jobs": 1, "prompt_tokens": 5, "output_tokens": 5},
                         "big": {"jobs": 2, "prompt_tokens": 50, "output_tokens": 100, "run_s": 1.23456}})
    assert [r["tenant"] for r in rows] == ["big", "(no key)"] and rows[0]["run_s"] == 1.235
