"""The storage contract: every backend behaves the same (fixture `store` runs each one)."""
import threading

import pytest

from helpers import sample_job
from jobs.model import Priority
from store import Fenced, Idempotency, IdempotencyConflict, IdempotentReplay, QueueFull
from store.base import SCHEDULER_LEASE


def test_enqueue_get_and_position_by_priority_then_time(store):
    assert store.enqueue(sample_job(job_id="a", submitted_at=1.0)) == 0
    assert store.enqueue(sample_job(job_id="b", submitted_at=2.0)) == 1
    # A high-priority job goes ahead of both normal ones.
    assert store.enqueue(sample_job(job_id="c", priority=Priority.HIGH, submitted_at=3.0)) == 0
    assert store.enqueue(sample_job(job_id="d", priority=Priority.LOW, submitted_at=0.5)) == 3
    job = store.get("b")
    assert job["status"] == "pending" and job["prompt"] == "hi" and job["submitted_at"] == 2.0
    assert store.get("nope") is None


def test_queue_full(store):
    for i in range(3):
        store.enqueue(sample_job(job_id=f"j{i}"), max_waiting=3)
    with pytest.raises(QueueFull):
        store.enqueue(sample_job(job_id="j3"), max_waiting=3)
    assert store.get("j3") is None


def test_take_new_then_claim_then_finish(store):
    for i in range(3):
        store.enqueue(sample_job(job_id=f"j{i}", submitted_at=float(i)))
    taken = store.take_new()
    assert [j["job_id"] for j in taken] == ["j0", "j1", "j2"]
    assert store.take_new() == []
    assert store.get("j0")["status"] == "queued"
    job = store.claim("j0", "run-1", {"started_at": 10.0})
    assert job["status"] == "running" and job["started_at"] == 10.0 and job["prompt"] == "hi"
    assert store.claim("j0", "run-2", {}) is None               # claimed at most once
    assert not store.finish("j0", "run-other", "complete", {"completed_at": 11.0})
    assert store.finish("j0", "run-1", "complete", {"completed_at": 11.0, "result": {"response": "ok"}})
    done = store.get("j0")
    assert done["status"] == "complete" and done["result"] == {"response": "ok"}
    assert not store.finish("j0", "run-1", "failed", {})        # finished once


def test_cancel_in_each_state(store):
    for name in ("p", "q", "r", "c"):
        store.enqueue(sample_job(job_id=name))
    store.take_new()
    store.release_taken()
    store.take_new()  # everything queued again
    store.claim("r", "run", {})
    store.claim("c", "run2", {})
    store.finish("c", "run2", "complete", {"completed_at": 1.0})
    out = store.cancel("q", {"completed_at": 2.0})
    assert out.found and out.cancelled and out.previous == "queued"
    assert store.claim("q", "run3", {}) is None                 # a cancelled job is never claimed
    out = store.cancel("r", {"completed_at": 2.0})
    assert out.cancelled and out.previous == "running"
    assert not store.finish("r", "run", "complete", {})          # its late result is dropped
    out = store.cancel("c", {})
    assert out.found and not out.cancelled and out.previous == "complete"
    assert not store.cancel("missing", {}).found


def test_requeue_and_fail_waiting(store):
    store.enqueue(sample_job(job_id="a"))
    store.enqueue(sample_job(job_id="b"))
    store.take_new()
    store.claim("a", "r1", {})
    assert store.requeue("a", "r1", {"oom_retries": 1})
    assert store.get("a")["status"] == "pending" and store.get("a")["oom_retries"] == 1
    assert [j["job_id"] for j in store.take_new()] == ["a"]
    assert store.fail_waiting("b", {"error": "never fits", "completed_at": 3.0})
    assert store.get("b")["status"] == "failed" and store.get("b")["error"] == "never fits"
    assert not store.fail_waiting("b", {"error": "again"})


