"""One large model against several small models working in branches, on the same tasks.

    .venv/bin/python compare.py --tasks humaneval:20 --large qwen2.5-coder:1.5b \\
        --small smollm2:135m,qwen2.5-coder:0.5b --out reports/
    .venv/bin/python compare.py ... --strategies large,branched,sample-select,decompose --samples 4
    .venv/bin/python compare.py ... --experiment NAME --resume       # go on after an interruption
    .venv/bin/python compare.py ... --repeat 3 --temperature 0.7      # three runs, other seeds: the spread
    .venv/bin/python compare.py --merge reports/A,reports/B --experiment AB   # two runs' outputs as one

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
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests
from tqdm import tqdm

from experiment import EXPERIMENT_NAME, EXPERIMENT_NAME_RULE
from experiment.checking import check_answer, check_public
from experiment.derived import derive, spread
from experiment.merge import MergeError, check_run, merge
from experiment.report import markdown_table, summarize, write_outputs, write_whole
from experiment.sandbox import Limits, ProcessSandbox
from experiment.service_client import CONNECT_PATIENCE_S, ServiceClient, ServiceError
from experiment.strategies import (
    BRANCHED,
    DECOMPOSE,
    LARGE,
    LARGE_SAMPLE_SELECT,
    SAMPLE_SELECT,
    SAMPLING,
    STRATEGIES,
    Outcome,
    Runner,
)
from experiment.tasks import TaskSpecError, builtin_tasks, humaneval_tasks, select_tasks

ROOT = Path(__file__).resolve().parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="humaneval:20",
                   help="humaneval:N (the first N), humaneval:ID,ID,..., builtin:N, builtin:ID,... or divisible:N "
                        "(the divisible built-in tasks); join several with +")
    p.add_argument("--large", default="qwen2.5-coder:1.5b", help="the large model (strategy `large`)")
    p.add_argument("--small", default="smollm2:135m,qwen2.5-coder:0.5b",
                   help="comma-separated small models (strategy `branched`)")
    p.add_argument("--branches", type=int, default=4, help="most attempts per task in the branched strategy")
    p.add_argument("--samples", type=int, default=4,
                   help="sample-select: answers per task from the small models (every k up to it is reported); "
                        "large-sample-select: as many from the large model")
    p.add_argument("--strategies", default=f"{LARGE},{BRANCHED}",
                   help=f"which to run, in this order, of {', '.join(STRATEGIES)} (default: {LARGE},{BRANCHED})")
    p.add_argument("--out", type=Path, default=Path("reports"), help="reports go to OUT/EXPERIMENT/")
    p.add_argument("--resume", action="store_true",
                   help="go on with an interrupted run of --experiment: tasks it recorded are not run again")
    p.add_argument("--experiment", default=None, help="name (default compare-YYYYmmdd-HHMMSS)")
    p.add_argument("--url", default=None, help="a running Model Manager; default: start an embedded one")
    p.add_argument("--api-key", default=os.environ.get("MM_API_KEY"), help="key for --url (or MM_API_KEY)")
    p.add_argument("--max-tokens", type=int, default=300, help="num_predict for every call")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="every call's temperature but the samples' (which sample at 0.8); 0: greedy")
    p.add_argument("--repeat", type=int, default=1,
                   help="run everything N times with other seeds and report the spread of pass rates "
                        "(repeat r>1 is experiment NAME-rR, under OUT/NAME/repeat-R/)")
    p.add_argument("--timeout-s", type=float, default=None, help="each job's timeout (default: the service's)")
    p.add_argument("--connect-patience-s", type=float, default=CONNECT_PATIENCE_S,
                   help="how long to retry a service that does not answer (it may be restarting)")
    p.add_argument("--sandbox", choices=("process", "docker"), default="process",
                   help="where generated code runs (docker needs an engine that answers)")
    p.add_argument("--merge", default=None, metavar="DIR,DIR,...",
                   help="run nothing: join the outputs of earlier runs (their folders, other strategies or other "
                        "tasks) into OUT/EXPERIMENT/, paired tests and frontier over all of them")
    p.add_argument("--model-cache", type=Path, default=None,
                   help="embedded service: where joined model files are kept (default .cache/models if present)")
    args = p.parse_args(argv)
    args.small_models = [m.strip() for m in args.small.split(",") if m.strip()]
    args.strategy_list = [s.strip() for s in args.strategies.split(",") if s.strip()]
    unknown = set(args.strategy_list) - set(STRATEGIES)
    if unknown:
        p.error(f"--strategies takes {', '.join(STRATEGIES)}, not {', '.join(sorted(unknown))}")
    if {BRANCHED, SAMPLE_SELECT, DECOMPOSE} & set(args.strategy_list) and not args.small_models:
        p.error("--small names no model")
    if args.repeat < 1:
        p.error("--repeat must be at least 1")
    if not 0 <= args.temperature <= 2:
        p.error("--temperature must be between 0 and 2")
    if args.branches < 1:
        p.error("--branches must be at least 1")
    if args.samples < 1:
        p.error("--samples must be at least 1")
    if args.resume and not args.experiment:
        p.error("--resume goes on with a named run: give its --experiment")
    args.merge_dirs = [Path(d.strip()) for d in (args.merge or "").split(",") if d.strip()]
    if args.merge is not None and (len(args.merge_dirs) < 2 or not args.experiment or args.resume):
        p.error("--merge takes two run folders or more, and an --experiment to write them to (no --resume)")
    args.experiment = args.experiment or time.strftime("compare-%Y%m%d-%H%M%S")
    longest = args.experiment if args.repeat == 1 else f"{args.experiment}-r{args.repeat}"   # repeats' names too
    if not EXPERIMENT_NAME.match(args.experiment) or not EXPERIMENT_NAME.match(longest):
        p.error(f"--experiment takes {EXPERIMENT_NAME_RULE}, not {longest!r}")
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


def run_experiment(args: argparse.Namespace, url: str, tasks: list[dict], sandbox, repeat: int = 1) -> dict:
    """One run of every strategy on every task (repeat `repeat` of `--repeat`: other seeds, its
    own experiment name and folder); writes its outputs and returns its summary."""
    experiment = args.experiment if repeat == 1 else f"{args.experiment}-r{repeat}"
    out_dir = args.out / args.experiment / ("" if repeat == 1 else f"repeat-{repeat}")
    options: dict[str, Any] = {"temperature": args.temperature, "num_predict": args.max_tokens}
    if repeat > 1:
        options["seed"] = repeat - 1
    client = ServiceClient(url, args.api_key, options, args.timeout_s, connect_patience_s=args.connect_patience_s)
    client.put_tasks(tasks)
    runner = Runner(client, lambda task, answer: check_answer(task, answer, sandbox), experiment,
                    seed_base=(repeat - 1) * args.samples)
    out_dir.mkdir(parents=True, exist_ok=True)
    done, attempts = (resumed(client, experiment, out_dir / ATTEMPTS, args.strategy_list) if args.resume
                      else ({}, []))
    # the attempts kept from an earlier run are written whole before anything else (a run killed
    # right after it resumed must not leave a file cut inside them), then each task's attempts
    # are added as soon as it is recorded
    write_whole(out_dir / ATTEMPTS, "".join(json.dumps(attempt) + "\n" for attempt in attempts).encode())
    log = open(out_dir / ATTEMPTS, "a")
    results: list[dict[str, Any]] = []
    try:
        for strategy in args.strategy_list:
            bar = tqdm(tasks, desc=f"{strategy:>8}", unit="task")
            for task in bar:
                earlier = done.get((task["task_id"], strategy))
                if earlier is not None:          # --resume: recorded by an earlier run, no model call made again
                    results.append(earlier)
                    continue
                outcome = run_strategy(runner, args, strategy, task, sandbox)
                with TERMINATION.held():      # a task recorded has its attempts written, whatever comes
                    results.append(client.record_result(experiment, {
                        "task_id": task["task_id"], "strategy": strategy, "solved": outcome.solved,
                        "attempts": len(outcome.attempts), "job_ids": outcome.job_ids,
                        "eval_s": round(outcome.eval_s, 4), "client_wall_s": round(outcome.wall_s, 4)}))
                    for attempt in (a.record() for a in outcome.attempts):
                        attempts.append(attempt)
                        log.write(json.dumps(attempt) + "\n")
                    log.flush()
                bar.set_postfix(solved=sum(1 for r in results if r["strategy"] == strategy and r["solved"]))
    except BaseException as exc:   # interrupted (Ctrl-C, SIGTERM: see main) or failed: leave no job behind
        with TERMINATION.held(then_stop=False):
            cancelled = client.cancel_unanswered()
        stopped = "interrupted" if isinstance(exc, (KeyboardInterrupt, SystemExit)) else "stopped by an error"
        print(f"compare.py: {stopped}; {cancelled} unanswered job(s) cancelled; --resume goes on "
              "from the tasks recorded", file=sys.stderr)
        raise
    finally:
        log.close()
    summary = derive(summarize(experiment, [t["task_id"] for t in tasks], results), results, attempts, tasks,
                     [s for s in args.strategy_list if s in SAMPLING], args.samples, client.job_entries)
    paths = write_outputs(out_dir, summary, attempts, args.command)
    print(markdown_table(summary))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return summary


def run_strategy(runner: Runner, args: argparse.Namespace, strategy: str, task: dict, sandbox) -> Outcome:
    def public(task: dict, answer: str):
        return check_public(task, answer, sandbox)
    if strategy == LARGE:
        return runner.large(task, args.large)
    if strategy == SAMPLE_SELECT:
        return runner.sample_select(task, args.small_models, args.samples, public)
    if strategy == LARGE_SAMPLE_SELECT:
        return runner.sample_select(task, [args.large], args.samples, public, strategy=LARGE_SAMPLE_SELECT)
    if strategy == DECOMPOSE:
        return runner.decompose(task, args.small_models)
    return runner.branched(task, args.small_models, args.branches)


def run_all(args: argparse.Namespace, url: str, tasks: list[dict], sandbox) -> dict:
    """`--repeat` runs; with more than one, the first run's summary.json gets `repeats`: each
    strategy's pass rate in every run and their spread."""
    summaries = [run_experiment(args, url, tasks, sandbox, r) for r in range(1, args.repeat + 1)]
    first = summaries[0]
    if args.repeat > 1:
        first["repeats"] = {"runs": args.repeat, "experiments": [s["experiment"] for s in summaries],
                            "strategies": spread({name: [s["strategies"][name]["pass_rate"] for s in summaries
                                                         if name in s["strategies"]]
                                                  for name in first["strategies"]})}
        path = args.out / args.experiment / "summary.json"
        path.write_text(json.dumps({**first, "command": args.command}, indent=2) + "\n")
        for name, row in first["repeats"]["strategies"].items():
            print(f"{name}: pass rate over {args.repeat} runs {row['mean']:.0%} (from {row['min']:.0%} "
                  f"to {row['max']:.0%}, sd {row['sd']:.3f})")
    return first


