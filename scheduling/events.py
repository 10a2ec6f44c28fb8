"""The seam between the scheduler's decisions and their execution.

The scheduler (`scheduling/core.py`) decides and acts only through `Effects`: load, unload, start a
job, cancel a job. Each effect is carried out elsewhere (the execution engine, against a real
runtime; a fake in tests) and reports back with an event, which the scheduler takes in at the
start of its next pass. So the scheduler's state changes on its own thread only, and a test can
drive it with a fake runtime and a fake clock, one pass at a time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from jobs.model import JobDoc
from scheduling.policy import FailureKind, JobVerdict


@dataclass(frozen=True)
class RunContext:
    """What the executor of a job needs to know of the model it runs on."""
    model_bytes: int                 # the model's footprint, for the ledger
    slots: int
    incarnation: int                 # which load of the model: an out-of-memory incident is per load
    granted_at: float                # when the job got its slot: its timeout runs from here
    load_started: float = 0.0
    load_finished: float = 0.0


class Effects(Protocol):
    """What the scheduler may do. Every call returns at once; the outcome comes back as an event."""

    def load(self, model: str, options: dict[str, Any], embedding_only: bool) -> None: ...

    def unload(self, model: str) -> None: ...

    def start(self, job: JobDoc, run: RunContext) -> None: ...

    def cancel(self, job_id: str) -> None: ...

    def preempt(self, job_id: str) -> None:
        """Stop a running job for more urgent work: it goes back in line and resumes later
        (jobs/resume.py); its end is reported as a JobFinished without tokens."""

    def requeue(self, job_id: str, run_id: str) -> None:
        """Put a claimed job whose start failed back in line (its run did not begin)."""

    def cancelled_among(self, job_ids: list[str]) -> list[str]:
        """Which of these running jobs were cancelled through the API (a read of the store)."""
        ...


@dataclass(frozen=True)
class LoadFinished:
    model: str
    at: float
    failure: FailureKind | None = None   # None: loaded
    message: str = ""


@dataclass(frozen=True)
class UnloadFinished:
    model: str
    at: float
    ok: bool = True
    message: str = ""


@dataclass(frozen=True)
class JobFinished:
    job_id: str
    model: str
    at: float
    incarnation: int
    verdict: JobVerdict | None = None    # None: it completed or was cancelled
    failure: FailureKind | None = None
    tokens: tuple[int, int] | None = None   # (prompt, output) of a completed job: its tenant's fair share


Event = LoadFinished | UnloadFinished | JobFinished
