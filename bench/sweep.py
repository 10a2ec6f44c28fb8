"""Load-test sweeps: Locust, headless, over a grid of gunicorn workers x users x spawn rate.

    .venv/bin/python bench/sweep.py --workers 1 2 --users 8 16 32 --spawn-rates 8 --run-time 30s

Each run gets a fresh service (`gunicorn -c gunicorn.conf.py wsgi:app` with GUNICORN_WORKERS workers, on the
GPU simulator unless --backend says otherwise, a free port and a throwaway data folder), so no run inherits
another's queue; `locust -f loadtest/locustfile.py --headless` runs against it and writes its own HTML report,
`reports/{workers}_{users}_{rate}.html`. Then `reports/index.html` links every report and plots throughput
and p95 latency against users, one line per worker count (and spawn rate, when several), and
`reports/sweep.json` holds the figures. Settings of the service (SIM_TOKENS_PER_S, ...) come from the
environment as usual.
"""
from __future__ import annotations

import argparse
import base64
import csv
import html
import io
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import requests

from bench.common import ROOT, free_port, table  # noqa: E402

RUN_TIME = re.compile(r"^\d+$|^(\d+h)?(\d+m)?(\d+s)?$")


@dataclass
class RunResult:
    workers: int
    users: int
    spawn_rate: float
    report: str                 # the run's Locust report, relative to the index
    requests: int
    failures: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    submit_p95_ms: float        # POST /api/submit alone (the aggregate includes long polls)
    jobs_completed: int         # by the service during the run, as /api/stats counts them
    jobs_per_s: float


def run_name(workers: int, users: int, rate: float) -> str:
    return f"{workers}_{users}_{rate:g}"


