"""`decompose`: small models in roles on the parts of a task.

1. **planner** (the first small model) splits the task into 2 to MAX_SUBTASKS parts that can be
   worked out apart, one per line; a plan with fewer than two parts means the task is not
   divided, and the combiner solves it whole.
2. **solvers**: every part at once, part i to small model i (in turn), each asked for a short
   answer (an `Answer:` line, or a code block for a function's part).
3. **checkers**: every part's answer at once, each to another small model than its solver's,
   which answers CORRECT or WRONG with a reason; a part found wrong is solved once more by its
   solver, with the reason (all such at once).
4. **combiner** (the planner's model): the task, its parts and their answers, asked for the task's
   own answer in the task's format; that answer is judged by the hidden tests.

Every call is a job through the service, tagged with the experiment, strategy, task, branch (the
call's number in the task) and `role`. Pure control flow over `ModelCalls` and a judge, tested on
scripted answers.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from experiment.checking import Verdict, extract_code, final_answer, instructions
from experiment.tasks import Task

if TYPE_CHECKING:
    from experiment.strategies import Attempt, Outcome, Runner

DECOMPOSE = "decompose"
MAX_SUBTASKS = 4
_NUMBERED = re.compile(r"^\s*(?:step\s*)?\d+\s*[.):]\s*(.+?)\s*$", re.IGNORECASE)
_BULLET = re.compile(r"^[-*•]\s+(.+?)\s*$")        # a bullet at the start of its line (not indented)


def plan_messages(task: Task) -> list[dict[str, str]]:
    if _is_code(task):
        ask = ("Split the work of writing this Python function into 2 to 4 smaller pieces that can be "
               "written separately (helper functions, each with its name, arguments and what it returns). "
               "Do not write any code. Write one piece per line, numbered 1., 2., ...\n\n" + task["prompt"])
    else:
        ask = ("Split this problem into 2 to 4 smaller questions that can be answered separately, each "
               "complete in itself (repeat the numbers or text it needs). Do not answer them. Write one "
               "question per line, numbered 1., 2., ...\n\nProblem: " + task["prompt"])
    return [{"role": "user", "content": ask}]


def parse_plan(text: str) -> list[str]:
    """The parts of a plan: its numbered lines, else its bullets (not indented ones: those are
    details of a part), markdown emphasis dropped; at most MAX_SUBTASKS."""
    lines = [line.replace("**", "").replace("__", "") for line in (text or "").splitlines()]
    numbered = [m.group(1) for line in lines if (m := _NUMBERED.match(line))]
    parts = numbered or [m.group(1) for line in lines if (m := _BULLET.match(line))]
    return [p.strip() for p in parts if p.strip()][:MAX_SUBTASKS]


def solve_messages(task: Task, part: str) -> list[dict[str, str]]:
    """A part, with the whole task beside it: a small planner often leaves out of a part the
    numbers or the text it needs."""
    if _is_code(task):
        ask = (f"Write this piece as Python code in one ```python code block: {part}\n\n"
               f"It is part of this task:\n{task['prompt']}")
    else:
        ask = (f"Problem: {task['prompt']}\n\nAnswer only this part of it: {part}\n\nThink briefly, then give "
               "the answer on the last line as 'Answer: <answer>'.")
    return [{"role": "user", "content": ask}]


def check_messages(task: Task, part: str, answer: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Task: {task['prompt']}\n\nPart: {part}\n\nProposed answer to the part:\n"
                                        f"{answer}\n\nIs the proposed answer correct? Reply with CORRECT, or with "
                                        "WRONG: and the reason."}]


_VERDICT = re.compile(r"\b(not\s+correct|incorrect|wrong|correct|right)\b\s*[:.,;!]?\s*(.*)",
                      re.IGNORECASE | re.DOTALL)
_NOTHING_WRONG = re.compile(r"\b(nothing|not(hing)?\s+\w+\s+)wrong\b|\bno(thing)?\s+(error|mistake)", re.IGNORECASE)


def is_wrong(check: str) -> str | None:
    """The reason a checker gave for its answer being wrong (its whole reply if it gave none), or
    None when it found it correct: the first verdict word decides ("not correct" and "incorrect"
    are wrong; "correct; nothing is wrong with it" is correct)."""
    text = (check or "").strip().replace("*", "")
    found = _VERDICT.search(text)
    if found is None:
        return None                      # no verdict at all: the part's answer stands
    word = found.group(1).lower()
    if word in ("correct", "right") or (_NOTHING_WRONG.search(text) and word == "wrong"):
        return None
    return found.group(2).strip() or text


def retry_message(task: Task, reason: str) -> dict[str, str]:
    tail = "one ```python code block" if _is_code(task) else "a last line 'Answer: <answer>'"
    return {"role": "user", "content": f"A reviewer says this is wrong: {reason[:400]}\nTry again; end with {tail}."}


def part_answer(task: Task, text: str) -> str:
    """What a solver's answer gives the combiner: the code, or the final answer line."""
    return extract_code(text).strip() if _is_code(task) else final_answer(text)


