"""The discrete-event simulator and the two policies it compares, on small traces with known answers."""
import pytest

from helpers import PHYSICS, finished, started
from scheduling.model_memory import ModelArch
from simulator.des import Job, SimModel, make_trace, run
from simulator.physics import SharedThroughput
from simulator.policies import ManagerPolicy, OllamaPolicy

GB = 10 ** 9
SMALL_KV = ModelArch(8, 8, 8, 512)          # 16 KiB of KV cache per token


def test_shared_counters_finish_at_their_computed_time_even_when_large():
    bw: SharedThroughput[str] = SharedThroughput(2e9, 0.0)
    bw.add("a", 9.1e9, now=1234.5)
    bw.add("b", 4.7e9, now=1234.6)
    done: list[str] = []
    while len(done) < 2:
        next_finish = bw.next_finish()
        assert next_finish is not None
        done += bw.advance(next_finish)                 # must not get stuck short of the target
    assert done == ["b", "a"]


def test_ollama_fifo_blocks_the_queue_while_a_swap_waits_for_a_busy_model():
    models = [SimModel("a", 6 * GB, SMALL_KV), SimModel("b", 6 * GB, SMALL_KV)]
    # a long job on "a", then a job for "b" (which does not fit beside "a"), then a short one for "a"
    trace = [Job(0, "a", "normal", 0.0, 1000), Job(1, "b", "high", 0.1, 10), Job(2, "a", "high", 7.0, 10)]
    result = run(OllamaPolicy("ollama", max_loaded=0, num_parallel=4), trace, models, 10 * GB, **PHYSICS)
    by_id = {j.id: j for j in result.jobs}
    # Job 2's model is loaded when it arrives, yet it waits behind job 1, which waits for job 0 to
    # finish and "a" to be swapped out for "b" (and back).
    assert started(by_id[2]) > finished(by_id[0])
    assert result.loads == 3 and result.oom_errors == 0


def test_manager_runs_loaded_work_while_a_swap_is_pending_and_honours_priority():
    models = [SimModel("a", 6 * GB, SMALL_KV), SimModel("b", 6 * GB, SMALL_KV)]
    trace = [Job(0, "a", "normal", 0.0, 1000), Job(1, "b", "high", 0.1, 10), Job(2, "a", "high", 7.0, 10)]
    result = run(ManagerPolicy(margin_bytes=0, multiplier=1.2), trace, models, 10 * GB, **PHYSICS)
    by_id = {j.id: j for j in result.jobs}
    assert by_id[2].started == pytest.approx(7.0)            # its model is loaded: it runs at once
    assert started(by_id[1]) < finished(by_id[0]) + 7        # b loads once a has drained
    assert result.loads == 2 and result.oom_errors == 0 and result.peak_bytes <= 10 * GB


def test_trace_is_reproducible_and_skewed():
    models = [SimModel(f"m{i}", GB) for i in range(5)]
    a, b = make_trace(models, 500, 10.0, seed=3), make_trace(models, 500, 10.0, seed=3)
    assert [(j.model, j.tokens, j.priority) for j in a] == [(j.model, j.tokens, j.priority) for j in b]
    counts = {m.name: sum(j.model == m.name for j in a) for m in models}
    assert counts["m0"] > 2 * counts["m4"]
    assert all(x.arrival < y.arrival for x, y in zip(a, a[1:], strict=False))


def test_neither_policy_runs_out_of_memory_under_pressure():
    models = [SimModel(f"big{i}", int(7 * GB), SMALL_KV) for i in range(5)]
    trace = make_trace(models, 300, 20.0, seed=5)
    for policy in (ManagerPolicy(), OllamaPolicy("default", 3, 1), OllamaPolicy("tuned", 0, 4)):
        result = run(policy, trace, models, 24 * GB, **PHYSICS)
        assert result.oom_errors == 0 and result.peak_bytes <= 24 * GB
        assert all(j.finished is not None for j in result.jobs)
