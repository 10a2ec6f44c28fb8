"""Sharing one GPU box, end to end on the simulator: a fair share between tenants at one priority,
and a waiting job's position and estimated start."""
import json

from helpers import auth, make_key, wait_until

MODEL = "qwen2.5:0.5b"


def submit(client, key, num_predict: int, headers=None) -> str:
    body = {"model": MODEL, "prompt": "go", "options": {"num_predict": num_predict}}
    answer = client.post("/api/submit", data=json.dumps(body), content_type="application/json",
                         headers={**auth(key), **(headers or {})})
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["job_id"]


def finished_jobs(service, ids):
    jobs = [service.get(job_id) for job_id in ids]
    return jobs if all(j is not None and j["status"] == "complete" for j in jobs) else None


def test_a_tenant_behind_anothers_flood_at_the_same_priority_is_served_alongside_it(running_service):
    """One slot; alpha queues 60 jobs, then beta 4: at most 8 of alpha's start before beta's last."""
    service, client = running_service(AUTH_REQUIRED=True, KEY_CACHE_S=0.0, OLLAMA_NUM_PARALLEL=1,
                                      SIM_TOKENS_PER_S=400.0)
    alpha, beta = make_key(service, "alpha"), make_key(service, "beta")
    flood = [submit(client, alpha, 20) for _ in range(60)]          # 50 ms each
    steady = [submit(client, beta, 20) for _ in range(4)]
    wait_until(lambda: finished_jobs(service, steady), timeout=30, message="beta's jobs")
    beta_last = max(service.get(job_id)["started_at"] for job_id in steady)
    ahead = sum(1 for job_id in flood
                if (job := service.get(job_id))["started_at"] is not None and job["started_at"] < beta_last)
    assert ahead <= 8, f"{ahead} of alpha's jobs started before beta's last"
    stats = client.get("/api/stats", headers=auth(make_key(service, "ops", admin=True))).get_json()
    assert stats["tenants"]["beta"]["usage"]["jobs"] == 4 and stats["tenants"]["beta"]["usage"]["output_tokens"] == 80


def test_users_inside_one_tenant_share_its_slot(running_service):
    service, client = running_service(OLLAMA_NUM_PARALLEL=1, SIM_TOKENS_PER_S=400.0)
    ann = [submit(client, "", 20, {"X-User": "ann"}) for _ in range(30)]
    bob = [submit(client, "", 20, {"X-User": "bob"}) for _ in range(3)]
    wait_until(lambda: finished_jobs(service, bob), timeout=30, message="bob's jobs")
    bob_last = max(service.get(job_id)["started_at"] for job_id in bob)
    assert sum(service.get(j)["started_at"] is not None and service.get(j)["started_at"] < bob_last for j in ann) <= 6


def test_a_waiting_jobs_estimated_start_is_within_half_of_when_it_really_starts(running_service):
    """Twelve jobs of about a second on one slot: the last one's eta_s, read once the first has
    finished, against when it really started."""
    service, client = running_service(OLLAMA_NUM_PARALLEL=1, SIM_TOKENS_PER_S=400.0)
    ids = [submit(client, "", 400) for _ in range(12)]              # 400 tokens at 400/s: ~1 s each
    wait_until(lambda: service.get(ids[0])["status"] == "complete", timeout=10, message="the first job")
    service.publish()

    def estimate():
        body = client.get(f"/api/job/{ids[-1]}").get_json()
        return body if body.get("eta_s") is not None else None

    body = wait_until(estimate, timeout=5, message="an estimate")
    asked_at = service.clock()
    assert body["status"] in ("pending", "queued") and 0 < body["position"] <= 10
    wait_until(lambda: service.get(ids[-1])["started_at"] is not None, timeout=30, message="the last job to start")
    really = service.get(ids[-1])["started_at"] - asked_at
    assert abs(body["eta_s"] - really) <= 0.5 * really, (body["eta_s"], really)
    done = client.get(f"/api/job/{ids[0]}").get_json()
    assert "eta_s" not in done and "position" not in done
