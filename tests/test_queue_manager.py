"""Ordering: priority, FIFO within a priority, aging, grouping by model; and claiming."""
from conftest import sample_job
from jobs import Priority
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


def test_aging_lets_low_priority_overtake():
    index = WaitingIndex(aging_s=10)
    index.add("old-low", "m", 0, 0.0)
    index.add("new-high", "m", 2, 100.0)
    # At t=100 the low job has waited 100 s = 10 levels: 0 + 10 > 2 + 0.
    assert index.pop("m", now=100.0) == "old-low"


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
