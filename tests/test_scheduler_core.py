"""The scheduler loop, driven pass by pass with a fake runtime behind `Effects` and a fake clock:
no threads, no sleeps, no subprocesses. The fake runtime behaves like Ollama where it matters:
each model has a fixed number of slots, and it refuses (fails the test) if it is ever sent more
requests than that."""
from collections import Counter

import pytest

from helpers import make_config, sample_job
from jobs.model import JobStatus, Priority
from model_registry import ModelArch, ModelRegistry, ModelSpec
from queue_manager import QueueManager
from resource_monitor import LoadedModelInfo, ResourceState
from scheduling.core import SchedulerCore
from scheduling.events import JobFinished, LoadFinished, UnloadFinished
from scheduling.model_settings import ModelSettings
from scheduling.policy import FailureKind, PolicyLimits, after_job_failure
from scheduling.preemption import PreemptLimits
from store.sqlite import SqliteStore
from telemetry.counters import Counters

GB = 10 ** 9
ARCH = ModelArch(16, 16, 4, 1024, 8192)        # 64 KiB of KV cache per token
CATALOG = (ModelSpec("small", 1 * GB, arch=ARCH), ModelSpec("big", 6 * GB, arch=ARCH),
           ModelSpec("other", 2 * GB, arch=ARCH))


class FakeRuntime:
    """The effects, recorded; the test says when each finishes."""

    def __init__(self, store, clock):
        self.store, self.clock = store, clock
        self.core: SchedulerCore | None = None
        self.loads, self.unloads, self.cancelled, self.started, self.preempted = [], [], [], [], []
        self.inside: Counter[str] = Counter()
        self.running = {}
        self.loaded = {}

    # --- Effects
    def load(self, model, options, embedding_only):
        self.loads.append((model, options))

    def unload(self, model):
        self.unloads.append(model)

    def start(self, job, run):
        self.inside[job["model"]] += 1
        assert self.inside[job["model"]] <= run.slots, "more requests than slots inside the runtime"
        self.started.append(job["job_id"])
        self.running[job["job_id"]] = (job, run)

    def cancel(self, job_id):
        self.cancelled.append(job_id)

    def requeue(self, job_id, run_id):
        self.store.requeue(job_id, run_id, {})

    def preempt(self, job_id):
        """As the engine does: the request stops, the job goes back in line, its end is reported."""
        self.preempted.append(job_id)
        job, run = self.running.pop(job_id)
        self.inside[job["model"]] -= 1
        self.store.requeue(job_id, job["run_id"], {"preempted": int(job.get("preempted") or 0) + 1})
        self.scheduler().post(JobFinished(job_id, job["model"], self.clock.now, run.incarnation))

    def cancelled_among(self, job_ids):
        return [j for j, status in self.store.statuses(job_ids).items() if status == "cancelled"]

    # --- what the runtime answers
    def scheduler(self) -> SchedulerCore:
        assert self.core is not None, "the world's build() sets the core"
        return self.core

    def finish_load(self, model, failure=None, message="boom"):
        if failure is None:
            self.loaded[model] = self.scheduler().registry.need_bytes(model)
        self.scheduler().post(LoadFinished(model, self.clock.now, failure, message if failure else ""))

    def finish_unload(self, model):
        self.loaded.pop(model, None)
        self.scheduler().post(UnloadFinished(model, self.clock.now))

    def finish_job(self, job_id, failure=None):
        job, run = self.running.pop(job_id)
        self.inside[job["model"]] -= 1
        verdict = None
        if failure is None:
            self.store.finish(job_id, job["run_id"], JobStatus.COMPLETE.value, {"completed_at": self.clock.now})
        else:
            verdict = after_job_failure(failure, int(job.get("oom_retries") or 0), PolicyLimits())
            if verdict.requeue:
                self.store.requeue(job_id, job["run_id"], {"oom_retries": verdict.retries})
            else:
                self.store.finish(job_id, job["run_id"], JobStatus.FAILED.value, {"completed_at": self.clock.now})
        self.scheduler().post(JobFinished(job_id, job["model"], self.clock.now, run.incarnation, verdict, failure))

    def reading(self, memory_total=12 * GB):
        return ResourceState(self.clock.now, "fake", memory_total, sum(self.loaded.values()),
                             loaded=tuple(LoadedModelInfo(m, b, b, None, b) for m, b in self.loaded.items()))


class Clock:
    def __init__(self):
        self.now = 1000.0

    def tick(self, seconds=0.1):
        self.now += seconds
        return self.now


