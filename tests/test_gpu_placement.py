"""Placement over a node's GPUs, and the planner budgeting each GPU: pure functions, no threads."""
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from scheduling.gpu_placement import GpuSplit, place
from vram_scheduler import Demand, Limits, Phase, ResidentModel, Snapshot, plan

GB = 10**9


def test_a_model_goes_whole_on_the_gpu_with_most_free_memory_when_it_needs_at_most_80_percent():
    assert place(4 * GB, [6 * GB, 8 * GB]) == (0, 4 * GB)
    # 5.5 GB > 80% of 6 GB: Ollama splits it over both GPUs, in proportion to their free memory
    assert place(int(5.5 * GB), [6 * GB, 6 * GB]) == (int(2.75 * GB), int(2.75 * GB))


def test_a_10gb_model_on_two_gpus_with_6gb_free_each():
    split = place(10 * GB, [6 * GB, 6 * GB])
    assert split is not None and sum(split) == 10 * GB                    # Ollama splits it
    assert place(10 * GB, [6 * GB, 6 * GB], GpuSplit.SINGLE) is None        # a runtime that cannot split
    assert place(13 * GB, [6 * GB, 6 * GB]) is None


def test_spread_always_splits_and_never_exceeds_any_gpu():
    alloc = place(3 * GB, [8 * GB, 4 * GB], GpuSplit.SPREAD)
    assert alloc == (2 * GB, 1 * GB)


def resident(name, split_gb, running=0, phase=Phase.LOADED, last_used=0.0):
    split = tuple(int(g * GB) for g in split_gb)
    return ResidentModel(name, phase, sum(split), running, last_used, 1, gpu_bytes=split)


def node(budgets_gb, resident_models=(), demand=(), needs=None, split=GpuSplit.OLLAMA, **extra):
    budgets = tuple(int(g * GB) for g in budgets_gb)
    return Snapshot(sum(budgets), sum(budgets), tuple(resident_models), tuple(demand),
                    {k: int(v * GB) for k, v in (needs or {}).items()}, Limits(), gpu_budgets=budgets,
                    gpu_capacity=budgets, split=split, **extra)


def test_memory_free_on_two_gpus_is_not_one_pool_for_a_runtime_that_cannot_split():
    world = node([10, 10], [resident("a", (6, 0)), resident("b", (0, 6), running=1)],
                 [Demand("big", 1, 1.0, 0.0)], {"big": 7}, GpuSplit.SINGLE)
    p = plan(world)
    # 8 GB free in all, 4 on each GPU: 7 GB fits neither, so the idle model on GPU 0 must go
    assert p.loads == [] and p.unloads == ["a"]
    after = replace(world, resident=(world.resident[1],))
    p = plan(after)
    assert p.loads == ["big"] and p.placements["big"] == (7 * GB, 0)


def test_pinned_models_are_never_pushed_out_and_wanted_ones_load_into_spare_memory():
    world = node([10], [resident("pinned", (6,)), resident("old", (3,), last_used=5.0)],
                 [Demand("urgent", 1, 2.0, 0.0)], {"urgent": 4}, pinned=frozenset({"pinned"}))
    assert plan(world).unloads == ["old"]
    quiet = node([10], [resident("pinned", (6,))], (), {"soon": 3, "later": 3},
                 wanted=("soon", "later"))
    assert plan(quiet).loads == ["soon"]                   # the second does not fit beside it


@st.composite
def nodes(draw):
    n_gpus = draw(st.integers(2, 4))
    budgets = [draw(st.floats(2, 24)) for _ in range(n_gpus)]
    models, demand, needs = [], [], {}
    used = [0.0] * n_gpus
    for i in range(draw(st.integers(0, 8))):
        name = f"m{i}"
        needs[name] = draw(st.floats(0.2, 20))
        if draw(st.booleans()):
            split = [0.0] * n_gpus
            gpu = draw(st.integers(0, n_gpus - 1))
            split[gpu] = draw(st.floats(0.2, 10))
            used[gpu] += split[gpu]
            models.append(resident(name, split, running=draw(st.integers(0, 1)),
                                   phase=draw(st.sampled_from(list(Phase))), last_used=draw(st.floats(0, 9))))
        if draw(st.booleans()):
            demand.append(Demand(name, draw(st.integers(1, 9)), draw(st.floats(0, 3)), 0.0))
    split = draw(st.sampled_from(list(GpuSplit)))
    wanted = tuple(name for name in needs if draw(st.booleans()))
    return node(budgets, models, demand, needs, split, wanted=wanted)


@settings(max_examples=400, deadline=None)
@given(nodes())
def test_plans_on_a_multi_gpu_node_never_exceed_any_gpu(s):
    p = plan(s)
    for i, budget in enumerate(s.budgets):
        on_gpu = sum(s.split_of(m)[i] for m in s.resident)
        new = sum(alloc[i] for alloc in p.placements.values())
        if new:
            assert on_gpu + new <= budget, (i, on_gpu, new, budget)
    for name in p.loads:
        alloc = p.placements[name]
        assert sum(alloc) == s.need_bytes[name]
        if s.split is GpuSplit.SINGLE:
            assert sum(1 for b in alloc if b) == 1
