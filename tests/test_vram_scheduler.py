"""The scheduling decision, tested as the pure function it is: no threads, no sleeps."""
from hypothesis import given, settings
from hypothesis import strategies as st

from vram_scheduler import Demand, Limits, Phase, Plan, ResidentModel, Snapshot, plan

GB = 10**9


def loaded(name, gb, running=0, last_used=0.0, phase=Phase.LOADED, slots=4, loaded_at=0.0, load_s=0.0):
    return ResidentModel(name, phase, int(gb * GB), running, last_used, slots, loaded_at, load_s)


def want(model, waiting=1, score=1.0, oldest=0.0, rank=None, head_wait=0.0):
    return Demand(model, waiting, score, oldest, int(score) if rank is None else rank, head_wait)


def snap(budget_gb, resident=(), demand=(), needs=None, capacity_gb=None, draining=(), now=0.0, **limits):
    return Snapshot(int(budget_gb * GB), int((capacity_gb or budget_gb) * GB), tuple(resident), tuple(demand),
                    {k: int(v * GB) for k, v in (needs or {}).items()}, Limits(**limits), frozenset(draining), now)


def test_loads_a_model_that_fits_and_dispatches_to_a_loaded_one():
    p = plan(snap(10, [loaded("a", 2)], [want("a", 3), want("b")], {"b": 4}))
    assert p.loads == ["b"]
    assert p.dispatch == [("a", 3)]
    assert p.unloads == []


def test_evicts_least_recently_used_idle_model_only_when_space_is_needed():
    resident = [loaded("old", 3, last_used=10), loaded("recent", 3, last_used=50), loaded("mid", 3, last_used=30)]
    # 10 GB budget, 9 used: a 2 GB model needs one eviction, and the oldest idle one goes.
    p = plan(snap(10, resident, [want("new")], {"new": 2}))
    assert p.unloads == ["old"]
    assert p.loads == []                      # loads only once the memory is really back
    assert p.waiting_for_memory == ["new"]
    # With room to spare nothing is evicted.
    assert plan(snap(20, resident, [want("new")], {"new": 2})).unloads == []


def test_evicts_several_lru_models_when_one_is_not_enough():
    resident = [loaded("a", 2, last_used=1), loaded("b", 2, last_used=2), loaded("c", 2, last_used=3)]
    p = plan(snap(7, resident, [want("big")], {"big": 4.5}))
    assert p.unloads == ["a", "b"]


def test_never_evicts_a_model_with_running_jobs():
    resident = [loaded("busy", 6, running=2, last_used=0), loaded("idle", 1, last_used=100)]
    p = plan(snap(8, resident, [want("new", score=1.0)], {"new": 3}))
    assert "busy" not in p.unloads
    assert p.unloads == []                    # evicting "idle" alone would not make room
    assert p.waiting_for_memory == ["new"]


def test_an_unload_in_flight_counts_as_used_until_done():
    resident = [loaded("going", 5, phase=Phase.UNLOADING)]
    p = plan(snap(6, resident, [want("new")], {"new": 4}))
    assert p.loads == [] and p.waiting_for_memory == ["new"]
    # Once the unload is done (the model is gone), it loads.
    assert plan(snap(6, [], [want("new")], {"new": 4})).loads == ["new"]


def test_a_model_that_can_never_fit_is_reported():
    p = plan(snap(4, [], [want("huge")], {"huge": 9}, capacity_gb=5))
    assert p.never_fits == ["huge"]
    assert p.loads == []


def test_high_priority_claims_memory_before_low():
    # Room for one of the two; the high-priority model gets it although low waited longer.
    demand = [want("low", score=0.5, oldest=0), want("high", score=2.0, oldest=5)]
    p = plan(snap(5, [], demand, {"low": 3, "high": 3}))
    assert p.loads == ["high"]


def test_memory_a_more_urgent_model_waits_for_is_not_given_to_a_less_urgent_one():
    # "big" (high) waits for a busy model to finish; the free 2 GB must not go to "small" (low).
    resident = [loaded("busy", 5, running=1)]
    demand = [want("big", score=2.0), want("small", score=0.0)]
    p = plan(snap(7, resident, demand, {"big": 6, "small": 2}))
    assert p.loads == []
    assert "big" in p.waiting_for_memory


def test_busy_less_urgent_model_is_drained_for_urgent_work():
    # "low" is loaded and busy with low-priority work; high-priority work for "high" needs its room.
    resident = [loaded("low", 5, running=2)]
    demand = [want("high", score=2.0), want("low", waiting=10, score=0.1)]
    p = plan(snap(6, resident, demand, {"high": 4}))
    assert p.draining == ["low"]
    assert ("low", 10) not in p.dispatch and all(m != "low" for m, _ in p.dispatch)
    assert p.unloads == []                    # not while it still runs jobs
    # Once idle, it is unloaded.
    p = plan(snap(6, [loaded("low", 5)], demand, {"high": 4}))
    assert p.unloads == ["low"]