ATTEMPTS = "results.jsonl"


def resumed(client: ServiceClient, experiment: str, attempts_path: Path, strategies: list[str]
            ) -> tuple[dict[tuple[str, str], dict[str, Any]], list[dict[str, Any]]]:
    """What an earlier run of `experiment` recorded: its results by (task, strategy), as the
    service keeps them, and the attempts of those results from its results.jsonl (the attempts
    of a task it did not finish are dropped: that task runs again)."""
    done: dict[tuple[str, str], dict[str, Any]] = {}
    for strategy in strategies:          # one listing each: a listing holds at most 1,000
        for result in client.results(experiment, strategy):
            done.setdefault((result["task_id"], result["strategy"]), result)
    attempts = []
    if attempts_path.exists():
        for line in attempts_path.read_text().splitlines():
            if line.strip():
                attempt = json.loads(line)
                if (attempt.get("task_id"), attempt.get("strategy")) in done:
                    attempts.append(attempt)
    return done, attempts


def merge_runs(args: argparse.Namespace) -> int:
    """--merge: the runs' summary.json and results.jsonl joined into OUT/EXPERIMENT/."""
    out_dir = args.out / args.experiment
    if any(d.resolve() == out_dir.resolve() for d in args.merge_dirs):
        print(f"compare.py: {out_dir} is one of the runs merged: write the merge to another --experiment",
              file=sys.stderr)
        return 2
    try:
        if "merged_from" not in json.loads((out_dir / "summary.json").read_text()):
            print(f"compare.py: {out_dir} holds a run: write the merge to another --experiment", file=sys.stderr)
            return 2
    except (OSError, ValueError, TypeError):
        pass                              # nothing there yet (or no run's summary): the merge may go there
    runs, attempts = [], []
    for run_dir in args.merge_dirs:
        try:
            run = json.loads((run_dir / "summary.json").read_text())
            mine = [json.loads(line) for line in (run_dir / ATTEMPTS).read_text().splitlines() if line.strip()]
            check_run(run, mine)
        except (OSError, ValueError) as exc:          # MergeError is a ValueError, as JSON's errors are
            print(f"compare.py: {run_dir} holds no finished run: {exc}", file=sys.stderr)
            return 2
        runs.append(run)
        attempts += mine
    try:
        summary = merge(args.experiment, runs, humaneval_tasks() + builtin_tasks())
    except MergeError as exc:
        print(f"compare.py: {exc}", file=sys.stderr)
        return 2
    paths = write_outputs(out_dir, summary, attempts, args.command)
    print(markdown_table(summary))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge is not None:
        return merge_runs(args)
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
    # SIGTERM (kill, a session's end) unwinds like Ctrl-C: the run's unanswered jobs are cancelled
    # and the embedded service it started is stopped, instead of both left behind
    in_main = threading.current_thread() is threading.main_thread()     # where signals are handled
    previous = ({signum: signal.signal(signum, TERMINATION.handle) for signum in (signal.SIGINT, signal.SIGTERM)}
                if in_main else {})
    try:
        if args.url:
            run_all(args, args.url, tasks, sandbox)
            return 0
        with embedded_service(args.out / args.experiment / "service", args.model_cache) as url:
            run_all(args, url, tasks, sandbox)
        return 0
    except (ServiceError, requests.RequestException) as exc:    # the service refused, or went away
        print(f"compare.py: {exc}", file=sys.stderr)
        return 1
    finally:
        for signum, handler in previous.items():
            if handler is not None:           # None: a handler not set from Python, left as it is
                signal.signal(signum, handler)


class Termination:
    """Ctrl-C and SIGTERM stop a run (KeyboardInterrupt, SystemExit 143), but not inside `held()`:
    there the signal waits until the section ends (a task's result recorded and its attempts
    written, or the run's jobs being cancelled)."""

    def __init__(self) -> None:
        self.holding = False
        self.pending: int | None = None

    def handle(self, signum: int, frame: object) -> None:
        if self.holding:
            self.pending = signum
            return
        self.stop(signum)

    @staticmethod
    def stop(signum: int) -> None:
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)

    @contextlib.contextmanager
    def held(self, then_stop: bool = True) -> Iterator[None]:
        """No stop inside; one that came meanwhile stops the run at the end (`then_stop`)."""
        outer = self.holding
        self.holding = True
        try:
            yield
        finally:
            self.holding = outer
        if then_stop and not outer and self.pending is not None:
            signum, self.pending = self.pending, None
            self.stop(signum)


TERMINATION = Termination()


if __name__ == "__main__":
    sys.exit(main())
