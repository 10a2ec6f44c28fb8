"""The storage contract for tenancy and answers (every backend, as test_store_contract): keys kept
by hash, request rates, shared counters, the result cache, relayed answer pieces, per-tenant
limits and fair shares, and listings of one tenant."""
import threading

import pytest

from helpers import sample_job
from store import QueueFull, TenantQueueFull
from tenancy.keys import ApiKey, key_hash, new_key


def test_keys_are_found_by_hash_listed_and_revoked(store):
    key_id, key = new_key()
    store.put_key(ApiKey(key_id, "alice", max_waiting=3, rate_per_min=10, created_at=1.0).record(key_hash(key)))
    found = ApiKey.from_record(store.key_by_hash(key_hash(key)))
    assert (found.key_id, found.tenant, found.max_waiting, found.rate_per_min, found.admin) == (key_id, "alice", 3, 10, False)
    assert store.key_by_hash(key_hash(key + "x")) is None
    assert [k["key_id"] for k in store.list_keys()] == [key_id]
    assert store.revoke_key(key_id, 5.0) is True
    assert store.revoke_key(key_id, 6.0) is False and store.revoke_key("nope", 6.0) is False
    assert store.key_by_hash(key_hash(key))["revoked_at"] == 5.0


def test_rate_allows_a_minutes_worth_then_waits(store):
    waits = [store.take_rate("k", 100.0, per_min=3) for _ in range(4)]
    assert waits[:3] == [0, 0, 0] and waits[3] == pytest.approx(20.0)
    assert store.take_rate("k", 120.0, per_min=3) == 0            # one request's worth came back
    assert store.take_rate("other", 100.0, per_min=3) == 0


def test_rate_holds_under_concurrent_requests(store):
    allowed = []

    def hit():
        allowed.append(store.take_rate("busy", 50.0, per_min=10) == 0)
    threads = [threading.Thread(target=hit) for _ in range(30)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(allowed) == 10


def test_counters_add_up(store):
    store.bump("cache_hits")
    store.bump("cache_hits", 2)
    store.bump("cache_misses")
    assert store.read_counters() == {"cache_hits": 3, "cache_misses": 1}
    assert store.read_counters("cache_h") == {"cache_hits": 3}


def test_result_cache_expires(store):
    store.cache_put("k1", {"result": {"response": "hi"}, "job_id": "j"}, expires_at=10.0)
    assert store.cache_get("k1", 5.0)["result"] == {"response": "hi"}
    assert store.cache_get("k1", 11.0) is None and store.cache_get("k2", 5.0) is None
    store.cache_put("k1", {"result": {"response": "again"}}, expires_at=20.0)
    assert store.cache_get("k1", 11.0)["result"] == {"response": "again"}
    assert store.purge_cache(25.0) == 1 and store.cache_get("k1", 11.0) is None


def test_answer_pieces_in_order_once_each_and_dropped(store):
    store.append_pieces("j", "r1", 0, [{"text": "a"}, {"text": "b"}], 1.0)
    store.append_pieces("j", "r1", 1, [{"text": "c"}], 2.0)
    store.append_pieces("j", "r1", 1, [{"text": "c"}], 2.0)                  # a retry is harmless
    store.append_pieces("other", "r9", 0, [{"text": "z"}], 1.0)
    assert store.read_pieces("j") == [("r1", [{"text": "a"}, {"text": "b"}]), ("r1", [{"text": "c"}])]
    assert store.read_pieces("j", skip=1) == [("r1", [{"text": "c"}])]
    assert store.drop_pieces("j") == 2 and store.read_pieces("j") == []
    assert store.drop_pieces(before=5.0) == 1 and store.read_pieces("other") == []


def test_a_tenants_own_limit_and_its_fair_share_of_a_full_queue(store):
    for i in range(2):
        store.enqueue(sample_job(job_id=f"a{i}", tenant="a"), max_waiting=4, tenant_max=2)
    with pytest.raises(TenantQueueFull):
        store.enqueue(sample_job(job_id="a2", tenant="a"), max_waiting=4, tenant_max=2)
    for i in range(2, 6):
        try:
            store.enqueue(sample_job(job_id=f"a{i}", tenant="a"), max_waiting=4)
        except QueueFull:
            break
    assert store.counts().waiting_by_tenant == {"a": 4}
    store.enqueue(sample_job(job_id="b0", tenant="b"), max_waiting=4)         # past the limit: b's share is 2
    store.enqueue(sample_job(job_id="b1", tenant="b"), max_waiting=4)
    with pytest.raises(QueueFull):
        store.enqueue(sample_job(job_id="b2", tenant="b"), max_waiting=4)
    with pytest.raises(QueueFull):
        store.enqueue(sample_job(job_id="a9", tenant="a"), max_waiting=4)
    assert store.counts().waiting_by_tenant == {"a": 4, "b": 2}


def test_listings_of_one_tenant(store):
    store.enqueue(sample_job(job_id="a", tenant="alice", submitted_at=1.0))
    store.enqueue(sample_job(job_id="b", tenant="bob", submitted_at=2.0))
    assert [j["job_id"] for j in store.list_jobs(tenant="alice")] == ["a"]
    assert {j["job_id"] for j in store.list_jobs()} == {"a", "b"}
    for job_id, tenant in (("a", "alice"), ("b", "bob")):
        store.record_metrics({"job_id": job_id, "run_id": "r", "model": "m", "tenant": tenant, "finished_at": 3.0})
    assert [e["job_id"] for e in store.list_metrics(tenant="bob")] == ["b"]
    assert len(store.list_metrics()) == 2


def test_a_tenants_results_are_listed_before_the_limit_not_after(store):
    for n in range(5):
        store.record_result({"experiment": "e", "task_id": f"a{n}", "tenant": "alice", "recorded_at": float(n)})
    store.record_result({"experiment": "e", "task_id": "b0", "tenant": "bob", "recorded_at": 9.0})
    store.record_result({"experiment": "e", "task_id": "x0", "tenant": "", "recorded_at": 10.0})
    assert [r["task_id"] for r in store.list_results("e", limit=2, tenant="bob")] == ["b0"]
    assert [r["task_id"] for r in store.list_results("e", limit=2, tenant="alice")] == ["a0", "a1"]
    assert [r["task_id"] for r in store.list_results("e", limit=9, tenant="")] == ["x0"]
    assert len(store.list_results("e", limit=9)) == 7                 # an admin's listing: everyone's