def test_runs_left_behind_are_listed_and_recovered_by_their_run(store):
    for name in ("a", "b"):
        store.enqueue(sample_job(job_id=name))
    store.take_new()
    store.claim("a", "r1", {"started_at": 10.0, "owner": "host:1:x"}, epoch=None)
    runs = store.running_runs()
    assert [(r["job_id"], r["run_id"], r["owner"], r["attempts"]) for r in runs] == [("a", "r1", "host:1:x", 1)]
    assert not store.recover_run("a", "other-run", True, {})          # only the run's own token works
    assert store.recover_run("a", "r1", True, {"recovered": True})
    assert store.get("a")["status"] == "pending" and store.get("a")["recovered"]
    store.take_new()
    store.claim("a", "r2", {})
    assert store.get("a")["attempts"] == 2                             # every run counts
    ledger = {"job_id": "a", "run_id": "r2", "model": "m", "finished_at": 5.0, "status": "failed"}
    assert store.recover_run("a", "r2", False, {"error": "gone", "completed_at": 5.0}, ledger)
    assert store.get("a")["status"] == "failed" and store.get("a")["error"] == "gone"
    assert [m["run_id"] for m in store.list_metrics(job_id="a")] == ["r2"]


def test_transitions_are_idempotent_so_a_retry_after_a_lost_answer_is_harmless(store):
    store.enqueue(sample_job(job_id="a"))
    store.enqueue(sample_job(job_id="b"))
    store.take_new()
    first = store.claim("a", "r1", {"started_at": 1.0})
    again = store.claim("a", "r1", {"started_at": 1.0})             # the same claim, repeated
    assert first["run_id"] == again["run_id"] == "r1" and again["attempts"] == 1
    assert store.requeue("a", "r1", {}) and store.requeue("a", "r1", {})
    assert store.get("a")["status"] in ("pending", "queued")
    store.claim("b", "r2", {})
    ledger = {"job_id": "b", "run_id": "r2", "model": "m", "finished_at": 2.0}
    assert store.finish("b", "r2", "complete", {"completed_at": 2.0}, ledger)
    assert store.finish("b", "r2", "complete", {"completed_at": 2.0}, ledger)
    assert not store.finish("b", "r2", "failed", {})                  # but not another outcome
    assert len(store.list_metrics(job_id="b")) == 1


def test_a_claim_under_an_epoch_the_lease_has_moved_past_is_refused(store):
    store.enqueue(sample_job(job_id="a"))
    store.enqueue(sample_job(job_id="b"))
    store.take_new()
    old = store.acquire_lease(SCHEDULER_LEASE, "old", ttl_s=5, now=100.0)
    assert store.claim("a", "r1", {"owner": "old"}, epoch=old)["epoch"] == old
    new = store.acquire_lease(SCHEDULER_LEASE, "new", ttl_s=5, now=110.0)    # the old one expired
    assert new == old + 1
    with pytest.raises(Fenced):
        store.claim("b", "r2", {"owner": "old"}, epoch=old)
    assert store.get("b")["status"] == "queued"
    assert store.claim("b", "r3", {"owner": "new"}, epoch=new)["status"] == "running"


def test_idempotency_keys_replay_conflict_and_expire(store):
    key = Idempotency("k-1", "fp-1", expires_at=1000.0)
    store.enqueue(sample_job(job_id="a", submitted_at=10.0), idempotency=key)
    with pytest.raises(IdempotentReplay) as replay:
        store.enqueue(sample_job(job_id="b", submitted_at=20.0), idempotency=key)
    assert replay.value.job_id == "a" and store.get("b") is None
    with pytest.raises(IdempotencyConflict):
        store.enqueue(sample_job(job_id="c", submitted_at=20.0), idempotency=Idempotency("k-1", "fp-2", 1000.0))
    # Past its lifetime the key is free again.
    store.enqueue(sample_job(job_id="d", submitted_at=2000.0), idempotency=Idempotency("k-1", "fp-1", 3000.0))
    assert store.get("d") is not None
    assert store.purge_idempotency(now=4000.0) >= 1


def test_concurrent_submissions_never_overshoot_the_queue_limit(store):
    accepted, refused, errors = [], [], []
    lock = threading.Lock()

    def submit(i):
        try:
            store.enqueue(sample_job(job_id=f"j{i}"), max_waiting=10)
            with lock:
                accepted.append(i)
        except QueueFull:
            with lock:
                refused.append(i)
        except Exception as exc:
            with lock:
                errors.append(repr(exc))

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(accepted) == 10 and len(refused) == 30
    assert store.counts().waiting == 10


