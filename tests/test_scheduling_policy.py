"""The policy for failures, table by table: pure functions, no threads, no sleeps."""
import pytest

from runtime.client import (
    ModelNotFound,
    RuntimeBusy,
    RuntimeFailure,
    RuntimeOutOfMemory,
    RuntimeRefused,
    failure_from_answer,
)
from scheduling.model_settings import ModelSettings, reload_option_error
from scheduling.policy import (
    FailureKind,
    LoadHealth,
    PolicyLimits,
    after_job_failure,
    after_load_failure,
    backing_off,
    reading_is_stale,
)

LIMITS = PolicyLimits(max_load_failures=3, load_retry_delay_s=2.0, max_job_retries=3)
OOM, NOT_FOUND, DOWN, OTHER, BUSY = (FailureKind.OUT_OF_MEMORY, FailureKind.NOT_FOUND, FailureKind.UNAVAILABLE,
                                     FailureKind.OTHER, FailureKind.BUSY)


@pytest.mark.parametrize("failures_before, kind, failures_after, gives_up, grows, distrusts, backs_off", [
    (0, OTHER, 1, False, False, False, True),
    (1, OTHER, 2, False, False, False, True),
    (2, OTHER, 0, True, False, False, True),         # the third failure in a row: its jobs fail (and a pause)
    (0, OOM, 1, False, True, True, True),            # out of memory counts toward giving up too
    (2, OOM, 0, True, True, True, True),
    (2, DOWN, 2, False, False, False, True),         # the runtime is down, not the model: nothing counted
    (0, NOT_FOUND, 0, True, False, False, True),     # the runtime lacks the model: give up at once
])
def test_after_a_failed_load(failures_before, kind, failures_after, gives_up, grows, distrusts, backs_off):
    verdict = after_load_failure(LoadHealth(failures_before), kind, "boom", "m", now=100.0, limits=LIMITS)
    assert verdict.health.failures == failures_after
    assert bool(verdict.give_up) == gives_up and verdict.grow_need == grows and verdict.distrust_table == distrusts
    assert ("m" in backing_off({"m": verdict.health}, now=101.0)) == backs_off
    assert "m" not in backing_off({"m": verdict.health}, now=102.5)       # LOAD_RETRY_DELAY_S later
    if gives_up:
        assert verdict.give_up is not None and "m" in verdict.give_up and "boom" in verdict.give_up


@pytest.mark.parametrize("kind, retries, requeue, grows, distrusts, retries_after", [
    (OOM, 0, True, True, True, 1),
    (OOM, 2, True, True, True, 3),
    (OOM, 3, False, True, True, 4),                   # OOM_MAX_RETRIES used up: it fails
    (BUSY, 0, True, False, False, 1),                 # the runtime's own queue was full: try again
    (DOWN, 0, False, False, True, 0),                 # dropped mid-answer by a runtime that still answers: fails
    (FailureKind.TIMEOUT, 0, False, False, False, 0),
    (FailureKind.REFUSED, 0, False, False, False, 0),
])
def test_after_a_failed_job(kind, retries, requeue, grows, distrusts, retries_after):
    verdict = after_job_failure(kind, retries, LIMITS)
    assert (verdict.requeue, verdict.grow_need, verdict.distrust_table, verdict.retries) == (
        requeue, grows, distrusts, retries_after)


@pytest.mark.parametrize("retries, requeue", [(0, True), (2, True), (3, False)])
def test_a_job_cut_off_by_a_runtime_that_is_gone_runs_again_but_not_forever(retries, requeue):
    verdict = after_job_failure(DOWN, retries, LIMITS, runtime_down=True)
    assert verdict.requeue is requeue and verdict.distrust_table and verdict.retries == retries + 1


def test_the_scheduler_waits_for_a_reading_taken_after_a_surprise():
    assert not reading_is_stale(0.0, 5.0)              # nothing surprising happened
    assert reading_is_stale(10.0, 9.0) and reading_is_stale(10.0, 10.0)
    assert not reading_is_stale(10.0, 10.5)


@pytest.mark.parametrize("status, message, expected", [
    (500, "llama runner process has terminated: cudaMalloc failed: out of memory", RuntimeOutOfMemory),
    (500, "model requires more system memory (7.4 GiB) than is available (3.2 GiB)", RuntimeOutOfMemory),
    (500, "insufficient memory - required allocations: {...}", RuntimeOutOfMemory),
    (500, "ggml_backend_cuda_buffer_type_alloc_buffer: allocating 1024 MiB on device 0: cudaMalloc failed", RuntimeOutOfMemory),
    (500, "unable to allocate CUDA0 buffer", RuntimeOutOfMemory),
    (404, 'model "bloom" not found, try pulling it first', ModelNotFound),      # "not found" wins
    (500, 'model "zoom-roomy" not found', ModelNotFound),
    (503, "server busy, please try again.  maximum pending requests exceeded", RuntimeBusy),
    (400, '"all-minilm" does not support generate', RuntimeRefused),
    (500, "llama runner process has terminated: exit status 2", RuntimeFailure),
])
def test_failures_are_recognised_from_ollamas_own_messages(status, message, expected):
    failure = failure_from_answer(status, message)
    assert type(failure) is expected
    assert message in str(failure)


def test_a_bare_oom_substring_is_not_out_of_memory():
    # The old marker "oom" matched names like "bloom" and "zoom".
    assert type(failure_from_answer(500, "the room is full of bloom")) is RuntimeFailure


SETTINGS = ModelSettings(num_ctx=4096, ctx_overrides={"qwen2.5:0.5b": 8192})


@pytest.mark.parametrize("options, named", [
    ({"temperature": 0.2, "num_predict": 64, "seed": 7, "stop": ["\n"]}, None),      # sampling options pass
    ({"num_ctx": 4096}, None),                                                       # equal to the configured value
    ({"num_ctx": 2048}, "options.num_ctx"),
    ({"num_ctx": True}, "options.num_ctx"),
    ({"num_gpu": -1, "num_batch": 512, "num_thread": 0, "main_gpu": 0}, None),      # Ollama's neutral values
    ({"num_gpu": 20}, "options.num_gpu"),
    ({"num_batch": 1024}, "options.num_batch"),
    ({"use_mmap": False}, "options.use_mmap"),
    ({"use_mlock": True}, "options.use_mlock"),
    ({"low_vram": True}, "options.low_vram"),
    ({"numa": True}, "options.numa"),
    ({"num_thread": 8}, "options.num_thread"),
    ({"main_gpu": 1}, "options.main_gpu"),
])
def test_options_that_would_reload_the_model_are_named(options, named):
    message = reload_option_error(options, "phi3:mini", SETTINGS)
    assert (message.split(":")[0] if message else None) == named


def test_the_configured_context_is_per_model():
    assert reload_option_error({"num_ctx": 8192}, "qwen2.5:0.5b", SETTINGS) is None
    message = reload_option_error({"num_ctx": 4096}, "qwen2.5:0.5b", SETTINGS)
    assert message is not None and message.startswith("options.num_ctx")
    assert SETTINGS.request_options("qwen2.5:0.5b", {"temperature": 0}) == {"temperature": 0, "num_ctx": 8192}
