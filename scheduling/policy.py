"""The scheduler's policy for what goes wrong, beside `vram_scheduler.plan`: pure functions from
a failure and a little state to a verdict. No clock, no I/O, no threads: tested table by table.

* A failed load backs the model off for LOAD_RETRY_DELAY_S and counts toward giving up after
  MAX_LOAD_FAILURES in a row, out of memory included; a model the runtime does not have fails
  its waiting jobs at once; a runtime that does not answer is not the model's fault (its jobs
  wait for the runtime, counting nothing).
* An out-of-memory answer (to a load or a job) grows the model's planned need once per
  incident and makes the scheduler distrust its table of resident models until the runtime has
  been read afresh (the runtime may have dropped models).
* A job that failed for a passing reason (out of memory, runtime busy) is re-queued up to
  OOM_MAX_RETRIES times; any other failure fails it with the reason.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum

from jobs.model import ErrorKind


class FailureKind(StrEnum):
    """What a runtime's answer (or silence) means, as far as scheduling is concerned."""
    OUT_OF_MEMORY = "out_of_memory"
    NOT_FOUND = "not_found"            # the runtime does not have the model (404)
    UNAVAILABLE = "unavailable"        # refused, reset or dropped the connection
    BUSY = "busy"                      # the runtime's own queue is full (503)
    TIMEOUT = "timeout"
    REFUSED = "refused"                # the runtime refused the request itself (4xx)
    OTHER = "other"

    @property
    def error_kind(self) -> ErrorKind:
        """How a job that failed this way is counted in /api/stats."""
        if self is FailureKind.OUT_OF_MEMORY:
            return ErrorKind.OOM
        if self is FailureKind.TIMEOUT:
            return ErrorKind.TIMEOUT
        return ErrorKind.RUNTIME


@dataclass(frozen=True)
class PolicyLimits:
    max_load_failures: int = 3
    load_retry_delay_s: float = 2.0
    max_job_retries: int = 3           # OOM_MAX_RETRIES


@dataclass(frozen=True)
class LoadHealth:
    """A model's record of failed loads."""
    failures: int = 0                  # in a row, since the last successful load
    retry_after: float = 0.0           # not to be loaded before this time


@dataclass(frozen=True)
class LoadVerdict:
    health: LoadHealth                 # the model's record from now on
    give_up: str | None = None         # fail the model's waiting jobs with this reason
    grow_need: bool = False            # out of memory: plan the model larger
    distrust_table: bool = False       # plan nothing until the runtime has been read afresh


def after_load_failure(health: LoadHealth, kind: FailureKind, message: str, model: str, now: float,
                       limits: PolicyLimits) -> LoadVerdict:
    retry_at = now + limits.load_retry_delay_s
    if kind is FailureKind.UNAVAILABLE:
        # The runtime is down, not the model: back off, count nothing, the jobs wait.
        return LoadVerdict(replace(health, retry_after=retry_at))
    # Giving up fails the waiting jobs and starts the count afresh, after the usual pause: a
    # pinned or predicted model has no jobs to fail and would otherwise be loaded every pass.
    if kind is FailureKind.NOT_FOUND:
        return LoadVerdict(LoadHealth(retry_after=retry_at),
                           give_up=f"model {model} is not available on the runtime: {message}")
    failures = health.failures + 1
    oom = kind is FailureKind.OUT_OF_MEMORY
    if failures >= limits.max_load_failures:
        what = "ran out of memory loading" if oom else "failed to load"
        return LoadVerdict(LoadHealth(retry_after=retry_at),
                           give_up=f"model {model} {what} {failures} times in a row: {message}",
                           grow_need=oom, distrust_table=oom)
    return LoadVerdict(LoadHealth(failures, retry_at), grow_need=oom, distrust_table=oom)


def after_load_success(health: LoadHealth) -> LoadHealth:
    return LoadHealth()