class GunicornService:
    """The service as deployed (gunicorn.conf.py), on a free port and a throwaway data folder."""

    def __init__(self, workers: int, backend: str, directory: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        self.env = {**os.environ, "GUNICORN_WORKERS": str(workers), "BACKEND": backend, "HTTP_HOST": "127.0.0.1",
                    "HTTP_PORT": str(self.port), "DATA_DIR": str(directory / "data"), "STORE": "sqlite",
                    "MONGODB_URI": "", "LOG_FILE": str(directory / "mm.log"), "LOG_LEVEL": "WARNING"}
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> GunicornService:
        self.process = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"],
                                        cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=open(self.directory / "gunicorn.log", "wb"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited; see {self.directory / 'gunicorn.log'}")
            try:
                if requests.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the service did not become healthy; see {self.directory / 'gunicorn.log'}")

    def jobs_completed(self) -> int:
        return int(requests.get(self.url + "/api/stats", timeout=10).json()["jobs"].get("complete", 0))

    def __exit__(self, *exc: Any) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def locust_figures(stats_csv: Path) -> dict[str, dict[str, str]]:
    """Locust's summary rows by name ("Aggregated", "/api/submit", ...)."""
    with stats_csv.open(newline="") as f:
        return {row["Name"]: row for row in csv.DictReader(f)}


def _number(row: dict[str, str] | None, column: str) -> float:
    try:
        return float((row or {}).get(column) or "nan")
    except ValueError:
        return float("nan")


def run_one(workers: int, users: int, rate: float, run_time: str, backend: str, locustfile: Path,
            out: Path, scratch: Path) -> RunResult:
    name = run_name(workers, users, rate)
    directory = scratch / name
    directory.mkdir(parents=True)
    with GunicornService(workers, backend, directory) as service:
        completed_before = service.jobs_completed()
        started = time.monotonic()
        locust = subprocess.run(
            [sys.executable, "-m", "locust", "-f", str(locustfile), "--headless", "--only-summary",
             "-u", str(users), "-r", f"{rate:g}", "-t", run_time, "--stop-timeout", "5", "--host", service.url,
             "--html", str(out / f"{name}.html"), "--csv", str(directory / "locust"), "--loglevel", "WARNING"],
            cwd=ROOT, capture_output=True, text=True)
        elapsed = time.monotonic() - started
        completed = service.jobs_completed() - completed_before
    if not (directory / "locust_stats.csv").exists():
        raise RuntimeError(f"locust wrote no figures for {name} (exit {locust.returncode}):\n{locust.stderr[-2000:]}")
    rows = locust_figures(directory / "locust_stats.csv")
    total, submit = rows.get("Aggregated"), rows.get("/api/submit")
    return RunResult(workers, users, rate, f"{name}.html", int(_number(total, "Request Count")),
                     int(_number(total, "Failure Count")), round(_number(total, "Requests/s"), 2),
                     _number(total, "50%"), _number(total, "95%"), _number(submit, "95%"), completed,
                     round(completed / elapsed, 2) if elapsed > 0 else 0.0)


def _chart_png(results: list[RunResult], metric: str, ylabel: str, title: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    several_rates = len({r.spawn_rate for r in results}) > 1
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for key in sorted({(r.workers, r.spawn_rate) for r in results}):
        line = sorted((r for r in results if (r.workers, r.spawn_rate) == key), key=lambda r: r.users)
        label = f"{key[0]} worker{'s' if key[0] != 1 else ''}" + (f", spawn {key[1]:g}/s" if several_rates else "")
        ax.plot([r.users for r in line], [getattr(r, metric) for r in line], marker="o", label=label)
    ax.set_xticks(sorted({r.users for r in results}))
    ax.set_title(title)
    ax.set_xlabel("users")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def index_html(results: list[RunResult], run_time: str, backend: str) -> str:
    columns = ["workers", "users", "spawn_rate", "requests", "failures", "requests_per_s", "p50_ms", "p95_ms",
               "submit_p95_ms", "jobs_completed", "jobs_per_s"]
    head = "".join(f"<th>{c}</th>" for c in columns) + "<th>report</th>"
    rows = "".join("<tr>" + "".join(f"<td>{getattr(r, c):g}</td>" if isinstance(getattr(r, c), float)
                                    else f"<td>{getattr(r, c)}</td>" for c in columns)
                   + f'<td><a href="{html.escape(r.report)}">{html.escape(r.report)}</a></td></tr>' for r in results)
    charts = [("requests_per_s", "requests/s", "Throughput (all Locust requests)"),
              ("p95_ms", "ms", "p95 latency (all requests, long polls included)"),
              ("submit_p95_ms", "ms", "p95 latency of POST /api/submit")]
    figures = "".join(f'<h2>{html.escape(t)}</h2><img alt="{html.escape(t)}" src="data:image/png;base64,'
                      f'{_chart_png(results, m, y, t)}">' for m, y, t in charts)
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Model Manager load-test sweep</title>"
            "<style>body{font-family:sans-serif;margin:2em}td,th{border-bottom:1px solid #ddd;padding:4px 8px;"
            "text-align:right}</style></head><body><h1>Model Manager load-test sweep</h1>"
            f"<p>Locust ({html.escape(str(ROOT / 'loadtest/locustfile.py'))}), headless, {html.escape(run_time)} per run, "
            f"backend <code>{html.escape(backend)}</code>, a fresh gunicorn service per run.</p>"
            f"<table><tr>{head}</tr>{rows}</table>{figures}</body></html>")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="gunicorn workers (GUNICORN_WORKERS)")
    parser.add_argument("--users", type=int, nargs="+", default=[4, 16, 32], help="Locust users (-u)")
    parser.add_argument("--spawn-rates", "--rates", type=float, nargs="+", default=[8.0],
                        help="users started per second (-r)")
    parser.add_argument("--run-time", default="30s", help="Locust's -t for each run (30s, 2m, ...)")
    parser.add_argument("--backend", default="sim", choices=["sim", "embedded", "ollama", "auto"],
                        help="the service's runtime (BACKEND); the GPU simulator by default")
    parser.add_argument("--locustfile", type=Path, default=ROOT / "loadtest/locustfile.py")
    parser.add_argument("--out", type=Path, default=ROOT / "reports", help="where the reports go")
    args = parser.parse_args(argv)
    if not RUN_TIME.match(args.run_time) or args.run_time in ("", "0"):
        parser.error(f"--run-time {args.run_time!r}: a duration such as 20s, 2m or 1h30m")
    for name in ("workers", "users", "spawn_rates"):
        if any(v <= 0 for v in getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} must all be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory(prefix="mm-sweep-") as scratch:
        for workers in args.workers:
            for users in args.users:
                for rate in args.spawn_rates:
                    result = run_one(workers, users, rate, args.run_time, args.backend, args.locustfile,
                                     args.out, Path(scratch))
                    results.append(result)
                    print(f"{result.report}: {result.requests_per_s:g} req/s, p95 {result.p95_ms:g} ms, "
                          f"{result.failures} failures", flush=True)
    (args.out / "index.html").write_text(index_html(results, args.run_time, args.backend))
    (args.out / "sweep.json").write_text(json.dumps({"run_time": args.run_time, "backend": args.backend,
                                                     "runs": [asdict(r) for r in results]}, indent=1))
    print(table([[r.workers, r.users, r.spawn_rate, r.requests, r.failures, r.requests_per_s, r.p95_ms,
                  r.submit_p95_ms, r.jobs_per_s] for r in results],
                ["workers", "users", "rate", "requests", "failures", "req/s", "p95 ms", "submit p95 ms", "jobs/s"]))
    print(f"index: {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
