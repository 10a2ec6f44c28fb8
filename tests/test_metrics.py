"""`GET /metrics`: Prometheus text that prometheus-client's own parser reads, with figures that
match what happened (jobs finished by status, wait and run histograms, loads, unloads,
evictions, runtime errors, queue depth, memory); and, under gunicorn, the same figures from
whichever worker answers, before and after the scheduling worker is killed."""
from __future__ import annotations

import os
import signal
import time
from collections import defaultdict

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from helpers import gunicorn_server, wait_until

QWEN, TINY = "qwen2.5:0.5b", "tinyllama:1.1b"


def samples(text: str) -> dict[str, dict[tuple, float]]:
    """{sample name: {sorted label pairs: value}}, through prometheus-client's parser."""
    out: dict[str, dict[tuple, float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name][tuple(sorted(s.labels.items()))] = s.value
    return out


def total(figures: dict[str, dict[tuple, float]], name: str, **labels: str) -> float:
    return sum(v for key, v in figures.get(name, {}).items() if set(labels.items()) <= set(key))


def scrape(client) -> dict[str, dict[tuple, float]]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    return samples(r.get_data(as_text=True))


def submit(client, model: str, priority: str = "normal", **extra) -> str:
    r = client.post("/api/submit", json={"model": model, "prompt": "hi", "priority": priority, **extra})
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def test_one_process_counts_what_happened(running_service):
    # 2.2 GB of memory: qwen (0.5 GB planned) and tinyllama (0.7 GB) do not fit together, so
    # tinyllama's jobs evict qwen; loads at 0.25 GB/s take seconds, so submitted jobs wait.
    service, client = running_service(SIM_VRAM_GB=2.2, SIM_LOAD_GBPS=0.25)
    qwen = [submit(client, QWEN, "high"), submit(client, QWEN, "high"), submit(client, QWEN, "low")]
    tiny = [submit(client, TINY), submit(client, TINY)]
    waiting = scrape(client)                      # qwen is still loading: all five wait
    assert total(waiting, "model_manager_queue_depth", priority="high") == 2
    assert total(waiting, "model_manager_queue_depth", priority="low") == 1
    assert total(waiting, "model_manager_queue_depth", priority="normal") == 2
    assert total(waiting, "model_manager_queue_depth_by_model", model=QWEN) == 3
    assert total(waiting, "model_manager_queue_depth_by_model", model=TINY) == 2
    assert client.post(f"/api/job/{qwen[2]}/cancel").status_code == 200
    for job_id in qwen[:2] + tiny:
        assert client.get(f"/api/job/{job_id}?wait=30").get_json()["status"] == "complete"

    sim_url = client.get("/api/stats").get_json()["runtime"]["url"]
    requests.post(sim_url + "/api/sim/faults", json={"error": 1, "status": 500}, timeout=5)
    failed = submit(client, TINY)
    assert client.get(f"/api/job/{failed}?wait=30").get_json()["status"] == "failed"

    def settled():
        service.publish()
        figures = scrape(client)
        return figures if total(figures, "model_manager_slots_in_use") == 0 else None
    figures = wait_until(settled, message="the last job's slot to be given back")
    assert total(figures, "model_manager_jobs_finished_total", status="complete") == 4
    assert total(figures, "model_manager_jobs_finished_total", status="cancelled") == 1
    assert total(figures, "model_manager_jobs_finished_total", status="failed") == 1
    assert total(figures, "model_manager_jobs", status="complete") == 4
    assert total(figures, "model_manager_jobs", status="cancelled") == 1
    assert total(figures, "model_manager_runtime_errors_total", kind="runtime") == 1
    assert total(figures, "model_manager_queue_depth") == 0
    # wait and run histograms: one observation per finished run; qwen's wait includes its load
    assert total(figures, "model_manager_job_wait_seconds_count") == 5
    assert total(figures, "model_manager_job_wait_seconds_count", model=QWEN, priority="high") == 2
    assert total(figures, "model_manager_job_wait_seconds_sum", model=QWEN) >= 2 * 1.5
    assert total(figures, "model_manager_job_wait_seconds_bucket", model=QWEN, le="+Inf") == 2
    assert total(figures, "model_manager_job_wait_seconds_bucket", model=QWEN, le="0.5") == 0
    assert total(figures, "model_manager_job_run_seconds_count") == 5
    assert total(figures, "model_manager_model_loads_total", model=QWEN) == 1
    assert total(figures, "model_manager_model_loads_total", model=TINY) == 1
    assert total(figures, "model_manager_model_evictions_total", model=QWEN) == 1
    assert total(figures, "model_manager_model_unloads_total", model=QWEN) == 1
    assert total(figures, "model_manager_model_evictions_total", model=TINY) == 0
    # memory and the loaded model, as /api/stats shows them
    stats = client.get("/api/stats").get_json()
    assert total(figures, "model_manager_memory_total_bytes") == stats["resources"]["vram"]["total"] == 2.2e9
    assert total(figures, "model_manager_memory_budget_bytes") == stats["resources"]["vram"]["budget"] > 0
    loaded = {m["name"] for m in stats["resources"]["loaded_models"]}
    assert loaded == {TINY}
    assert total(figures, "model_manager_model_memory_bytes", model=TINY) > 0.6e9
    assert total(figures, "model_manager_model_slots", model=TINY) == 1
    assert total(figures, "model_manager_models_loaded") == 1
    assert total(figures, "model_manager_runtime_up") == 1
    assert total(figures, "model_manager_scheduler_reporting") == 1
    assert total(figures, "model_manager_gpu_memory_total_bytes", gpu="0") == 2.2e9     # the simulated GPU
    assert "model_manager_gpu_utilization_percent" in figures


def test_gpu_gauges_only_where_the_gpu_reports_them():
    from runtime.node_urls import node_label
    from telemetry.collector import node_gauges
    gpus = [{"index": 0, "memory_total": 80e9, "memory_used": 20e9, "utilization_pct": 87.0, "power_w": 312.5},
            {"index": 1, "memory_total": 80e9, "memory_used": 1e9, "utilization_pct": None, "power_w": None}]
    view = [{"kind": "ollama", "url": "http://gpu-host:11434", "ok": True, "gpus": gpus, "loaded_models": [],
             "vram": {"total": 160e9, "used": 21e9, "free": 139e9, "budget": 137e9}}]
    figures = {f.name: {tuple(sorted(s.labels.items())): s.value for s in f.samples} for f in node_gauges(view)}
    node = ("node", node_label("ollama", "http://gpu-host:11434"))      # its label: no URL in /metrics
    assert node[1].startswith("ollama-") and "gpu-host" not in node[1]
    assert figures["model_manager_gpu_power_watts"] == {(("gpu", "0"), node): 312.5}
    assert figures["model_manager_gpu_utilization_percent"] == {(("gpu", "0"), node): 87.0}
    assert len(figures["model_manager_gpu_memory_used_bytes"]) == 2
    assert figures["model_manager_memory_budget_bytes"] == {(node,): 137e9}


def test_openmetrics_when_asked_and_errors_are_json(running_service):
    _, client = running_service()
    r = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/openmetrics-text")
    assert r.get_data(as_text=True).rstrip().endswith("# EOF")
    for unreadable in ("application/openmetrics-text; version=abc", "text/plain; version=x.y"):
        r = client.get("/metrics", headers={"Accept": unreadable})
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    r = client.post("/metrics")
    assert r.status_code == 405 and "error" in r.get_json()


def test_metrics_need_a_key_where_keys_are_required(running_service):
    from jobs.model import Priority
    from tenancy.keys import ApiKey, key_hash, new_key
    service, client = running_service(AUTH_REQUIRED=True)
    r = client.get("/metrics")
    assert r.status_code == 401 and "error" in r.get_json()
    key_id, key = new_key()
    service.raw_store.put_key(ApiKey(key_id, "ops", Priority.HIGH, None, None, False, time.time()).record(key_hash(key)))
    r = client.get("/metrics", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200
    assert total(samples(r.get_data(as_text=True)), "model_manager_scheduler_reporting") == 1


def _scrape_url(url: str) -> tuple[str, dict[str, dict[tuple, float]]]:
    r = requests.get(url + "/metrics", timeout=10, headers={"Connection": "close"})
    assert r.status_code == 200
    return r.headers["X-Model-Manager-Pid"], samples(r.text)


def _from_every_worker(url: str, workers: int) -> dict[str, dict[str, dict[tuple, float]]]:
    """One scrape answered by each worker (new connections until each has answered)."""
    seen: dict[str, dict[str, dict[tuple, float]]] = {}
    deadline = time.time() + 30
    while len(seen) < workers and time.time() < deadline:
        pid, figures = _scrape_url(url)
        seen.setdefault(pid, figures)
    assert len(seen) == workers, f"only workers {sorted(seen)} answered"
    return seen


AGREED = ("model_manager_jobs_finished_total", "model_manager_job_wait_seconds_count",
          "model_manager_job_run_seconds_count", "model_manager_model_loads_total", "model_manager_jobs",
          "model_manager_queue_depth", "model_manager_memory_total_bytes", "model_manager_scheduler_epoch")


@pytest.mark.slow
def test_gunicorn_workers_agree_and_keep_counting_after_the_leader_dies(tmp_path):
    metrics_dir = tmp_path / "prom"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")     # must be cleared at start
    env = {"BACKEND": "sim", "SIM_LOAD_GBPS": "50", "SIM_TOKENS_PER_S": "4000", "SIM_DEFAULT_TOKENS": "16",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with gunicorn_server(tmp_path, env, workers=2) as (url, _):
        assert not (metrics_dir / "counter_1.db").exists()

        def run_jobs(n: int, tag: str) -> None:
            ids = []
            for i in range(n):
                r = requests.post(url + "/api/submit", json={"model": QWEN, "prompt": f"{tag}{i}"},
                                  headers={"Connection": "close"}, timeout=10)
                assert r.status_code == 202
                ids.append(r.json()["job_id"])
            for job_id in ids:
                wait_until(lambda job_id=job_id: requests.get(f"{url}/api/job/{job_id}?wait=5", timeout=10)
                           .json()["status"] == "complete", timeout=60, message=f"job {job_id}")

        def check(expected_complete: int, epoch: int) -> None:
            answers = _from_every_worker(url, 2)
            for pid, figures in answers.items():
                assert total(figures, "model_manager_jobs_finished_total", status="complete") == expected_complete, pid
                assert total(figures, "model_manager_jobs", status="complete") == expected_complete, pid
                assert total(figures, "model_manager_job_wait_seconds_count") == expected_complete, pid
                assert total(figures, "model_manager_queue_depth") == 0, pid
                assert total(figures, "model_manager_scheduler_epoch") == epoch, pid
            first, second = answers.values()
            for name in AGREED:
                assert first.get(name) == second.get(name), name

        run_jobs(8, "a")
        wait_until(lambda: total(_scrape_url(url)[1], "model_manager_scheduler_epoch") == 1, message="a leader")
        check(8, epoch=1)
        assert list(metrics_dir.glob("counter_*.db")), "the workers write their counters to the folder"

        leader = requests.get(url + "/api/stats", timeout=5).json()["scheduler"]["leader"]
        os.kill(int(leader.split(":")[1]), signal.SIGKILL)
        wait_until(lambda: requests.get(url + "/api/stats", timeout=5).json()["scheduler"]["leader"] not in (None, leader),
                   timeout=60, message="another worker to take over")
        run_jobs(4, "b")
        # what the dead leader counted stays in the totals; the new leader counts on
        wait_until(lambda: all(total(f, "model_manager_scheduler_epoch") == 2
                               for f in _from_every_worker(url, 2).values()), timeout=20,
                   message="every worker to see the new leader's view")
        check(12, epoch=2)
        loads = total(_scrape_url(url)[1], "model_manager_model_loads_total", model=QWEN)
        assert loads == 2            # once by each leader (the new one started its own simulator)