def backing_off(healths: Mapping[str, LoadHealth], now: float) -> set[str]:
    """Models whose last load failed a moment ago: not to be planned again just yet."""
    return {model for model, h in healths.items() if h.retry_after > now}


@dataclass(frozen=True)
class JobVerdict:
    requeue: bool                      # back to the queue (else the job fails with the reason)
    grow_need: bool = False
    distrust_table: bool = False
    retries: int = 0                   # the job's count of passing failures, this one included


def after_job_failure(kind: FailureKind, retries: int, limits: PolicyLimits, runtime_down: bool = False) -> JobVerdict:
    """`retries`: the job's passing failures before this one. `runtime_down`: after the failure
    the runtime did not answer at all (a node that died or restarts), as opposed to one request
    cut off by a runtime that still answers."""
    oom = kind is FailureKind.OUT_OF_MEMORY
    # A connection dropped by a runtime that is gone: the job runs again (elsewhere, if the node
    # stays down), bounded in case it is the prompt that brings it down. One request dropped by
    # a runtime that still answers fails with the reason: running it again would serve it twice.
    passing = oom or kind is FailureKind.BUSY or (kind is FailureKind.UNAVAILABLE and runtime_down)
    distrust = oom or kind is FailureKind.UNAVAILABLE     # the runtime may have dropped the model
    if passing and retries < limits.max_job_retries:
        return JobVerdict(True, grow_need=oom, distrust_table=distrust, retries=retries + 1)
    return JobVerdict(False, grow_need=oom, distrust_table=distrust, retries=retries + int(passing))


def reading_is_stale(distrusted_at: float, reading_taken_at: float) -> bool:
    """After a surprise (out of memory, a dropped runner), act only on a reading taken later."""
    return distrusted_at > 0 and reading_taken_at <= distrusted_at


class RunAction(StrEnum):
    KEEP = "keep"            # its scheduler may still be running it
    REQUEUE = "requeue"
    FAIL = "fail"


@dataclass(frozen=True)
class LeftRun:
    """A job the store says is running, as a scheduler sweeping for runs left behind sees it."""
    epoch: int | None        # the term that claimed it
    running_here: bool       # this scheduler is running it now
    epoch_retired: bool      # its term said none of its requests is in flight any more
    owner_alive: bool | None  # its scheduler's process still runs (None: cannot tell, another host)
    started_at: float
    timeout_s: float
    attempts: int


def left_run_verdict(run: LeftRun, my_epoch: int, now: float, grace_s: float, max_attempts: int,
                     requeue: bool) -> tuple[RunAction, str]:
    """What to do with a job left running. A run of an older term is taken back only when no
    request of it can still be in flight, so that no prompt is served twice: its term retired,
    or its process is gone, or its deadline (which its own scheduler enforces) passed `grace_s`
    ago. A run of this term that this scheduler is not running (its start or its recording
    failed) is taken back after `grace_s`. Taken back: re-queued (RECOVER_RUNNING=requeue) unless
    it has run `max_attempts` times already, else failed with the reason."""
    if run.epoch is not None and run.epoch > my_epoch:
        return RunAction.KEEP, "a newer scheduler's run"
    if run.epoch == my_epoch:
        if run.running_here or now - run.started_at < grace_s:
            return RunAction.KEEP, "running here"
        why = "its run was lost by this scheduler (its start or its result could not be recorded)"
    else:
        deadline_passed = now > run.started_at + run.timeout_s + grace_s
        if not (run.epoch_retired or run.owner_alive is False or deadline_passed):
            return RunAction.KEEP, "its scheduler may still be running it"
        why = ("the scheduler running it stopped" if run.epoch_retired or run.owner_alive is False
               else "the scheduler running it stopped answering and its timeout passed")
    if not requeue:
        return RunAction.FAIL, f"{why} (RECOVER_RUNNING=fail)"
    if run.attempts >= max_attempts:
        return RunAction.FAIL, f"{why}, and it has been started {run.attempts} times (MAX_ATTEMPTS)"
    return RunAction.REQUEUE, why
