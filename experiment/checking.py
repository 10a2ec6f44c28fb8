"""Judge a model's answer to a task: what the model is asked, the program that checks code
(run in a sandbox, never here), and exact-answer checks. Pure, except `check_answer`, which
runs the sandbox it is given."""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass

from experiment.public_checks import public_tests
from experiment.sandbox import SandboxResult
from experiment.tasks import Task

_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)
_ANSWER_LINE = re.compile(r"answer\s*[:=]\s*(.+)", re.IGNORECASE)
_BOXED = re.compile(r"\\boxed\{([^{}]*)\}")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
_FEEDBACK_CHARS = 600


@dataclass(frozen=True)
class Verdict:
    passed: bool
    score: float               # 1.0 passed; below, how close (used to pick the best failed answer)
    feedback: str | None       # what to tell the model when it failed: the failing test or the checker's verdict
    error: str | None


def instructions(task: Task) -> str:
    """The user message for a first attempt."""
    if task["check"]["kind"] == "python_tests":
        return ("Complete the following Python function. Answer with the whole function, including "
                "its imports and signature, in one ```python code block.\n\n" + task["prompt"])
    return task["prompt"] + "\n\nThink briefly, then give the final answer on the last line as 'Answer: <answer>'."


def retry_instructions(task: Task, feedback: str) -> str:
    """The user message for a branch that starts from a failed attempt."""
    if task["check"]["kind"] == "python_tests":
        return ("That function fails its tests:\n" + feedback + "\n\nFix it. Answer with the whole corrected "
                "function in one ```python code block.")
    return f"That answer is wrong ({feedback}). Try again; end with 'Answer: <answer>'."


def extract_code(answer: str) -> str:
    """The code in a model's answer: the first fenced block holding a function, else the answer."""
    blocks = [b for b in _FENCE.findall(answer or "") if b.strip()]
    for block in blocks:
        if re.search(r"^\s*def\s", block, re.MULTILINE):
            return block
    return blocks[0] if blocks else (answer or "")


def completion_for(task: Task, answer: str) -> str:
    """What follows the task's prompt, as HumanEval scores it (`prompt + completion`)."""
    code = extract_code(answer)
    entry = task["check"]["entry_point"]
    if re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE):
        # the whole function: it replaces the prompt's stub, and the prompt's imports stay
        return "\n    pass\n\n" + code
    return code


def judge_run(result: SandboxResult) -> Verdict:
    if result.passed:
        return Verdict(True, 1.0, None, None)
    # a function that runs but answers wrongly is closer than one that does not run at all
    score = 0.5 if (result.error or "").startswith("AssertionError") else 0.25 if result.limit is None else 0.1
    feedback = _failing_lines(result.stderr) or result.error or "it failed"
    return Verdict(False, score, feedback[-_FEEDBACK_CHARS:], result.error)


def _failing_lines(stderr: str) -> str:
    """The end of the traceback: the failing test line and the error, and where the error came
    from inside the candidate's own code when it raised one; not the sandbox's frames."""
    blocks = [[line for line in block.splitlines() if line.strip() and "sandbox_guard.py" not in line]
              for block in stderr.split("Traceback (most recent call last):")]
    blocks = [block for block in blocks if block]
    if not blocks:
        return ""
    lines = blocks[-1][-4:]
    if len(blocks) > 1 and blocks[-2][-1] == blocks[-1][-1]:    # raised in the candidate's process
        lines = blocks[-2][-3:-1] + lines
    return "\n".join(lines)


def final_answer(text: str) -> str:
    """The answer a model gave: its last `Answer: ...` line, else its last `\\boxed{...}` (how
    models trained on maths mark one), else its last non-empty line."""
    lines = [line.strip() for line in (text or "").strip().splitlines() if line.strip()]
    for line in reversed(lines):
        found = _ANSWER_LINE.search(line)
        if found:
            return _unboxed(found.group(1)).strip().strip("*`'\". ")
    boxed = _BOXED.findall(text or "")
    if boxed:
        return boxed[-1].strip()
    return lines[-1].strip("*`'\". ") if lines else ""