@pytest.fixture
def world(tmp_path):
    store = SqliteStore.in_memory()
    clock = Clock()
    config = make_config(tmp_path, VRAM_SAFETY_MARGIN_MB=0, LOAD_RETRY_DELAY_S=2.0, MAX_LOAD_FAILURES=3)
    queue = QueueManager(store, 1000, config.QUEUE_AGING_S)
    queue.start()
    runtime = FakeRuntime(store, clock)

    def build(num_parallel=1):
        registry = ModelRegistry(1.0, None, CATALOG, ModelSettings(num_ctx=2048, num_parallel=num_parallel))
        core = SchedulerCore(queue, registry, runtime, config, Counters(), "node-1")
        runtime.core = core
        return core

    def submit(model, priority=Priority.NORMAL, n=1):
        ids = []
        for _ in range(n):
            job = sample_job(model=model, priority=priority, submitted_at=clock.tick(0.01))
            queue.submit(job)
            ids.append(job["job_id"])
        return ids

    def step(core, memory_total=12 * GB):
        clock.tick()
        return core.run_pass(runtime.reading(memory_total), clock.now)

    yield build, submit, step, runtime, store, clock
    store.close()


def test_one_fifo_slot_a_high_priority_job_submitted_after_eight_low_ones_is_served_next(world):
    build, submit, step, runtime, store, clock = world
    core = build(num_parallel=1)
    lows = submit("small", Priority.LOW, n=8)
    step(core)
    assert runtime.loads == [("small", {"num_ctx": 2048})]          # loaded with its configured context
    runtime.finish_load("small")
    step(core)
    assert runtime.started == [lows[0]]                               # one slot: one request inside
    high = submit("small", Priority.HIGH)[0]
    for _ in range(3):
        step(core)
    assert runtime.started == [lows[0]]                               # the other seven wait here, not inside
    runtime.finish_job(lows[0])
    step(core)
    assert runtime.started == [lows[0], high]                         # the freed slot goes to the urgent job
    for _ in range(8):
        runtime.finish_job(runtime.started[-1])
        step(core)
    assert runtime.started[2:] == lows[1:]                            # then the rest, in order
    assert max(runtime.inside.values()) <= 1


def test_slots_bound_dispatch_and_cost_kv_memory(world):
    build, submit, step, runtime, store, clock = world
    core = build(num_parallel=3)
    submit("small", n=5)
    step(core)
    runtime.finish_load("small")
    step(core)
    assert len(runtime.started) == 3 and runtime.inside["small"] == 3
    # The plan reserved the weights and the KV cache of three slots of 2048 tokens.
    assert core.table.get("small").bytes == 1 * GB + 3 * 2048 * ARCH.kv_bytes_per_token()


def test_failed_loads_back_off_then_give_up_counting_out_of_memory_too(world):
    build, submit, step, runtime, store, clock = world
    core = build()
    jobs = submit("big", n=2)
    needs = [core.registry.need_bytes("big")]
    for attempt in range(3):
        step(core)
        assert len(runtime.loads) == attempt + 1
        runtime.finish_load("big", FailureKind.OUT_OF_MEMORY, "cudaMalloc failed: out of memory")
        step(core)
        needs.append(core.registry.need_bytes("big"))
        step(core)
        assert len(runtime.loads) == attempt + 1                     # backing off: no new load yet
        clock.tick(2.5)
    assert all(store.get(j)["status"] == JobStatus.FAILED.value for j in jobs)
    assert "ran out of memory loading 3 times" in store.get(jobs[0])["error"]
    assert needs[1] > needs[0] and needs[3] <= 12 * GB                # grown once per attempt, capped


def test_a_model_the_runtime_lacks_fails_its_jobs_at_once_and_a_runtime_that_is_down_costs_nothing(world):
    build, submit, step, runtime, store, clock = world
    core = build()
    missing = submit("other")[0]
    step(core)
    runtime.finish_load("other", FailureKind.NOT_FOUND, 'model "other" not found')
    step(core)
    assert store.get(missing)["status"] == JobStatus.FAILED.value
    waiting = submit("small")[0]
    for _ in range(5):                                                # the runtime refuses connections
        step(core)
        runtime.finish_load("small", FailureKind.UNAVAILABLE, "Connection refused")
        clock.tick(2.5)
    assert store.get(waiting)["status"] in (JobStatus.PENDING.value, JobStatus.QUEUED.value)
    step(core)
    runtime.finish_load("small")
    step(core)
    assert runtime.started == [waiting]


