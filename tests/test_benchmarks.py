"""The benchmarks run (small versions), print their JSON, and the deterministic ones hold the
scheduler to what it must beat: Ollama's default policy, on the same trace."""
import json

import pytest

from bench import overhead, scheduler_pass, scheduling_quality, soak


def last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_scheduling_quality_on_equal_footing_without_oom(capsys):
    assert scheduling_quality.main(["--jobs", "400", "--json"]) == 0
    result = last_json(capsys)
    assert set(result) >= {"loads_ratio", "makespan_ratio", "high_p95_wait_ratio", "oom_errors"}
    assert result["oom_errors"] == 0
    assert set(result["regimes"]) == {"registry-24gb", "pressure-24gb"}
    for regime in result["regimes"].values():
        assert regime["model-manager"]["slots_per_model"] == regime["ollama-tuned"]["slots_per_model"] == 4
        assert regime["vs_ollama-tuned"]["high_p95_wait_ratio"] < 1.0
        assert regime["model-manager"]["peak_gb"] <= 24
        assert regime["model-manager"]["makespan_vs_lower_bound"] >= 1.0


def test_scheduler_pass_bench_reports_its_key(capsys):
    assert scheduler_pass.main(["--repeats", "30", "--json"]) == 0
    result = last_json(capsys)
    assert result["max_pass_ms_10k"] > 0 and len(result["passes"]) == 6


@pytest.mark.slow
def test_spam_against_the_simulator_loses_nothing_and_never_5xx(main_process, capsys):
    import submit_test_job
    proc = main_process(QUEUE_MAX_SIZE=300, SIM_TOKENS_PER_S=2000, SIM_DEFAULT_TOKENS=16)
    code = submit_test_job.main(["--url", proc.url, "--spam", "1500", "--concurrency", "32", "--json", "--quiet"])
    summary = last_json(capsys)
    assert code == 0 and summary["lost"] == 0 and summary["server_errors_5xx"] == 0
    assert summary["submitted"] + summary["rejected_by_status"].get("429", 0) == 1500


@pytest.mark.slow
def test_a_short_soak_with_a_frozen_leader_loses_nothing_and_serves_nothing_twice(capsys):
    """bench/soak.py in small: gunicorn with 4 workers on the simulator, mixed traffic with
    idempotent retries, cancels and bad input, and the leader frozen for 8 s in the middle."""
    assert soak.main(["--minutes", "0.5", "--rate", "20", "--freeze-every", "20", "--json"]) == 0
    result = last_json(capsys)
    assert result["leader_freezes"] == 1 and result["accepted"] > 100
    assert result["lost"] == 0 and result["served_twice"] == 0 and result["answered_twice"] == 0
    assert result["server_errors_5xx"] == 0 and result["idempotent_retries_with_a_second_job"] == 0
    assert result["completed"] + result["cancelled"] == result["accepted"]


@pytest.mark.slow
def test_overhead_bench_measures_both_ways_in(capsys):
    assert overhead.main(["--requests", "20", "--clients", "2", "--embedded-requests", "0", "--json"]) == 0
    result = last_json(capsys)
    for key in ("added_p50_ms", "added_p99_ms", "front_door_added_p50_ms", "front_door_added_p99_ms"):
        assert isinstance(result[key], float), key
    assert result["sim"]["front_door_p50_ms"] > result["sim"]["direct_p50_ms"] > 0
    assert 0 < result["throughput_ratio"] <= 1.5


@pytest.mark.slow
@pytest.mark.embedded
def test_embeddings_bench_measures_both_doors(capsys):
    from bench import embeddings
    from helpers import require_models
    require_models("all-minilm")
    assert embeddings.main(["--rounds", "1", "--single", "3", "--batches", "1", "--json"]) == 0
    result = last_json(capsys)
    for mode in ("single", "batch32"):
        assert result[mode]["manager_embeddings_per_s"] > 0 and result[mode]["straight_embeddings_per_s"] > 0
        assert 0 < result[mode]["ratio"] <= 2
