"""The discrete-event simulator on several nodes, and the manager's policy over them
(cluster_plan): sharing work, one node as before, pinned models, preloading."""
import json
from dataclasses import replace
from typing import TypedDict

import pytest

from helpers import PHYSICS, started
from scheduling.model_memory import ModelArch
from simulator.des import Job, NodeSpec, SimModel, make_trace, run
from simulator.policies import ManagerPolicy, OllamaPolicy
from vram_scheduler import plan

GB = 10 ** 9
SMALL_KV = ModelArch(8, 8, 8, 512)          # 16 KiB of KV cache per token


class Preload(TypedDict, total=False):
    """ManagerPolicy's preloading arguments."""
    preload_window_s: float
    preload_limit: int


def unloads_of(result, model):
    return [(node.name, t) for node in result.nodes for t, event, m in node.log if event == "unload" and m == model]


def copies_over_time(result, model):
    """How many nodes hold `model` (loading or loaded) after each of its loads and unloads."""
    events = sorted((t, +1 if event == "load" else -1) for node in result.nodes for t, event, m in node.log
                    if m == model and event in ("load", "unload"))
    counts, held = [], 0
    for _, change in events:
        held += change
        counts.append(held)
    return counts


def test_two_nodes_share_the_work_without_running_out_of_memory():
    models = [SimModel(f"m{i}", 5 * GB, SMALL_KV) for i in range(4)]      # two fit on a node
    trace = make_trace(models, 300, 10.0, seed=2, zipf_s=0.5)             # more than one node serves
    one = run(ManagerPolicy(margin_bytes=0), trace, models, 16 * GB, **PHYSICS)
    policy = ManagerPolicy(margin_bytes=0)
    two = run(policy, trace, models, 16 * GB, **PHYSICS, nodes=2)
    for result in (one, two):
        assert result.oom_errors == 0 and all(j.finished is not None for j in result.jobs)
        assert result.peak_bytes <= 16 * GB
        assert result.loads == sum(n.loads for n in result.nodes)
        assert sum(n.jobs_run for n in result.nodes) == len(result.jobs)
    per_node = [sum(j.node == i for j in two.jobs) for i in range(2)]
    assert min(per_node) > 0.3 * len(trace)                 # both nodes did a fair part
    assert [n.jobs_run for n in two.nodes] == per_node
    assert two.throughput > 1.7 * one.throughput
    assert policy.max_copies >= 1 and len(two.nodes) == 2 and one.nodes[0].name == "node-0"


def test_nodes_of_different_sizes_keep_to_their_own_memory():
    models = [SimModel(f"m{i}", 5 * GB, SMALL_KV) for i in range(4)]
    trace = make_trace(models, 200, 10.0, seed=3, zipf_s=0.5)
    nodes = [NodeSpec("big", 24 * GB, 1 * GB, 100.0, 0.0), NodeSpec("small", 8 * GB, 0.5 * GB, 50.0, 0.0)]
    result = run(ManagerPolicy(margin_bytes=0), trace, models, 0, 0, 0, 0, nodes=nodes)
    big, small = result.nodes
    assert result.oom_errors == 0 and all(j.finished is not None for j in result.jobs)
    assert big.peak_bytes <= 24 * GB and small.peak_bytes <= 8 * GB and small.peak_bytes > 0
    assert result.peak_bytes == big.peak_bytes and result.peak_bytes_summed == big.peak_bytes + small.peak_bytes
    assert big.jobs_run > small.jobs_run > 0


def test_a_one_node_policy_refuses_several_nodes():
    models = [SimModel("a", GB, SMALL_KV)]
    with pytest.raises(ValueError):
        run(OllamaPolicy("ollama", 0, 4), [Job(0, "a", "high", 0.0, 10)], models, 8 * GB, **PHYSICS, nodes=2)


class PlanOnly(ManagerPolicy):
    """The manager as it was before plan_cluster: vram_scheduler.plan on its one node."""

    def step(self) -> None:
        node = self.nodes[0]
        demand = self.index.demand(node.gpu.now)
        snapshot = replace(self._state(node).snapshot, demand=tuple(demand),
                           need_bytes={d.model: self.need(d.model) for d in demand})
        decided = plan(snapshot)
        self._carry_out(node, decided, frozenset())
        if decided.unloads:
            self.step()


def test_one_node_is_the_single_node_scheduler_exactly():
    models = [SimModel(f"m{i}", int((4 + i) * GB), SMALL_KV) for i in range(5)]
    trace = make_trace(models, 200, 3.0, seed=4)
    result = run(ManagerPolicy(), trace, models, 16 * GB, **PHYSICS)
    reference = run(PlanOnly(), trace, models, 16 * GB, **PHYSICS)
    assert [(j.started, j.finished) for j in result.jobs] == [(j.started, j.finished) for j in reference.jobs]
    # the figures the one-node simulator gave before it had several nodes (same trace)
    assert (result.loads, result.unloads, result.oom_errors, result.peak_bytes) == (10, 8, 0, 13268435456)
    assert result.makespan == pytest.approx(225.1988397211554, abs=1e-9)
    assert sum(started(j) - j.arrival for j in result.jobs) == pytest.approx(16893.395412266993, abs=1e-6)