def test_jobs_answered_out_of_memory_grow_the_need_once_and_wait_for_a_fresh_reading(world):
    build, submit, step, runtime, store, clock = world
    core = build(num_parallel=3)
    jobs = submit("small", n=3)
    step(core)
    runtime.finish_load("small")
    step(core)
    before = core.registry.need_bytes("small")
    for job_id in jobs:                                             # one incident, three answers
        runtime.finish_job(job_id, FailureKind.OUT_OF_MEMORY)
    stale = runtime.reading()                                       # taken before the answers came in
    clock.tick()
    assert core.run_pass(stale, clock.now).empty                      # nothing planned on a stale reading
    assert core.registry.need_bytes("small") == int(before * 1.25)
    assert core.counters.snapshot()["errors.oom"] == 3
    assert all(store.get(j)["status"] in (JobStatus.PENDING.value, JobStatus.QUEUED.value) for j in jobs)
    step(core)                                                      # a fresh reading: go on
    assert len(runtime.started) == 6


def test_a_cancelled_running_job_is_stopped_through_the_effects(world):
    build, submit, step, runtime, store, clock = world
    core = build()
    job_id = submit("small")[0]
    step(core)
    runtime.finish_load("small")
    step(core)
    store.cancel(job_id, {"completed_at": clock.now})
    step(core)
    assert runtime.cancelled == [job_id]


def test_an_idle_model_is_unloaded_for_urgent_work_and_stays_counted_until_the_runtime_lets_go(world):
    build, submit, step, runtime, store, clock = world
    core = build()
    first = submit("big")[0]
    step(core)
    runtime.finish_load("big")
    step(core)
    runtime.finish_job(first)
    submit("other", Priority.HIGH)
    submit("small", Priority.HIGH)
    # 9 GB: "other" fits beside the idle "big"; "small" needs big's room.
    step(core, memory_total=9 * GB)
    assert [m for m, _ in runtime.loads] == ["big", "other"] and runtime.unloads == ["big"]
    runtime.finish_load("other")
    step(core, memory_total=9 * GB)
    assert [m for m, _ in runtime.loads] == ["big", "other"]       # still unloading: no load into its room
    runtime.finish_unload("big")
    step(core, memory_total=9 * GB)
    assert [m for m, _ in runtime.loads] == ["big", "other", "small"]


def test_urgent_work_that_waited_preempt_after_s_takes_a_slot_from_lower_work_which_runs_again_later(world):
    build, submit, step, runtime, store, clock = world
    core = build(num_parallel=1)
    low = submit("small", Priority.LOW)[0]
    step(core)
    runtime.finish_load("small")
    step(core)
    assert runtime.started == [low]
    high = submit("small", Priority.HIGH)[0]
    normal = submit("small", Priority.NORMAL)[0]
    step(core)
    assert runtime.preempted == []                                   # not before PREEMPT_AFTER_S (1 s)
    clock.tick(1.0)
    step(core)
    assert runtime.preempted == [low]
    step(core)
    assert runtime.started == [low, high]                            # the freed slot goes to the urgent job
    assert store.get(low)["status"] in ("pending", "queued") and store.get(low)["preempted"] == 1
    clock.tick(5.0)
    step(core)
    assert runtime.preempted == [low]                                # never for a job of the same priority
    runtime.finish_job(high)
    step(core)
    assert runtime.started[-1] == normal                             # the next priority first ...
    runtime.finish_job(normal)
    step(core)
    assert runtime.started == [low, high, normal, low]               # ... then the preempted job runs again


def test_urgent_work_for_a_model_that_does_not_fit_empties_a_busy_model_serving_lower_work(world):
    build, submit, step, runtime, store, clock = world
    core = build(num_parallel=1)
    low = submit("big", Priority.LOW)[0]
    step(core, memory_total=8 * GB)
    runtime.finish_load("big")
    step(core, memory_total=8 * GB)
    assert runtime.started == [low]
    high = submit("other", Priority.HIGH)[0]                          # 2 GB more does not fit beside big
    for _ in range(12):
        step(core, memory_total=8 * GB)
        if runtime.unloads:
            break
    assert runtime.preempted == [low] and runtime.unloads == ["big"]
    runtime.finish_unload("big")
    step(core, memory_total=8 * GB)
    assert runtime.loads[-1][0] == "other"
    runtime.finish_load("other")
    step(core, memory_total=8 * GB)
    assert runtime.started[-1] == high


def test_preemption_off_leaves_running_work_alone(world, tmp_path):
    build, submit, step, runtime, store, clock = world
    core = build(num_parallel=1)
    core.preempt_limits = PreemptLimits(enabled=False)
    low = submit("small", Priority.LOW)[0]
    step(core)
    runtime.finish_load("small")
    step(core)
    submit("small", Priority.HIGH)
    clock.tick(30.0)
    step(core)
    assert runtime.preempted == [] and runtime.started == [low]
