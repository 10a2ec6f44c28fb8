"""One large model against several small models working in branches, on the same tasks.

    .venv/bin/python compare.py --tasks humaneval:20 --large qwen2.5-coder:1.5b \\
        --small smollm2:135m,qwen2.5-coder:0.5b --out reports/
    .venv/bin/python compare.py ... --strategies large,branched,sample-select --samples 4
    .venv/bin/python compare.py ... --experiment NAME --resume       # go on after an interruption

Every model call is a job through the service's queue and scheduler (the one at `--url`, or an
embedded one this command starts), tagged with the experiment, strategy, task and branch.
Generated code is judged in a sandbox (experiment/sandbox.py). The service derives each task's
costs from its ledger; this command writes `<out>/<experiment>/summary.json` (with intervals
and paired tests: docs/experiments.md), `results.jsonl` and `report.html`, and prints the table.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from experiment import EXPERIMENT_NAME, EXPERIMENT_NAME_RULE
from experiment.checking import check_answer, check_public
from experiment.report import markdown_table, summarize, write_outputs
from experiment.sandbox import Limits, ProcessSandbox
from experiment.service_client import CONNECT_PATIENCE_S, ServiceClient, ServiceError
from experiment.stats import wilson
from experiment.strategies import BRANCHED, LARGE, SAMPLE_SELECT, STRATEGIES, Outcome, Runner, solved_with
from experiment.tasks import TaskSpecError, select_tasks

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="humaneval:20",
                   help="humaneval:N (the first N), humaneval:ID,ID,... or builtin:N; join several with +")
    p.add_argument("--large", default="qwen2.5-coder:1.5b", help="the large model (strategy `large`)")
    p.add_argument("--small", default="smollm2:135m,qwen2.5-coder:0.5b",
                   help="comma-separated small models (strategy `branched`)")
    p.add_argument("--branches", type=int, default=4, help="most attempts per task in the branched strategy")
    p.add_argument("--samples", type=int, default=4,
                   help="sample-select: answers per task from the small models (every k up to it is reported)")
    p.add_argument("--strategies", default=f"{LARGE},{BRANCHED}",
                   help=f"which to run, in this order, of {', '.join(STRATEGIES)} (default: {LARGE},{BRANCHED})")
    p.add_argument("--out", type=Path, default=Path("reports"), help="reports go to OUT/EXPERIMENT/")
    p.add_argument("--resume", action="store_true",
                   help="go on with an interrupted run of --experiment: tasks it recorded are not run again")
    p.add_argument("--experiment", default=None, help="name (default compare-YYYYmmdd-HHMMSS)")
    p.add_argument("--url", default=None, help="a running Model Manager; default: start an embedded one")
    p.add_argument("--api-key", default=os.environ.get("MM_API_KEY"), help="key for --url (or MM_API_KEY)")
    p.add_argument("--max-tokens", type=int, default=300, help="num_predict for every call")
    p.add_argument("--timeout-s", type=float, default=None, help="each job's timeout (default: the service's)")
    p.add_argument("--connect-patience-s", type=float, default=CONNECT_PATIENCE_S,
                   help="how long to retry a service that does not answer (it may be restarting)")
    p.add_argument("--sandbox", choices=("process", "docker"), default="process",
                   help="where generated code runs (docker needs an engine that answers)")
    p.add_argument("--model-cache", type=Path, default=None,
                   help="embedded service: where joined model files are kept (default .cache/models if present)")
    args = p.parse_args(argv)
    args.small_models = [m.strip() for m in args.small.split(",") if m.strip()]
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = set(args.strategy_list) - set(STRATEGIES)
    if unknown:
        p.error(f"--strategies takes {', '.join(STRATEGIES)}, not {', '.join(sorted(unknown))}")
    if BRANCHED in args.strategy_list and not args.small_models:
        p.error("--small names no model")
    if args.branches < 1:
        p.error("--branches must be at least 1")
    if args.samples < 1:
        p.error("--samples must be at least 1")
    if SAMPLE_SELECT in args.strategy_list and not args.small_models:
        p.error("--small names no model")
    if args.resume and not args.experiment:
        p.error("--resume goes on with a named run: give its --experiment")
    args.experiment = args.experiment or time.strftime("compare-%Y%m%d-%H%M%S")
    if not EXPERIMENT_NAME.match(args.experiment):
        p.error(f"--experiment takes {EXPERIMENT_NAME_RULE}, not {args.experiment!r}")
    args.command = "python compare.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    return args


def make_sandbox(kind: str):
    if kind == "docker":
        from experiment.sandbox_docker import DockerSandbox
        return DockerSandbox(Limits())
    return ProcessSandbox(Limits())


@contextlib.contextmanager
def embedded_service(directory: Path, model_cache: Path | None) -> Iterator[str]:
    """`main.py --backend embedded` on a free port, its store and log in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "LOG_FILE": str(directory / "model_manager.log"), "STORE": "sqlite", "MONGODB_URI": ""}
    cache = model_cache or (ROOT / ".cache" / "models")
    if model_cache or cache.is_dir():
        env["EMBEDDED_MODEL_CACHE"] = str(cache)
    log = open(directory / "service.out", "wb")
    proc = subprocess.Popen([sys.executable, str(ROOT / "main.py"), "--backend", "embedded", "--http-port", str(port),
                             "--data-dir", str(directory / "data")], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the embedded service exited ({proc.returncode}); see {directory / 'service.out'}")
            with contextlib.suppress(requests.RequestException):
                if requests.get(url + "/api/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"the embedded service did not answer in 120 s; see {directory / 'service.out'}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_experiment(args: argparse.Namespace, url: str, tasks: list[dict], sandbox) -> dict:
    client = ServiceClient(url, args.api_key, {"temperature": 0, "num_predict": args.max_tokens}, args.timeout_s,
                           connect_patience_s=args.connect_patience_s)
    client.put_tasks(tasks)
    runner = Runner(client, lambda task, answer: check_answer(task, answer, sandbox), args.experiment)
    out_dir = args.out / args.experiment
    out_dir.mkdir(parents=True, exist_ok=True)
    done, attempts = resumed(client, args.experiment, out_dir / ATTEMPTS) if args.resume else ({}, [])
    log = open(out_dir / ATTEMPTS, "w")       # each task's attempts are written as soon as it is recorded
    for attempt in attempts:
        log.write(json.dumps(attempt) + "\n")
    results: list[dict[str, Any]] = []
    for strategy in args.strategy_list:
        bar = tqdm(tasks, desc=f"{strategy:>8}", unit="task")
        for task in bar:
            earlier = done.get((task["task_id"], strategy))
            if earlier is not None:          # --resume: recorded by an earlier run, no model call made again
                results.append(earlier)
                continue
            outcome: Outcome
            if strategy == LARGE:
                outcome = runner.large(task, args.large)
            elif strategy == SAMPLE_SELECT:
                outcome = runner.sample_select(task, args.small_models, args.samples,
                                               lambda task, answer: check_public(task, answer, sandbox))
            else:
                outcome = runner.branched(task, args.small_models, args.branches)
            results.append(client.record_result(args.experiment, {
                "task_id": task["task_id"], "strategy": strategy, "solved": outcome.solved,
                "attempts": len(outcome.attempts), "job_ids": outcome.job_ids, "eval_s": round(outcome.eval_s, 4),
                "client_wall_s": round(outcome.wall_s, 4)}))
            for attempt in (a.record() for a in outcome.attempts):
                attempts.append(attempt)
                log.write(json.dumps(attempt) + "\n")
            log.flush()
            bar.set_postfix(solved=sum(1 for r in results if r["strategy"] == strategy and r["solved"]))
    log.close()
    summary = summarize(args.experiment, [t["task_id"] for t in tasks], results)
    if SAMPLE_SELECT in args.strategy_list:
        summary["sample_select_by_k"] = by_samples(attempts, [t["task_id"] for t in tasks], args.samples)
    paths = write_outputs(args.out / args.experiment, summary, attempts, args.command)
    print(markdown_table(summary))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return summary


ATTEMPTS = "results.jsonl"


def by_samples(attempts: list[dict[str, Any]], task_ids: list[str], samples: int) -> dict[str, Any]:
    """Sample-select with its first k samples, for every k up to `samples`, read off one run."""
    per_task = {t: [a for a in attempts if a["strategy"] == SAMPLE_SELECT and a["task_id"] == t] for t in task_ids}
    out = {}
    for k in range(1, samples + 1):
        solved = sum(1 for sampled in per_task.values() if sampled and solved_with(sampled, k))
        ran = sum(1 for sampled in per_task.values() if sampled)
        out[str(k)] = {"solved": solved, "tasks": ran, "pass_rate": round(solved / ran, 4) if ran else 0.0,
                       "pass_rate_ci95": wilson(solved, ran)}
    return out


def resumed(client: ServiceClient, experiment: str, attempts_path: Path
            ) -> tuple[dict[tuple[str, str], dict[str, Any]], list[dict[str, Any]]]:
    """What an earlier run of `experiment` recorded: its results by (task, strategy), as the
    service keeps them, and the attempts of those results from its results.jsonl (the attempts
    of a task it did not finish are dropped: that task runs again)."""
    done: dict[tuple[str, str], dict[str, Any]] = {}
    for result in client.results(experiment):
        done.setdefault((result["task_id"], result["strategy"]), result)
    attempts = []
    if attempts_path.exists():
        for line in attempts_path.read_text().splitlines():
            if line.strip():
                attempt = json.loads(line)
                if (attempt.get("task_id"), attempt.get("strategy")) in done:
                    attempts.append(attempt)
    return done, attempts


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        tasks = select_tasks(args.tasks)
    except TaskSpecError as exc:
        print(f"compare.py: {exc}", file=sys.stderr)
        return 2
    try:
        sandbox = make_sandbox(args.sandbox)
    except Exception as exc:              # the docker SDK's errors: no engine, no permission
        print(f"compare.py: the {args.sandbox} sandbox cannot run here: {exc}", file=sys.stderr)
        return 2
    try:
        if args.url:
            run_experiment(args, args.url, tasks, sandbox)
            return 0
        with embedded_service(args.out / args.experiment / "service", args.model_cache) as url:
            run_experiment(args, url, tasks, sandbox)
        return 0
    except (ServiceError, requests.RequestException) as exc:    # the service refused, or went away
        print(f"compare.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