@pytest.mark.parametrize("nodes", [1, 2])
def test_a_pinned_model_is_never_unloaded(nodes):
    # two fit on a node (even at the first estimate, 1.3 x weights); more models than the nodes hold
    models = [SimModel(name, 6 * GB, SMALL_KV) for name in "abcde"[:2 * nodes + 1]]
    trace = make_trace(models, 300, 8.0 * nodes, seed=5, zipf_s=0.3)
    free = run(ManagerPolicy(margin_bytes=0), trace, models, 15 * GB, **PHYSICS, nodes=nodes)
    assert unloads_of(free, "a")                            # under pressure it would go
    pinned = run(ManagerPolicy(margin_bytes=0, pinned=frozenset({"a"})), trace, models, 15 * GB, **PHYSICS,
                 nodes=nodes)
    # one copy stays loaded throughout (a further copy on another node is a replica, free to go)
    assert unloads_of(pinned, "a") == [] if nodes == 1 else min(copies_over_time(pinned, "a")) >= 1
    assert pinned.oom_errors == 0 and all(j.finished is not None for j in pinned.jobs)
    if nodes == 1:
        assert all(unloads_of(pinned, m.name) for m in models[1:])   # the others take turns beside it


def test_a_pinned_model_is_loaded_before_any_job_asks_for_it():
    models = [SimModel("a", 2 * GB, SMALL_KV), SimModel("b", 2 * GB, SMALL_KV)]
    trace = [Job(0, "b", "normal", 1.0, 10), Job(1, "a", "normal", 30.0, 10)]
    result = run(ManagerPolicy(margin_bytes=0, pinned=frozenset({"a"})), trace, models, 16 * GB, **PHYSICS)
    loads = [(t, m) for t, event, m in result.nodes[0].log if event == "load"]
    assert loads[0][1] == "b" and ("a", 1.0) == (loads[1][1], loads[1][0])
    assert result.jobs[1].started == pytest.approx(30.0)


def crafted_trace():
    """b runs, then d (whose first estimate is twice its size) pushes b out; d's load turns out
    smaller, so b fits again beside it; b's next job comes at t=60."""
    return [Job(0, "b", "normal", 0.0, 10), Job(1, "c", "normal", 0.1, 10), Job(2, "d", "normal", 20.0, 10),
            Job(3, "b", "normal", 60.0, 10)]


@pytest.mark.parametrize("preload", [False, True])
def test_preloading_loads_a_recently_used_model_before_its_next_job(preload):
    models = [SimModel("b", 3 * GB, SMALL_KV), SimModel("c", 3 * GB, SMALL_KV), SimModel("d", 4 * GB, SMALL_KV)]
    options = Preload(preload_window_s=120.0, preload_limit=2) if preload else Preload()
    policy = ManagerPolicy(margin_bytes=0, multiplier=2.0, **options)
    result = run(policy, crafted_trace(), models, 12 * GB, **PHYSICS)
    log = result.nodes[0].log
    assert unloads_of(result, "b") and unloads_of(result, "b")[0][1] == pytest.approx(20.0)   # pushed out by d
    b_loads = [t for t, event, m in log if event == "load" and m == "b"]
    last_b = result.jobs[3]
    assert result.oom_errors == 0
    if preload:
        assert len(b_loads) == 2 and 20.0 < b_loads[1] < 60.0        # back before its next job arrived
        assert last_b.started == pytest.approx(60.0)                   # no wait for a load
        assert policy.warm_loads == 1 and result.unused_loads == 0
    else:
        assert len(b_loads) == 2 and b_loads[1] == pytest.approx(60.0)
        assert started(last_b) - last_b.arrival >= 3.0                 # 3 GB at 1 GB/s
        assert policy.warm_loads == 0


def test_a_preloaded_model_that_runs_nothing_counts_as_unused():
    models = [SimModel("b", 3 * GB, SMALL_KV), SimModel("c", 3 * GB, SMALL_KV), SimModel("d", 4 * GB, SMALL_KV)]
    trace = crafted_trace()[:3]                                       # b never comes back
    result = run(ManagerPolicy(margin_bytes=0, multiplier=2.0, preload_window_s=120.0, preload_limit=2), trace,
                 models, 12 * GB, **PHYSICS)
    assert result.unused_loads == 1 and result.unused_load_bytes == 3 * GB


def test_scale_out_bench_reports_its_figures(capsys):
    from bench import scale_out
    assert scale_out.main(["--jobs-per-node", "60", "--seeds", "7", "--passes", "20", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["oom_errors"] == 0 and out["pass_median_ms"] > 0
    assert [r["nodes"] for r in out["scaling"]["7"]] == [1, 2, 4, 8]
    assert all(r["all_finished"] and r["jobs"] == 60 * r["nodes"] for r in out["scaling"]["7"])
    variants = {(r["nodes"], r["variant"]) for r in out["warm_pools"]}
    assert {(1, "baseline"), (4, "baseline"), (4, "preload 120 s, 2")} <= variants
