"""The two strategies compared, as control flow over two small interfaces, so that they are
tested with scripted model answers:

* `ModelCalls`: submit a chat job (tagged with experiment, strategy, task and branch) and wait
  for its answer; in production every call is a job through the service's queue and scheduler;
* a judge: `(task, answer) -> (Verdict, completion)`, running code only in a sandbox.

`large`: one large model, one attempt. `sample-select`: k samples from the small models at a
temperature above 0, the first that passes the task's public checks is the answer
(`large-sample-select`: the same with the large model, at the same budget of samples).
`decompose`: small models in roles on the parts of a task (experiment/decompose.py). `branched`:
every small model attempts at once (one
branch each, run in parallel where the scheduler finds slots and memory); failed branches go
on with feedback (the failing test or the checker's verdict), to the same model, or to the
model of the best answer so far when theirs scored below RUNS_AT_ALL (it did not run, or raised), until one passes or `max_branches`
attempts were made; the result is the first passing answer, else the best-scoring one.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from experiment import decompose
from experiment.checking import Verdict, instructions, retry_instructions
from experiment.decompose import DECOMPOSE
from experiment.tasks import Task

LARGE = "large"
BRANCHED = "branched"
SAMPLE_SELECT = "sample-select"
LARGE_SAMPLE_SELECT = "large-sample-select"   # sample-select with the large model: the same budget of samples
STRATEGIES = (LARGE, BRANCHED, SAMPLE_SELECT, DECOMPOSE, LARGE_SAMPLE_SELECT)
SAMPLING = (SAMPLE_SELECT, LARGE_SAMPLE_SELECT)
SAMPLE_TEMPERATURE = 0.8     # sample-select's samples: different answers, each with its own seed
RUNS_AT_ALL = 0.5            # below: the answer did not run, or raised before any test could fail


@dataclass(frozen=True)
class ModelAnswer:
    job_id: str
    text: str
    error: str | None = None          # the job failed (the service's reason)


class ModelCalls(Protocol):
    def submit(self, model: str, messages: list[dict[str, str]], tags: dict[str, Any],
               options: dict[str, Any] | None = None) -> str:
        """Queue one chat job (`options` over the defaults: temperature, seed); its job id."""
        ...

    def answer(self, job_id: str) -> ModelAnswer:
        """Wait for the job to finish."""
        ...


Judge = Callable[[Task, str], tuple[Verdict, str]]


@dataclass
class Attempt:
    task_id: str
    strategy: str
    branch: int
    model: str
    job_id: str
    completion: str
    passed: bool
    error: str | None
    score: float
    parent: int | None                # the branch whose feedback this one started from
    messages: list[dict[str, str]] = field(repr=False, default_factory=list)
    answer: str = field(repr=False, default="")
    feedback: str | None = field(repr=False, default=None)
    public_passed: bool | None = None  # sample-select: passed the task's public checks
    role: str | None = None            # decompose: planner, solver, checker or combiner

    def record(self) -> dict[str, Any]:
        """One line of results.jsonl."""
        record = {"task_id": self.task_id, "strategy": self.strategy, "branch": self.branch, "model": self.model,
                  "job_id": self.job_id, "completion": self.completion, "passed": self.passed, "error": self.error,
                  "score": self.score, "parent": self.parent}
        if self.public_passed is not None:
            record["public_passed"] = self.public_passed
        if self.role is not None:
            record["role"] = self.role
        return record


@dataclass
class Outcome:
    task_id: str
    strategy: str
    attempts: list[Attempt]
    chosen: Attempt | None            # the combined answer
    eval_s: float                     # time spent judging (the sandbox), not in the ledger
    wall_s: float                     # first submission to verdict, as this client saw it

    @property
    def solved(self) -> bool:
        return bool(self.chosen and self.chosen.passed)

    @property
    def job_ids(self) -> list[str]:
        return [a.job_id for a in self.attempts if a.job_id]


@dataclass(frozen=True)
class _Branch:
    number: int
    model: str
    messages: list[dict[str, str]]
    parent: int | None


class Runner:
    """Runs tasks under a strategy: the experiment's name tags every job."""

    def __init__(self, calls: ModelCalls, judge: Judge, experiment: str, clock: Callable[[], float] = time.monotonic,
                 seed_base: int = 0):
        self.calls = calls
        self.judge = judge
        self.experiment = experiment
        self.clock = clock
        self.seed_base = seed_base      # sample n gets seed seed_base + n (a repeat of the run: other seeds)

    def large(self, task: Task, model: str) -> Outcome:
        started = self.clock()
        attempts, eval_s = self._round(task, LARGE, [_Branch(0, model, _first_messages(task), None)])
        return Outcome(task["task_id"], LARGE, attempts, attempts[0], eval_s, self.clock() - started)

    def branched(self, task: Task, models: list[str], max_branches: int) -> Outcome:
        if not models or max_branches < 1:
            raise ValueError("the branched strategy needs at least one small model and one branch")
        started = self.clock()
        attempts: list[Attempt] = []
        eval_total = 0.0
        pending = [_Branch(n, model, _first_messages(task), None) for n, model in enumerate(models[:max_branches])]
        while pending:
            done, eval_s = self._round(task, BRANCHED, pending)
            attempts.extend(done)
            eval_total += eval_s
            if any(a.passed for a in done):
                break
            pending = _next_branches(task, done, attempts, max_branches - len(attempts))
        return Outcome(task["task_id"], BRANCHED, attempts, combine(attempts), eval_total, self.clock() - started)

    def decompose(self, task: Task, models: list[str]) -> Outcome:
        """Small models in roles on the parts of the task (experiment/decompose.py)."""
        return decompose.run(self, task, models)

    def sample_select(self, task: Task, models: list[str], samples: int, public: Judge,
                      strategy: str = SAMPLE_SELECT) -> Outcome:
        """`samples` answers at SAMPLE_TEMPERATURE, each with its own seed, from the models in
        turn, all submitted at once; each is checked against the task's public checks
        (`public`), and the first that passes them is the answer (else the first), judged by the
        hidden tests. Every sample is judged too, so that the outcome with fewer samples can be
        read off one run (`solved_with`)."""
        if not models or samples < 1:
            raise ValueError("sample-select needs at least one model and one sample")
        started = self.clock()
        submitted = []
        for n in range(samples):
            model = models[n % len(models)]
            tags = {"experiment": self.experiment, "strategy": strategy, "task_id": task["task_id"],
                    "branch": n, "role": "sample"}
            messages = _first_messages(task)
            submitted.append((n, model, messages, self.calls.submit(
                model, messages, tags, {"temperature": SAMPLE_TEMPERATURE, "seed": self.seed_base + n})))
        attempts, eval_s = [], 0.0
        for n, model, messages, job_id in submitted:
            answer = self.calls.answer(job_id)
            if answer.error is not None:
                verdict, completion, public_ok = Verdict(False, 0.0, None, f"job failed: {answer.error}"), "", False
            else:
                judged = self.clock()
                public_ok = public(task, answer.text)[0].passed
                verdict, completion = self.judge(task, answer.text)
                eval_s += self.clock() - judged
            attempts.append(Attempt(task["task_id"], strategy, n, model, answer.job_id, completion, verdict.passed,
                                    verdict.error, verdict.score, None, messages, answer.text, verdict.feedback,
                                    public_ok))
        return Outcome(task["task_id"], strategy, attempts, selected(attempts), eval_s, self.clock() - started)

    def _round(self, task: Task, strategy: str, branches: list[_Branch]) -> tuple[list[Attempt], float]:
        """Submit every branch at once (the scheduler runs them side by side where it can), then
        judge the answers in order."""
        submitted = []
        for branch in branches:
            tags = {"experiment": self.experiment, "strategy": strategy, "task_id": task["task_id"],
                    "branch": branch.number, "role": "attempt" if branch.parent is None else "retry"}
            submitted.append((branch, self.calls.submit(branch.model, branch.messages, tags)))
        attempts, eval_s = [], 0.0
        for branch, job_id in submitted:
            answer = self.calls.answer(job_id)
            if answer.error is not None:
                verdict, completion = Verdict(False, 0.0, None, f"job failed: {answer.error}"), ""
            else:
                judged = self.clock()
                verdict, completion = self.judge(task, answer.text)
                eval_s += self.clock() - judged
            attempts.append(Attempt(task["task_id"], strategy, branch.number, branch.model, answer.job_id, completion,
                                    verdict.passed, verdict.error, verdict.score, branch.parent,
                                    branch.messages, answer.text, verdict.feedback))
        return attempts, eval_s