def test_grouping_a_loaded_model_keeps_its_work_against_equally_urgent_work():
    # Same priority: the loaded model drains its own queue instead of swapping (ABAB -> AABB).
    resident = [loaded("a", 5, running=1)]
    demand = [want("b", score=1.2, oldest=0), want("a", waiting=5, score=1.1, oldest=1)]
    p = plan(snap(6, resident, demand, {"b": 4}, swap_margin=1.0))
    assert ("a", 3) in p.dispatch                 # its three free slots
    assert p.draining == [] and p.unloads == []


def test_aging_eventually_lets_old_low_priority_work_through():
    # Low-priority work that aged past high by the swap margin gets the memory.
    resident = [loaded("h", 5, running=1)]
    demand = [want("l", score=3.5, oldest=0), want("h", waiting=3, score=2.0, oldest=50)]
    p = plan(snap(6, resident, demand, {"l": 4}, swap_margin=1.0))
    assert p.draining == ["h"]


def test_a_model_is_never_given_more_jobs_than_its_free_slots_and_all_within_the_overall_limit():
    resident = [loaded("a", 1, running=18, slots=20), loaded("b", 1, running=0, slots=8)]
    p = plan(snap(10, resident, [want("a", 50, score=2), want("b", 50, score=1)], max_running=25))
    assert p.dispatch == [("a", 2), ("b", 5)]
    # One slot, busy: the waiting work stays in the queue (not inside the runtime's own FIFO).
    p = plan(snap(10, [loaded("c", 1, running=1, slots=1)], [want("c", 9, score=2)]))
    assert p.dispatch == []
    p = plan(snap(10, [loaded("c", 1, running=0, slots=1)], [want("c", 9, score=2)]))
    assert p.dispatch == [("c", 1)]


def test_loaded_model_cap():
    resident = [loaded("a", 1, last_used=1), loaded("b", 1, last_used=2)]
    p = plan(snap(10, resident, [want("c")], {"c": 1}, max_loaded=2))
    assert p.unloads == ["a"] and p.loads == []


def test_loading_model_is_left_alone():
    p = plan(snap(10, [loaded("a", 2, phase=Phase.LOADING)], [want("a", 5)]))
    assert p == Plan()


def test_a_model_just_loaded_serves_for_its_minimum_residency_before_it_can_be_pushed_out():
    # "low" took 3 s to load at t=100; with MIN_RESIDENCY_LOADS=4 it keeps its memory until t=112.
    demand = [want("high", score=2.0), want("low", waiting=10, score=0.1)]
    fresh = [loaded("low", 5, running=2, loaded_at=100.0, load_s=3.0)]
    p = plan(snap(6, fresh, demand, {"high": 4}, now=110.0, min_residency_loads=4))
    assert p.draining == [] and ("low", 2) in p.dispatch and p.waiting_for_memory == ["high"]
    p = plan(snap(6, fresh, demand, {"high": 4}, now=112.5, min_residency_loads=4))
    assert p.draining == ["low"]
    # A model with no waiting work is not held: it may go at once.
    idle = [loaded("low", 5, running=0, loaded_at=100.0, load_s=3.0)]
    assert plan(snap(6, idle, [want("high", score=2.0)], {"high": 4}, now=101.0, min_residency_loads=4)).unloads == ["low"]


def test_a_model_does_not_starve_behind_a_loaded_model_of_the_same_priority():
    # Room for one: "a" is loaded and busy with an endless backlog of normal work; "b" has normal
    # work too. Once b's work has waited FAIR_WAIT_S longer than a's, a drains for it.
    resident = [loaded("a", 5, running=2)]
    early = [want("a", 50, score=1.1, rank=1, head_wait=10.0), want("b", 3, score=1.5, rank=1, head_wait=40.0)]
    assert plan(snap(6, resident, early, {"b": 4}, fair_wait_s=60, min_residency_loads=0)).draining == []
    late = [want("a", 50, score=1.1, rank=1, head_wait=10.0), want("b", 3, score=1.9, rank=1, head_wait=75.0)]
    assert plan(snap(6, resident, late, {"b": 4}, fair_wait_s=60, min_residency_loads=0)).draining == ["a"]