def _unboxed(text: str) -> str:
    found = _BOXED.search(text)
    return found.group(1) if found else text


def judge_exact(task: Task, text: str) -> Verdict:
    expected = str(task["check"]["answer"])
    given = final_answer(text)
    if task["check"].get("answer_kind") == "number":
        numbers = _NUMBER.findall(given)
        value = _as_number(numbers[-1]) if numbers else None
        if value is not None and abs(value - float(expected)) < 1e-6:
            return Verdict(True, 1.0, None, None)
        why = f"expected a number, got {given!r}" if value is None else f"{given!r} is not the right number"
        return Verdict(False, 0.25 if value is not None else 0.0, why, why)
    if task["check"].get("answer_kind") == "fields":
        return _judge_fields(expected, given)
    if given.casefold() == expected.casefold():
        return Verdict(True, 1.0, None, None)
    why = f"{given!r} is not the right answer"
    return Verdict(False, 0.25 if expected.casefold() in text.casefold() else 0.0, why, why)


def _judge_fields(expected: str, given: str) -> Verdict:
    """Values separated by `;`, each compared on its own (case and surrounding spaces aside)."""
    want = [f.strip().casefold() for f in expected.split(";")]
    got = [f.strip().strip("*`'\"").casefold() for f in given.split(";")]
    right = sum(1 for w, g in zip(want, got, strict=False) if _same_field(w, g))
    if len(got) == len(want) and right == len(want):
        return Verdict(True, 1.0, None, None)
    why = (f"{given!r} has {len(got)} fields, not {len(want)}" if len(got) != len(want)
           else f"{given!r}: {len(want) - right} of {len(want)} fields are wrong")
    return Verdict(False, 0.5 * right / len(want), why, why)


def _same_field(expected: str, given: str) -> bool:
    """A field that is a number is compared as one (`750` is `750 g` and `750.0`), the others as text."""
    number = _as_number(expected) if _NUMBER.fullmatch(expected) else None
    if number is None:
        return expected == given
    found = _NUMBER.findall(given)
    value = _as_number(found[-1]) if len(found) == 1 else None
    return value is not None and abs(value - number) < 1e-6


def _as_number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def check_completion(task: Task, completion: str, sandbox) -> Verdict:
    """Judge code that follows a task's prompt (HumanEval's `prompt + completion`) in `sandbox`."""
    check = task["check"]
    # the tests run in their own process, with the prompt's helpers (HumanEval's tests use
    # some, e.g. poly), against the program as the candidate's process defines it
    return judge_run(sandbox.check(task["prompt"] + completion, f"{task['prompt']}\n\n{check['test']}\n",
                                   check["entry_point"]))


def check_answer(task: Task, answer: str, sandbox) -> tuple[Verdict, str]:
    """(verdict, completion): judge a model's answer, running code only in `sandbox`."""
    if task["check"]["kind"] == "python_tests":
        completion = completion_for(task, answer)
        return check_completion(task, completion, sandbox), completion
    return judge_exact(task, answer), final_answer(answer)


def check_public(task: Task, answer: str, sandbox) -> tuple[Verdict, str]:
    """Judge an answer by the task's public checks only (sample-select's choice): the prompt's
    examples (experiment/public_checks.py), run in `sandbox`; where the prompt has none, that the
    code parses and defines the function; for an exact-answer task, that an answer was given."""
    if task["check"]["kind"] == "python_tests":
        tests = public_tests(task["prompt"], task["check"]["entry_point"])
        if tests is not None:
            return check_answer({**task, "check": {**task["check"], "test": tests}}, answer, sandbox)
        completion = completion_for(task, answer)
        try:
            ast.parse(task["prompt"] + completion)
        except SyntaxError as exc:
            return Verdict(False, 0.0, f"the code does not parse: {exc}", "SyntaxError"), completion
        return Verdict(True, 1.0, None, None), completion
    given = final_answer(answer)
    return Verdict(bool(given), 1.0 if given else 0.0, None, None if given else "no answer"), given
