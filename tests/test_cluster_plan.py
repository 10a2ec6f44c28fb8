"""Placement over several runtime nodes (cluster_plan): pure, no threads."""
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling.cluster_plan import NodeState, plan_cluster
from vram_scheduler import Demand, Limits, Phase, ResidentModel, Snapshot

GB = 10**9


def node(name, budget_gb, resident=(), ok=True, installed=None):
    budget = int(budget_gb * GB)
    return NodeState(name, ok, Snapshot(budget, budget, tuple(resident), (), {}, Limits()), installed)


def model(name, gb, running=0, slots=2, phase=Phase.LOADED):
    return ResidentModel(name, phase, int(gb * GB), running, 0.0, slots)


def needs(**gb):
    return {k: int(v * GB) for k, v in gb.items()}


def test_work_goes_to_the_node_that_has_the_model_split_by_free_slots():
    nodes = [node("a", 24, [model("m", 4, running=1, slots=2)]), node("b", 24, [model("m", 4, slots=4)]), node("c", 24)]
    p = plan_cluster(nodes, [Demand("m", 5, 1.0, 0.0)], needs(m=4))
    dispatched = {n: dict(p.plans[n].dispatch).get("m", 0) for n in p.plans}
    assert dispatched == {"a": 1, "b": 4, "c": 0}
    assert p.plans["c"].loads == []                  # 5 waiting is not a long queue


def test_a_model_loaded_nowhere_goes_where_most_memory_is_free_and_stays_there():
    nodes = [node("a", 24, [model("x", 16)]), node("b", 24, [model("y", 4)])]
    p = plan_cluster(nodes, [Demand("m", 1, 1.0, 0.0)], needs(m=6))
    assert p.plans["b"].loads == ["m"] and p.placed == {"m": "b"}
    # the next pass keeps it on b even if a now looks freer
    nodes = [node("a", 24), node("b", 24, [model("y", 4)])]
    p = plan_cluster(nodes, [Demand("m", 1, 1.0, 0.0)], needs(m=6), placed={"m": "b"})
    assert p.placed == {"m": "b"} and p.plans["b"].loads == ["m"] and p.plans["a"].loads == []


def test_two_models_that_each_fit_one_node_are_not_both_sent_to_it():
    nodes = [node("a", 10), node("b", 9)]
    p = plan_cluster(nodes, [Demand("m", 1, 2.0, 0.0), Demand("n", 1, 1.0, 0.0)], needs(m=7, n=7))
    assert p.plans["a"].loads == ["m"] and p.plans["b"].loads == ["n"]


def test_a_long_queue_gets_a_replica_where_memory_is_free():
    nodes = [node("a", 24, [model("m", 4, running=2, slots=2)]), node("b", 24)]
    p = plan_cluster(nodes, [Demand("m", 12, 1.0, 0.0)], needs(m=4), replica_after=8)
    assert p.plans["b"].loads == ["m"] and p.replicas == [("m", "b")]
    p = plan_cluster(nodes, [Demand("m", 5, 1.0, 0.0)], needs(m=4), replica_after=8)
    assert p.plans["b"].loads == []


def test_a_down_node_gets_nothing_and_its_models_are_placed_elsewhere():
    nodes = [node("a", 24, [model("m", 4)], ok=False), node("b", 24)]
    p = plan_cluster(nodes, [Demand("m", 3, 1.0, 0.0)], needs(m=4))
    assert "a" not in p.plans and p.plans["b"].loads == ["m"]


def test_a_model_goes_only_to_nodes_that_have_it_installed_and_can_hold_it():
    nodes = [node("a", 40, installed=frozenset({"x"})), node("b", 20), node("c", 8)]
    p = plan_cluster(nodes, [Demand("m", 1, 1.0, 0.0), Demand("huge", 1, 0.5, 0.0)], needs(m=10, huge=60))
    assert p.plans["b"].loads == ["m"]
    assert p.plans["a"].never_fits == ["huge"]       # the largest node says it can never fit


