"""A task's public checks: what a solver may check its answer against without seeing the hidden
tests. For HumanEval, the examples in the prompt's docstring, turned into assertions; pure (the
assertions run in the sandbox like any check: experiment/checking.py).

Two styles are recognised, as HumanEval's prompts write them:

* doctest: `>>> f(1, 2)` followed by the expected value on the next line;
* an arrow: `f(1, 2) ➞ 3` (also `=>`, `==>`, `->`, `==`, `should return`), `true`/`false` read
  as Python's booleans.

An example counts when its left side is a call of the task's function with literal arguments and
its expected value is a Python literal; anything else (prose, names where values belong, an
expected exception, an arithmetic explanation after the arrow) is left out rather than guessed.
The examples are taken as the prompt states them, errors included: in two of HumanEval's prompts
(HumanEval/47 and /148) an example disagrees with the canonical solution.
"""
from __future__ import annotations

import ast
import re

ARROWS = re.compile(r"\s*(?:==>|=>|➞|->|==|should return)\s*")
FLOAT_TOLERANCE = 1e-6


def examples(prompt: str, entry_point: str) -> list[tuple[str, object]]:
    """(call, expected value) for every example of `entry_point` in `prompt` that can be checked."""
    found: list[tuple[str, object]] = []
    lines = prompt.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        if line.startswith(('"""', "'''")):         # a docstring that starts on the example's line
            line = line[3:].strip()
        if line.startswith(">>>"):
            call = line[3:].strip()
            expected = lines[i + 1].strip() if i + 1 < len(lines) else ""
            if expected.startswith(">>>"):
                continue
        else:
            parts = ARROWS.split(line, maxsplit=1)
            if len(parts) != 2:
                continue
            call, expected = parts[0].strip(), parts[1].strip()
        value = _literal(expected)
        if value is not _NOTHING and _calls(call, entry_point):
            found.append((call, value))
    return found


def public_tests(prompt: str, entry_point: str) -> str | None:
    """The examples as a HumanEval-style `check(candidate)`; None when the prompt has none."""
    asserts = []
    for call, value in examples(prompt, entry_point):
        tree = ast.parse(call, mode="eval")
        assert isinstance(tree.body, ast.Call)                  # _calls made sure
        tree.body.func = ast.Name("candidate", ast.Load())
        got = ast.unparse(tree)
        if isinstance(value, float):
            asserts.append(f"    assert abs({got} - {value!r}) <= {FLOAT_TOLERANCE} * max(1.0, abs({value!r}))")
        else:
            asserts.append(f"    assert {got} == {value!r}")
    if not asserts:
        return None
    return "def check(candidate):\n" + "\n".join(asserts) + "\n"


class _Nothing:
    pass


_NOTHING = _Nothing()


def _literal(text: str) -> object:
    text = text.strip().rstrip(".,;")
    if text in ("true", "false"):
        return text == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _NOTHING


def _calls(call: str, entry_point: str) -> bool:
    try:
        tree = ast.parse(call, mode="eval")
    except SyntaxError:
        return False
    body = tree.body
    if not (isinstance(body, ast.Call) and isinstance(body.func, ast.Name) and body.func.id == entry_point):
        return False
    try:                                 # arguments are values, not names (`f(a)` in prose is no example)
        for node in [*body.args, *(k.value for k in body.keywords)]:
            ast.literal_eval(node)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return True