def combine_messages(task: Task, parts: list[str], answers: list[str]) -> list[dict[str, str]]:
    if not parts:
        return [{"role": "user", "content": instructions(task)}]
    if _is_code(task):
        pieces = "\n\n".join(f"# {p}\n{a}" for p, a in zip(parts, answers, strict=True))
        ask = (instructions(task) + "\n\nThese pieces were written for it; use them where they are right. "
               "Answer with the whole function, and any helper it calls, in one ```python code block.\n\n"
               f"```python\n{pieces}\n```")
    else:
        solved = "\n".join(f"{n}. {p} -> {a or '(no answer)'}" for n, (p, a) in enumerate(zip(parts, answers,
                                                                                               strict=True), 1))
        ask = (f"Problem: {task['prompt']}\n\nIt was split into these questions, answered so:\n{solved}\n\n"
               "Using these answers, solve the problem. Give the final answer on the last line as "
               "'Answer: <answer>'.")
    return [{"role": "user", "content": ask}]


@dataclass
class _Call:
    number: int
    role: str
    model: str
    messages: list[dict[str, str]]
    parent: int | None = None
    job_id: str = ""
    text: str = ""
    error: str | None = None


def run(runner: Runner, task: Task, models: list[str]) -> Outcome:
    """The strategy on one task with the small `models` (the first plans and combines)."""
    from experiment.strategies import Outcome
    if not models:
        raise ValueError("decompose needs at least one small model")
    started = runner.clock()
    calls: list[_Call] = []

    def ask(batch: list[_Call]) -> None:
        """Submit a batch at once (the scheduler runs it side by side where it can), then wait."""
        for call in batch:
            tags = {"experiment": runner.experiment, "strategy": DECOMPOSE, "task_id": task["task_id"],
                    "branch": call.number, "role": call.role}
            call.job_id = runner.calls.submit(call.model, call.messages, tags)
        for call in batch:
            answer = runner.calls.answer(call.job_id)
            call.job_id, call.text, call.error = answer.job_id, answer.text, answer.error
        calls.extend(batch)

    planner = _Call(0, "planner", models[0], plan_messages(task))
    ask([planner])
    parts = parse_plan(planner.text) if planner.error is None else []
    if len(parts) < 2:
        parts = []                       # not divided: the combiner solves the task whole
    solvers = [_Call(len(calls) + i, "solver", models[i % len(models)], solve_messages(task, part))
               for i, part in enumerate(parts)]
    ask(solvers)
    checked = [i for i, solver in enumerate(solvers) if solver.error is None]
    checkers = [_Call(len(calls) + n, "checker", models[(i + 1) % len(models)],
                      check_messages(task, parts[i], part_answer(task, solvers[i].text)))
                for n, i in enumerate(checked)]
    ask(checkers)
    retries: dict[int, _Call] = {}                    # solver's index -> its second try
    for i, checker in zip(checked, checkers, strict=True):
        reason = is_wrong(checker.text) if checker.error is None else None
        if reason is not None:
            solver = solvers[i]
            retries[i] = _Call(len(calls) + len(retries), "solver", solver.model,
                               [*solver.messages, {"role": "assistant", "content": solver.text},
                                retry_message(task, reason)], parent=solver.number)
    ask(list(retries.values()))
    final_texts = []
    for i, solver in enumerate(solvers):
        redone = retries.get(i)
        last = redone if redone is not None and redone.error is None else solver
        final_texts.append(part_answer(task, last.text) if last.error is None else "")
    combiner = _Call(len(calls), "combiner", models[0], combine_messages(task, parts, final_texts))
    ask([combiner])
    judged = runner.clock()
    if combiner.error is not None:
        verdict, completion = Verdict(False, 0.0, None, f"job failed: {combiner.error}"), ""
    else:
        verdict, completion = runner.judge(task, combiner.text)
    eval_s = runner.clock() - judged
    attempts = [_attempt(task, call, call is combiner, verdict, completion) for call in calls]
    return Outcome(task["task_id"], DECOMPOSE, attempts, attempts[-1], eval_s, runner.clock() - started)


def _attempt(task: Task, call: _Call, final: bool, verdict: Verdict, completion: str) -> Attempt:
    from experiment.strategies import Attempt
    if final:
        return Attempt(task["task_id"], DECOMPOSE, call.number, call.model, call.job_id, completion, verdict.passed,
                       verdict.error, verdict.score, call.parent, call.messages, call.text, verdict.feedback,
                       role=call.role)
    return Attempt(task["task_id"], DECOMPOSE, call.number, call.model, call.job_id, call.text, False, call.error,
                   0.0, call.parent, call.messages, call.text, None, role=call.role)


def _is_code(task: Task) -> bool:
    return bool(task["check"]["kind"] == "python_tests")