def test_pinned_and_predicted_models_load_into_free_memory_only():
    nodes = [node("a", 10, [model("busy", 8, running=1)]), node("b", 10)]
    p = plan_cluster(nodes, [], needs(pin=6, guess=6), pinned=frozenset({"pin"}), predicted=["guess"])
    assert p.plans["b"].loads == ["pin"] and p.plans["a"].loads == []   # guess fits nowhere now


@st.composite
def clusters(draw):
    names = [f"m{i}" for i in range(draw(st.integers(1, 6)))]
    sizes = {m: draw(st.floats(0.5, 12)) for m in names}
    nodes = []
    for i in range(draw(st.integers(1, 4))):
        budget = draw(st.floats(4, 30))
        resident, used = [], 0.0
        for m in names:
            if draw(st.booleans()) and used + sizes[m] <= budget:
                slots = draw(st.integers(1, 4))
                resident.append(model(m, sizes[m], draw(st.integers(0, slots)), slots, draw(st.sampled_from(list(Phase)))))
                used += sizes[m]
        nodes.append(node(f"n{i}", budget, resident, ok=draw(st.booleans()) or i == 0))
    demand = [Demand(m, draw(st.integers(1, 30)), draw(st.floats(0, 3)), 0.0) for m in names if draw(st.booleans())]
    return nodes, demand, needs(**sizes), draw(st.integers(1, 10))


@settings(max_examples=300, deadline=None)
@given(clusters())
def test_every_node_stays_within_its_budget_and_no_model_is_given_more_jobs_than_wait(world):
    nodes, demand, need, replica_after = world
    p = plan_cluster(nodes, demand, need, replica_after=replica_after)
    for n in nodes:
        if not n.ok:
            assert n.name not in p.plans
            continue
        s, decided = p.snapshots[n.name], p.plans[n.name]
        resident = sum(m.bytes for m in s.resident)
        assert resident + sum(sum(a) for a in decided.placements.values()) <= max(s.budget_bytes, resident)
    for d in demand:
        assert sum(dict(pl.dispatch).get(d.model, 0) for pl in p.plans.values()) <= d.waiting


def unknown_memory(name):
    from vram_scheduler import UNKNOWN_CAPACITY
    return NodeState(name, True, Snapshot(0, UNKNOWN_CAPACITY, (), (), {}, Limits()))


def test_a_node_whose_memory_is_unknown_is_given_nothing_new():
    p = plan_cluster([node("a", 8), unknown_memory("u")], [Demand("big", 1, 1.0, 0.0), Demand("m", 1, 0.5, 0.0)],
                     needs(big=20, m=4))
    assert p.plans["u"].loads == [] and p.plans["u"].never_fits == []
    assert p.plans["a"].never_fits == ["big"] and p.plans["a"].loads == ["m"]


def test_while_a_node_is_down_work_that_fits_no_other_waits_instead_of_failing():
    nodes = [node("big", 48, ok=False), node("small", 24), node("has", 24, installed=frozenset({"x"}))]
    p = plan_cluster(nodes, [Demand("m", 3, 1.0, 0.0)], needs(m=30))
    assert all(not pl.never_fits and not pl.loads for pl in p.plans.values())
    nodes = [node("big", 48, ok=False, installed=frozenset({"only"})), node("small", 24, installed=frozenset())]
    p = plan_cluster(nodes, [Demand("only", 1, 1.0, 0.0)], needs(only=4))
    assert p.plans["small"].loads == []                # installed only on the down node: it waits


def test_a_home_that_no_longer_fits_is_given_up_for_a_node_where_it_fits_now():
    nodes = [node("a", 10, [model("busy", 8, running=1)]), node("b", 10)]
    p = plan_cluster(nodes, [Demand("m", 1, 1.0, 0.0)], needs(m=4), placed={"m": "a"})
    assert p.placed == {"m": "b"} and p.plans["b"].loads == ["m"]