def _first_messages(task: Task) -> list[dict[str, str]]:
    return [{"role": "user", "content": instructions(task)}]


def _next_branches(task: Task, failed: list[Attempt], every: list[Attempt], budget: int) -> list[_Branch]:
    """Each failed branch of the last round goes on with its feedback, best first, while the
    budget lasts: to its own model, or to the best-scoring model when its answer did not run. A
    job that failed outright (no answer to build on) starts over on the best model."""
    if budget <= 0:
        return []
    best = max(every, key=lambda a: (a.score, -a.branch))
    numbered = len(every)
    branches = []
    for attempt in sorted(failed, key=lambda a: (-a.score, a.branch))[:budget]:
        model = attempt.model if attempt.score >= RUNS_AT_ALL else best.model
        if attempt.feedback is None:          # the job itself failed: nothing to give feedback on
            messages = _first_messages(task)
        else:
            messages = [*attempt.messages, {"role": "assistant", "content": attempt.answer},
                        {"role": "user", "content": retry_instructions(task, attempt.feedback)}]
        branches.append(_Branch(numbered, model, messages, attempt.branch))
        numbered += 1
    return branches


def combine(attempts: list[Attempt]) -> Attempt | None:
    """The first passing answer, else the best-scoring one (the earlier on a tie)."""
    for attempt in attempts:
        if attempt.passed:
            return attempt
    return max(attempts, key=lambda a: (a.score, -a.branch)) if attempts else None


def selected(samples: list[Attempt]) -> Attempt | None:
    """Sample-select's answer: the first sample that passed the public checks, else the first."""
    for sample in samples:
        if sample.public_passed:
            return sample
    return samples[0] if samples else None


def solved_with(samples: list[dict[str, Any]], k: int) -> bool:
    """Whether sample-select would have solved the task with only its first `k` samples (records
    of results.jsonl, in sample order)."""
    first = sorted(samples, key=lambda s: s["branch"])[:k]
    chosen = next((s for s in first if s.get("public_passed")), first[0] if first else None)
    return bool(chosen and chosen["passed"])