def test_a_model_that_cannot_fit_beside_other_programs_does_not_block_others():
    # Capacity 10 GB, other programs hold 1 GB: "huge" (9.5 GB) cannot load now; "small" may.
    p = plan(snap(9, [], [want("huge", score=2.0), want("small", score=0.5)], {"huge": 9.5, "small": 2},
                  capacity_gb=10))
    assert p.loads == ["small"] and p.never_fits == [] and "huge" in p.waiting_for_memory


def test_a_drain_once_begun_is_seen_through_and_only_one_swap_runs_at_a_time():
    resident = [loaded("a", 4, running=1), loaded("b", 4, running=2)]
    demand = [want("x", score=2.0), want("y", score=2.0), want("a", 5, score=0.5), want("b", 5, score=0.5)]
    first = plan(snap(9, resident, demand, {"x": 4, "y": 4}, min_residency_loads=0))
    assert len(first.draining) == 1                        # one swap, not two at once
    victim = first.draining[0]
    # The next pass sees it through, though x's work is gone: no new jobs for it, then it goes.
    later = plan(snap(9, resident, [want("a", 5, score=0.5), want("b", 5, score=0.5)], draining={victim},
                      min_residency_loads=0))
    assert later.draining == [victim] and all(m != victim for m, _ in later.dispatch)
    idle_now = [m if m.name != victim else loaded(victim, 4, running=0) for m in resident]
    assert plan(snap(9, idle_now, demand, {"x": 4, "y": 4}, draining={victim}, min_residency_loads=0)).unloads == [victim]


@st.composite
def worlds(draw):
    names = [f"m{i}" for i in range(draw(st.integers(1, 8)))]
    resident, demand, needs = [], [], {}
    for name in names:
        gb = draw(st.floats(0.1, 8))
        if draw(st.booleans()):
            slots = draw(st.integers(1, 8))
            resident.append(loaded(name, gb, running=draw(st.integers(0, slots)),
                                   last_used=draw(st.floats(0, 100)),
                                   phase=draw(st.sampled_from(list(Phase))), slots=slots))
        if draw(st.booleans()):
            demand.append(want(name, draw(st.integers(1, 30)), draw(st.floats(0, 4)), draw(st.floats(0, 100))))
        needs[name] = gb
    used = sum(m.bytes for m in resident) / GB
    budget = draw(st.floats(max(used - 2, 0), used + 20))      # sometimes over budget already
    draining = [m.name for m in resident if draw(st.booleans()) and draw(st.booleans())]
    return snap(budget, resident, demand, needs, capacity_gb=budget + 1, draining=draining,
                now=draw(st.floats(0, 200)), max_running=draw(st.integers(1, 64)),
                max_loaded=draw(st.integers(0, 4)), min_residency_loads=draw(st.sampled_from([0, 4])))


@settings(max_examples=400, deadline=None)
@given(worlds())
def test_plans_never_exceed_budget_nor_touch_busy_models(s):
    p = plan(s)
    by_name = {m.name: m for m in s.resident}
    # Loads fit in what is free now: resident (incl. unloading) plus new loads stay within budget,
    # and when others took memory so that the world is already over budget, nothing loads.
    resident_bytes = sum(m.bytes for m in s.resident)
    assert resident_bytes + sum(s.need_bytes[m] for m in p.loads) <= max(s.budget_bytes, resident_bytes)
    if resident_bytes > s.budget_bytes:
        assert p.loads == []
    for name in p.unloads:
        assert by_name[name].running == 0 and by_name[name].phase is Phase.LOADED
    assert not set(p.loads) & set(by_name)
    running = sum(m.running for m in s.resident) + sum(n for _, n in p.dispatch)
    assert running <= max(s.limits.max_running, sum(m.running for m in s.resident))
    for name, n in p.dispatch:
        assert by_name[name].phase is Phase.LOADED and by_name[name].running + n <= by_name[name].slots
        assert name not in p.unloads and name not in s.draining         # a draining model takes no new jobs
    # One swap at a time: while a drain or an unload is under way, no model with work is pushed
    # out (an idle one without waiting work may go: that costs nobody anything).
    new_victims = {m for m in p.draining + p.unloads if m not in s.draining}
    demanded = {d.model for d in s.demand}
    if any(m.name in s.draining and m.phase is Phase.LOADED or m.phase is Phase.UNLOADING for m in s.resident):
        assert all(by_name[m].running == 0 and m not in demanded for m in new_victims)
    if s.limits.max_loaded:
        loaded_after = sum(1 for m in s.resident if m.phase is not Phase.UNLOADING) - len(p.unloads) + len(p.loads)
        assert loaded_after <= max(s.limits.max_loaded,
                                   sum(1 for m in s.resident if m.phase is not Phase.UNLOADING))
