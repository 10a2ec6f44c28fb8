"""Preemption decisions, table by table: pure, no threads, no sleeps."""
import pytest

from jobs.model import JobKind
from scheduling.preemption import PreemptLimits, Running, Waiting, preemptions

LOW, NORMAL, HIGH = 0, 1, 2
LIMITS = PreemptLimits(after_s=1.0, max_times=2)


def decide(waiting, running, slots=None, draining=(), short=None, held=None, limits=LIMITS):
    """The jobs stopped (each is stopped for a model that waits)."""
    chosen = preemptions(waiting, running, slots if slots is not None else {"m": 1}, draining, short or {},
                         held or {}, limits)
    assert all(model in {w.model for w in waiting} for _, model in chosen)
    return [job_id for job_id, _ in chosen]


@pytest.mark.parametrize("case, waiting, running, expected", [
    ("urgent work that waited long enough takes the slot",
     [Waiting("m", HIGH, 1, 1.5)], [Running("a", "m", LOW, 0.0)], ["a"]),
    ("not before PREEMPT_AFTER_S",
     [Waiting("m", HIGH, 1, 0.5)], [Running("a", "m", LOW, 0.0)], []),
    ("never for a job of the same priority",
     [Waiting("m", NORMAL, 1, 30.0)], [Running("a", "m", NORMAL, 0.0)], []),
    ("never for a lower priority",
     [Waiting("m", LOW, 1, 30.0)], [Running("a", "m", HIGH, 0.0)], []),
    ("not a job stopped PREEMPT_MAX times already",
     [Waiting("m", HIGH, 1, 5.0)], [Running("a", "m", LOW, 0.0, preempted=2)], []),
    ("another model's work is not stopped for a slot",
     [Waiting("m", HIGH, 1, 5.0)], [Running("a", "other", LOW, 0.0)], []),
])
def test_for_a_slot(case, waiting, running, expected):
    assert decide(waiting, running) == expected, case


def test_the_lowest_priority_most_recently_started_go_first_and_only_as_many_as_needed():
    running = [Running("old-low", "m", LOW, 1.0), Running("new-low", "m", LOW, 5.0),
               Running("normal", "m", NORMAL, 9.0), Running("high", "m", HIGH, 9.5)]
    assert decide([Waiting("m", HIGH, 1, 2.0)], running, {"m": 4}) == ["new-low"]
    assert decide([Waiting("m", HIGH, 3, 2.0)], running, {"m": 4}) == ["new-low", "old-low", "normal"]
    assert decide([Waiting("m", NORMAL, 3, 2.0)], running, {"m": 4}) == ["new-low", "old-low"]


def test_a_free_slot_is_used_before_anything_is_stopped():
    running = [Running("a", "m", LOW, 0.0)]
    assert decide([Waiting("m", HIGH, 1, 9.0)], running, {"m": 2}) == []
    assert decide([Waiting("m", HIGH, 2, 9.0)], running, {"m": 2}) == ["a"]


def test_for_memory_busy_models_serving_only_lower_work_are_emptied_until_enough_is_freed():
    running = [Running("a", "big", LOW, 0.0), Running("b", "big", LOW, 1.0), Running("c", "mid", LOW, 5.0)]
    need = [Waiting("new", HIGH, 1, 2.0)]
    held = {"big": 8, "mid": 3}
    # 3 bytes short: the most recently started model goes first, and it is enough
    assert decide(need, running, {"big": 2, "mid": 1}, short={"new": 3}, held=held) == ["c"]
    assert decide(need, running, {"big": 2, "mid": 1}, short={"new": 5}, held=held) == ["c", "a", "b"]
    # a model the plan drains for it goes first
    assert decide(need, running, {"big": 2, "mid": 1}, draining=["big"], short={"new": 5}, held=held) == ["a", "b"]
    # not before PREEMPT_AFTER_S, not work as urgent as the need, not a model with waiting work of its own
    assert decide([Waiting("new", HIGH, 1, 0.5)], running, {"big": 2, "mid": 1}, short={"new": 3}, held=held) == []
    mixed = running + [Running("d", "mid", HIGH, 6.0)]
    assert decide(need, mixed, {"big": 2, "mid": 2}, short={"new": 3}, held=held) == ["a", "b"]
    busy = need + [Waiting("mid", LOW, 4, 9.0)]
    assert decide(busy, running, {"big": 2, "mid": 1}, short={"new": 3}, held=held) == ["a", "b"]


def test_a_setting_turns_it_off():
    off = PreemptLimits(enabled=False)
    assert decide([Waiting("m", HIGH, 1, 60.0)], [Running("a", "m", LOW, 0.0)], limits=off) == []


def test_two_needs_do_not_stop_the_same_job_twice():
    running = [Running("a", "m", LOW, 0.0)]
    waiting = [Waiting("m", HIGH, 1, 3.0), Waiting("m", NORMAL, 1, 3.0)]
    assert decide(waiting, running) == ["a"]


def test_a_stream_follows_the_run_that_resumes_it_and_nothing_else():
    from front_door.delivery import Delivery
    d = Delivery()
    assert d.accept("run-1", {"text": " one"}) == {"text": " one"}
    assert d.accept("run-1", {"text": " two"}) == {"text": " two"}
    assert d.accept("run-0", {"text": " stale"}) is None                   # another run, no prefix: not this answer
    # the resumed run starts from " one two three" (a piece the client never got, " three")
    assert d.accept("run-2", {"text": " four", "prefix": " one two three"}) == {"text": " three four"}
    assert d.accept("run-2", {"text": " five"}) == {"text": " five"}
    assert d.accept("run-3", {"text": "x", "prefix": " other"}) is None     # does not continue what was sent
    assert d.rest(JobKind.GENERATE, {"response": " one two three four five six"}) == {"text": " six"}


def test_preemption_waits_while_a_priority_is_owed_its_share():
    from scheduling.waiting import WaitingIndex
    index = WaitingIndex(aging_s=60)
    for i in range(30):
        index.add(f"h{i}", "m", HIGH, float(i))
    index.add("low", "m", LOW, 0.0)
    assert index.needs(100.0)                             # no priority owed yet
    while index.owed() is None:
        assert index.pop("m", 100.0) != "low"             # high takes every slot: low falls short of its share
    assert index.owed() == LOW and index.needs(100.0) == []


def test_a_chat_that_ends_with_the_clients_own_assistant_prefill_continues_it_on_resume():
    from jobs.model import JobDoc
    from jobs.resume import resumed_body
    job = JobDoc(kind="chat", resume={"text": " and more", "tokens": 2}, options={"num_predict": 10})
    body = {"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": "Start"}],
            "options": {"num_predict": 10}}
    resumed = resumed_body(job, body)
    assert resumed["messages"][-1] == {"role": "assistant", "content": "Start and more"}
    assert len(resumed["messages"]) == 2 and resumed["options"]["num_predict"] == 8
