"""Ordering: priority, FIFO within a priority, aging, grouping by model; and claiming."""
import pytest

from helpers import sample_job
from jobs.model import Priority
from queue_manager import QueueManager, WaitingIndex


def test_priority_then_fifo_within_a_model():
    index = WaitingIndex(aging_s=60)
    index.add("low1", "m", 0, 1.0)
    index.add("norm1", "m", 1, 2.0)
    index.add("high1", "m", 2, 3.0)
    index.add("norm2", "m", 1, 4.0)
    order = [index.pop("m", now=5.0) for _ in range(4)]
    assert order == ["high1", "norm1", "norm2", "low1"]
    assert index.pop("m", now=5.0) is None and len(index) == 0


def test_requeued_job_returns_to_its_place_in_line():
    index = WaitingIndex(aging_s=60)
    index.add("b", "m", 1, 2.0)
    index.add("c", "m", 1, 3.0)
    index.add("a", "m", 1, 1.0)       # re-queued after an out-of-memory answer
    assert [index.pop("m", 4.0) for _ in range(3)] == ["a", "b", "c"]


def test_demand_summarises_each_model():
    index = WaitingIndex(aging_s=10)
    index.add("x1", "x", 0, 0.0)
    index.add("x2", "x", 2, 5.0)
    index.add("y1", "y", 1, 8.0)
    demand = {d.model: d for d in index.demand(now=10.0)}
    assert demand["x"].waiting == 2
    assert demand["x"].score == 2 + 0.5          # the high job waited 5 s
    assert demand["x"].oldest_submitted == 0.0
    assert demand["y"].score == 1 + 0.2


def test_take_claims_in_order_and_skips_cancelled(store):
    queue = QueueManager(store, max_waiting=100, aging_s=60)
    for i, priority in enumerate([Priority.LOW, Priority.HIGH, Priority.NORMAL, Priority.HIGH]):
        store.enqueue(sample_job(job_id=f"j{i}", model="m", priority=priority, submitted_at=float(i)))
    store.enqueue(sample_job(job_id="other", model="n"))
    assert queue.sync() == 5
    store.cancel("j3", {"completed_at": 9.0})
    taken = queue.take("m", 3, now=10.0, run_fields=lambda job_id: (f"run-{job_id}", {"started_at": 10.0}))
    assert [j["job_id"] for j in taken] == ["j1", "j2", "j0"]       # j3 was cancelled
    assert all(store.get(j["job_id"])["status"] == "running" for j in taken)
    assert queue.waiting() == 1 and store.get("other")["status"] == "queued"


def test_submit_wakes_listener_and_start_retakes_queued_jobs(store):
    woken = []
    queue = QueueManager(store, max_waiting=10, aging_s=60, on_submit=lambda: woken.append(1))
    queue.submit(sample_job(job_id="a"))
    assert woken == [1]
    queue.sync()
    # A new scheduler (after a restart) takes the queued job again.
    fresh = QueueManager(store, max_waiting=10, aging_s=60)
    fresh.start()
    assert fresh.sync() == 1 and fresh.waiting() == 1


def test_aging_orders_within_a_priority_but_never_lifts_a_job_above_the_next_one():
    index = WaitingIndex(aging_s=10)
    index.add("ancient-normal", "m", 1, 0.0)
    index.add("fresh-high", "m", 2, 1000.0)
    assert index.pop("m", now=1000.0) == "fresh-high"          # 100 levels of waiting are capped below one
    index.add("old-low", "a", 0, 0.0)
    index.add("new-low", "b", 0, 50.0)
    demand = {d.model: d.score for d in index.demand(now=55.0)}
    assert demand["a"] > demand["b"]                            # but the older of two equals goes first


def test_under_a_flood_of_high_priority_work_lower_priorities_still_get_their_share():
    index = WaitingIndex(aging_s=60)                           # shares high 8 : normal 3 : low 1
    for i in range(5000):
        index.add(f"h{i}", "m", 2, float(i))
    for i in range(1000):
        index.add(f"n{i}", "m", 1, float(i))
        index.add(f"l{i}", "m", 0, float(i))
    popped = [index.pop("m", now=6000.0) for _ in range(1200)]
    served = [job_id[0] for job_id in popped if job_id is not None]
    assert len(served) == len(popped)                         # every pop found a job
    shares = {c: served.count(c) / len(served) for c in "hnl"}
    assert shares["h"] == pytest.approx(8 / 12, abs=0.03)
    assert shares["n"] == pytest.approx(3 / 12, abs=0.03)
    assert shares["l"] == pytest.approx(1 / 12, abs=0.03)


def test_a_priority_that_is_owed_its_share_makes_its_model_the_most_urgent():
    index = WaitingIndex(aging_s=60)
    for i in range(300):                                       # high work on a loaded model, served a lot
        index.add(f"h{i}", "loaded", 2, float(i))
    index.add("l0", "elsewhere", 0, 0.0)                       # low work for a model not loaded
    for _ in range(100):
        index.pop("loaded", now=400.0)
    demand = {d.model: d.score for d in index.demand(now=400.0)}
    assert demand["elsewhere"] > demand["loaded"]              # low is owed: its model comes first now


def test_a_job_an_ended_term_took_in_late_is_taken_back_by_the_next(store):
    """A term that lost the lease can still be inside a submission that takes the job straight
    into its own queue after the next term started; the next term's sweep takes it back."""
    old = QueueManager(store, max_waiting=10, aging_s=60)
    old.start(epoch=1)
    new = QueueManager(store, max_waiting=10, aging_s=60)
    new.start(epoch=2)
    old.submit(sample_job(job_id="late"))            # the old term has not noticed yet
    new.submit(sample_job(job_id="mine"))
    old.stop()
    assert store.get("late")["status"] == "queued" and new.sync() == 0
    assert new.take_back_stale() == 1                 # only the old term's job, not "mine"
    assert new.sync() == 1 and new.waiting() == 2
    taken = new.take("m", 5, now=1.0, run_fields=lambda job_id: (f"run-{job_id}", {}), epoch=None)
    assert sorted(j["job_id"] for j in taken) == ["late", "mine"]