def test_listings_page_with_a_cursor(store):
    for i in range(7):
        store.enqueue(sample_job(job_id=f"j{i}", submitted_at=float(i // 2)))     # ties on submitted_at
    seen, before = [], None
    while True:
        page = store.list_jobs(limit=3, before=before)
        seen += [j["job_id"] for j in page]
        if len(page) < 3:
            break
        before = (page[-1]["submitted_at"], page[-1]["job_id"])
    assert seen == ["j6", "j5", "j4", "j3", "j2", "j1", "j0"]
    for i in range(5):
        store.record_metrics({"job_id": f"j{i}", "run_id": "r", "model": "m", "finished_at": float(i // 2)})
    first = store.list_metrics(limit=2)
    rest = store.list_metrics(limit=10, before=(first[-1]["finished_at"], f"{first[-1]['job_id']}:r"))
    assert [m["job_id"] for m in first + rest] == ["j4", "j3", "j2", "j1", "j0"]
    assert store.purge_metrics(before=1.0) == 2 and len(store.list_metrics()) == 3


def test_counts_and_listing(store):
    store.enqueue(sample_job(job_id="a", model="x", priority=Priority.HIGH, submitted_at=1.0))
    store.enqueue(sample_job(job_id="b", model="y", submitted_at=2.0))
    store.enqueue(sample_job(job_id="c", model="y", submitted_at=3.0))
    store.take_new()
    store.claim("c", "r", {})
    counts = store.counts()
    assert counts.by_status == {"queued": 2, "running": 1}
    assert counts.waiting == 2
    assert counts.waiting_by_priority == {"high": 1, "normal": 1}
    assert counts.waiting_by_model == {"x": 1, "y": 1}
    assert [j["job_id"] for j in store.list_jobs()] == ["c", "b", "a"]
    assert [j["job_id"] for j in store.list_jobs(model="y", limit=1)] == ["c"]
    assert [j["job_id"] for j in store.list_jobs(status="running")] == ["c"]
    assert "prompt" not in store.list_jobs()[0]
    assert store.statuses(["a", "c", "zz"]) == {"a": "queued", "c": "running"}


def test_purge_finished(store):
    store.enqueue(sample_job(job_id="old"))
    store.enqueue(sample_job(job_id="new"))
    store.enqueue(sample_job(job_id="waiting"))
    store.take_new()
    for name, t in (("old", 100.0), ("new", 200.0)):
        store.claim(name, name, {})
        store.finish(name, name, "complete", {"completed_at": t})
    assert store.purge_finished(150.0) == 1
    assert store.get("old") is None and store.get("new") is not None and store.get("waiting") is not None


def test_metrics_ledger(store):
    store.record_metrics({"job_id": "a", "run_id": "r1", "model": "x", "finished_at": 1.0, "run_s": 0.5})
    store.record_metrics({"job_id": "a", "run_id": "r1", "model": "x", "finished_at": 1.0, "run_s": 9.9})  # once
    store.record_metrics({"job_id": "b", "run_id": "r2", "model": "y", "finished_at": 2.0, "run_s": 0.7,
                          "tags": {"experiment": "e1"}})
    assert [m["job_id"] for m in store.list_metrics()] == ["b", "a"]
    assert store.list_metrics(model="x")[0]["run_s"] == 0.5
    assert len(store.list_metrics(job_id="a")) == 1
    assert store.list_metrics(job_id="b")[0]["tags"] == {"experiment": "e1"}


def test_state_leases_and_footprints(store):
    store.put_state("k", {"v": 1}, now=5.0)
    store.put_state("k", {"v": 2}, now=6.0)
    assert store.get_state("k") == ({"v": 2}, 6.0)
    assert store.get_state("none") is None
    assert store.acquire_lease("s", "one", ttl_s=5, now=100.0) == 1
    assert store.acquire_lease("s", "two", ttl_s=5, now=101.0) is None
    assert store.acquire_lease("s", "one", ttl_s=5, now=102.0) == 1    # renewed: the same epoch
    assert store.acquire_lease("s", "two", ttl_s=5, now=108.0) == 2    # expired: taken over, a new epoch
    store.release_lease("s", "one")                                   # not the holder: no effect
    assert store.acquire_lease("s", "one", ttl_s=5, now=109.0) is None
    store.release_lease("s", "two")
    assert store.acquire_lease("s", "one", ttl_s=5, now=109.0) == 3    # released: the epoch goes on
    store.retire_epoch("s", 1, now=110.0)
    store.retire_epoch("s", 1, now=111.0)
    assert store.retired_epochs("s") == {1}
    store.save_footprint("m", 123, now=1.0)
    store.save_footprint("m", 456, now=2.0)
    assert store.footprints() == {"m": 456}


def test_concurrent_claims_never_double(store):
    for i in range(200):
        store.enqueue(sample_job(job_id=f"j{i}"))
    store.take_new()
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n):
        for i in range(200):
            if store.claim(f"j{i}", f"w{n}", {}) is not None:
                with lock:
                    claimed.append(f"j{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(f"j{i}" for i in range(200))


def test_tasks_and_experiment_results(store):
    store.put_task({"task_id": "HumanEval/1", "suite": "humaneval", "prompt": "def f():"})
    store.put_task({"task_id": "HumanEval/0", "suite": "humaneval", "prompt": "def g():"})
    store.put_task({"task_id": "HumanEval/0", "suite": "humaneval", "prompt": "def g(x):"})   # replaced
    store.put_task({"task_id": "other", "suite": "toy"})
    assert store.get_task("HumanEval/0")["prompt"] == "def g(x):" and store.get_task("nope") is None
    assert [t["task_id"] for t in store.list_tasks("humaneval")] == ["HumanEval/0", "HumanEval/1"]
    for i, passed in enumerate([True, False, True]):
        store.record_result({"experiment": "e1", "task_id": f"HumanEval/{i}", "strategy": "branches",
                             "passed": passed, "recorded_at": float(i), "tokens": 100 + i})
    store.record_result({"experiment": "e2", "task_id": "HumanEval/0", "passed": False, "recorded_at": 9.0})
    results = store.list_results("e1")
    assert [r["passed"] for r in results] == [True, False, True] and results[2]["tokens"] == 102
    assert len(store.list_results()) == 4


def test_job_fields_mongodb_keys_would_refuse_round_trip(store):
    job = sample_job(job_id="fmt", format={"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"},
                     tools=[{"type": "function", "function": {"name": "f", "parameters": {"$defs": {}}}}])
    store.enqueue(job)
    again = store.get("fmt")
    assert again["format"]["$schema"].startswith("http") and again["tools"][0]["function"]["name"] == "f"
    store.put_state("registry", {"models": [{"name": "qwen2.5:0.5b"}], "by_model": {"qwen2.5:0.5b": 1}}, now=1.0)
    assert store.get_state("registry")[0]["by_model"] == {"qwen2.5:0.5b": 1}


def test_waiting_count_follows_every_transition(store):
    for i in range(4):
        store.enqueue(sample_job(job_id=f"j{i}"), max_waiting=4)
    with pytest.raises(QueueFull):
        store.enqueue(sample_job(job_id="x"), max_waiting=4)
    store.take_new()                                   # pending -> queued: still waiting
    with pytest.raises(QueueFull):
        store.enqueue(sample_job(job_id="x"), max_waiting=4)
    store.claim("j0", "r0", {})                        # running: no longer waiting
    store.cancel("j1", {"completed_at": 1.0})
    store.fail_waiting("j2", {"completed_at": 1.0})
    assert store.enqueue(sample_job(job_id="y", priority=Priority.HIGH), max_waiting=4) == 0
    store.requeue("j0", "r0", {})                      # back to waiting
    assert store.counts().waiting == 3
    assert store.enqueue(sample_job(job_id="z"), max_waiting=4) == 3
    with pytest.raises(QueueFull):
        store.enqueue(sample_job(job_id="w"), max_waiting=4)


def test_release_taken_held_before_an_epoch_spares_the_current_terms_jobs(store):
    store.enqueue(sample_job(job_id="a", submitted_at=1.0))
    store.enqueue(sample_job(job_id="b", submitted_at=2.0))
    assert [j["job_id"] for j in store.take_new(epoch=3)] == ["a", "b"]
    store.enqueue(sample_job(job_id="c", submitted_at=3.0, status="queued"), held_by=5)
    store.enqueue(sample_job(job_id="d", submitted_at=4.0))
    assert store.release_taken(held_before=5) == 2
    assert [j["job_id"] for j in store.take_new(epoch=5)] == ["a", "b", "d"]
    assert store.release_taken(held_before=5) == 0
    assert "held_epoch" not in store.get("c")
    assert store.release_taken(["c"]) == 1 and store.get("c")["status"] == "pending"
