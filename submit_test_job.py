"""Submit test jobs to Model Manager and report what happened.

    python submit_test_job.py                       # one job, wait for its answer
    python submit_test_job.py --batch               # four predefined jobs
    python submit_test_job.py --random 200          # 200 random jobs over the models that fit
    python submit_test_job.py --spam 10000 --concurrency 32   # submit only, as fast as possible

Ends with a summary: submitted, completed, failed, rejected by HTTP status, latency percentiles
(submission and end to end), throughput. `--json` prints the summary as one JSON object (last
line); `--html report.html` writes a report with a latency histogram. Exit status 1 when a job
failed, was lost, or got a 5xx.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import requests
from tqdm import tqdm

from telemetry.percentiles import percentile

BATCH = (
    {"prompt": "Why is the sky blue? Answer in one sentence.", "priority": "high"},
    {"prompt": "Write a haiku about GPUs.", "priority": "normal"},
    {"kind": "chat", "messages": [{"role": "user", "content": "Name three prime numbers."}], "priority": "normal"},
    {"prompt": "Summarise what a scheduler does in ten words.", "priority": "low"},
)
PROMPTS = ("Explain recursion briefly.", "What is 17 * 23?", "Write a limerick about queues.",
           "List three uses of a hash map.", "Translate 'good morning' into French.",
           "def fibonacci(n):", "Why do models need memory?", "Give a one-line summary of TCP.")
FINISHED = {"complete", "failed", "cancelled"}


@dataclass
class Outcome:
    submitted: list[str] = field(default_factory=list)
    submit_latency: list[float] = field(default_factory=list)
    rejected: Counter = field(default_factory=Counter)       # HTTP status -> count
    errors: Counter = field(default_factory=Counter)         # client-side errors (connection...)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    e2e_latency: list[float] = field(default_factory=list)   # client-observed submit -> done
    lost: list[str] = field(default_factory=list)
    started: float = 0.0
    ended: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Client:
    def __init__(self, url: str):
        self.url = url.rstrip("/")
        self._local = threading.local()

    @property
    def session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            session.trust_env = False        # no proxy lookup per request: it dominates at high rates
        return session

    def get(self, path: str, **kw: Any) -> requests.Response:
        return self.session.get(self.url + path, timeout=kw.pop("timeout", 60), **kw)

    def post(self, path: str, body: dict[str, Any], **kw: Any) -> requests.Response:
        return self.session.post(self.url + path, json=body, timeout=kw.pop("timeout", 60), **kw)


def runnable_models(client: Client) -> list[dict[str, Any]]:
    """Models the service can run here: on the runtime (or not yet known) and fitting."""
    rows = client.get("/api/models").json().get("models", [])
    return [m for m in rows if m.get("on_runtime") is not False and m.get("fits", True)]


def default_model(client: Client) -> str:
    rows = [m for m in runnable_models(client) if "completion" in m.get("capabilities", [])]
    if not rows:
        sys.exit("the service lists no model that can run here; pass --model")
    loaded = [m for m in rows if m.get("loaded")]
    return min(loaded or rows, key=lambda m: m["need_bytes"])["name"]


def build_jobs(args: argparse.Namespace, client: Client) -> list[dict[str, Any]]:
    options = {"num_predict": args.max_tokens} if args.max_tokens else {}
    if args.batch:
        model = args.model or default_model(client)
        return [{"model": model, **job, "options": options} for job in BATCH]
    if args.random or args.spam:
        count = args.random or args.spam
        rows = runnable_models(client) if not args.model else [{"name": args.model, "capabilities": ["completion"]}]
        if not rows:
            sys.exit("the service lists no model that can run here; pass --model")
        rng = random.Random(args.seed)
        jobs = []
        for i in range(count):
            m = rng.choice(rows)
            priority = args.priority or rng.choices(["high", "normal", "low"], weights=[2, 5, 3])[0]
            job: dict[str, Any] = {"model": m["name"], "priority": priority,
                                   "metadata": {"source": "submit_test_job", "index": i}}
            if "completion" not in m.get("capabilities", ["completion"]):
                job.update(kind="embed", input=rng.choice(PROMPTS))
            else:
                job.update(prompt=rng.choice(PROMPTS), options=options)
            jobs.append(job)
        return jobs
    return [{"model": args.model or default_model(client), "priority": args.priority or "normal",
             "prompt": args.prompt, "options": options}]


def submit_all(client: Client, jobs: list[dict[str, Any]], args: argparse.Namespace, out: Outcome,
               bar: tqdm | None) -> None:
    def submit(job: dict[str, Any]) -> None:
        t0 = time.perf_counter()
        try:
            r = client.post("/api/submit", job, timeout=args.request_timeout)
        except requests.RequestException as exc:
            with out.lock:
                out.errors[type(exc).__name__] += 1
            return
        elapsed = time.perf_counter() - t0
        with out.lock:
            out.submit_latency.append(elapsed)
            if r.status_code == 202:
                out.submitted.append(r.json()["job_id"])
                out.final.setdefault(r.json()["job_id"], {"_submitted": time.time()})
            else:
                out.rejected[str(r.status_code)] += 1
        if bar is not None:
            bar.update(1)

    with ThreadPoolExecutor(args.concurrency) as pool:
        futures = []
        for job in jobs:
            futures.append(pool.submit(submit, job))
            if args.delay:
                time.sleep(args.delay)
        for f in as_completed(futures):
            f.result()


def wait_all(client: Client, out: Outcome, args: argparse.Namespace, bar: tqdm | None) -> None:
    deadline = time.time() + args.wait_timeout

    def wait(job_id: str) -> None:
        submitted = out.final[job_id]["_submitted"]
        while time.time() < deadline:
            try:
                r = client.get(f"/api/job/{job_id}", params={"wait": min(30, max(deadline - time.time(), 0.1))},
                               timeout=40)
            except requests.RequestException as exc:
                with out.lock:
                    out.errors[type(exc).__name__] += 1
                time.sleep(0.5)
                continue
            if r.status_code == 404:
                with out.lock:
                    out.lost.append(job_id)
                break
            if r.status_code >= 500:
                with out.lock:
                    out.rejected[str(r.status_code)] += 1
                time.sleep(0.5)
                continue
            job = r.json()
            if job["status"] in FINISHED:
                with out.lock:
                    out.final[job_id] = job
                    out.e2e_latency.append(time.time() - submitted)
                break
        if bar is not None:
            bar.update(1)

    with ThreadPoolExecutor(max(args.concurrency, 8)) as pool:
        for f in as_completed([pool.submit(wait, j) for j in list(out.submitted)]):
            f.result()


def check_present(client: Client, out: Outcome, concurrency: int) -> None:
    """--spam / --no-check: make sure every accepted job can still be found (none lost)."""
    def check(job_id: str) -> None:
        try:
            r = client.get(f"/api/job/{job_id}")
        except requests.RequestException as exc:
            with out.lock:
                out.errors[type(exc).__name__] += 1
            return
        with out.lock:
            if r.status_code == 404:
                out.lost.append(job_id)
            elif r.status_code >= 500:
                out.rejected[str(r.status_code)] += 1
            else:
                out.final[job_id] = r.json()

    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(check, list(out.submitted)))


def summarise(out: Outcome, args: argparse.Namespace) -> dict[str, Any]:
    statuses = Counter(j.get("status", "unknown") for j in out.final.values() if "status" in j)
    server_total = [j["metrics"]["total_s"] for j in out.final.values()
                    if j.get("status") == "complete" and (j.get("metrics") or {}).get("total_s") is not None]
    wall = max(out.ended - out.started, 1e-9)
    ms = lambda v: round(v * 1000, 2) if v is not None else None  # noqa: E731
    five_xx = sum(n for code, n in out.rejected.items() if code.startswith("5"))
    return {
        "mode": "spam" if args.spam else "random" if args.random else "batch" if args.batch else "single",
        "requested": args.spam or args.random or (len(BATCH) if args.batch else 1),
        "submitted": len(out.submitted),
        "completed": statuses.get("complete", 0),
        "failed": statuses.get("failed", 0),
        "cancelled": statuses.get("cancelled", 0),
        "still_waiting": sum(statuses.get(s, 0) for s in ("pending", "queued", "running")),
        "lost": len(out.lost),
        "rejected_by_status": dict(out.rejected),
        "server_errors_5xx": five_xx,
        "client_errors": dict(out.errors),
        "submit_latency_ms": {"p50": ms(percentile(out.submit_latency, 0.5)),
                              "p95": ms(percentile(out.submit_latency, 0.95)),
                              "p99": ms(percentile(out.submit_latency, 0.99))},
        "e2e_latency_s": {"p50": _round(percentile(out.e2e_latency, 0.5)),
                          "p95": _round(percentile(out.e2e_latency, 0.95)),
                          "p99": _round(percentile(out.e2e_latency, 0.99)),
                          "server_p50": _round(percentile(server_total, 0.5)),
                          "server_p95": _round(percentile(server_total, 0.95))},
        "wall_s": round(wall, 3),
        "submits_per_s": round(len(out.submitted) / wall, 2),
        "throughput_jobs_per_s": round(statuses.get("complete", 0) / wall, 3),
        "output_tokens": sum((j.get("metrics") or {}).get("output_tokens") or 0 for j in out.final.values()),
    }


def _round(v: float | None) -> float | None:
    return round(v, 3) if v is not None else None


def print_summary(summary: dict[str, Any], sample: dict[str, Any] | None) -> None:
    if sample is not None:
        result = sample.get("result") or {}
        text = result.get("response") or (result.get("message") or {}).get("content")
        if text is None and result.get("embeddings") is not None:
            text = f"<{len(result['embeddings'])} embedding(s)>"
        print(f"\njob {sample['job_id']} on {sample['model']}: {sample['status']}")
        if sample.get("error"):
            print(f"  error: {sample['error']}")
        if text is not None:
            print(f"  answer: {text.strip()[:500]}")
        print(f"  metrics: {json.dumps(sample.get('metrics'))}")
    s = summary
    print("\nSummary")
    print(f"  submitted {s['submitted']} of {s['requested']}, completed {s['completed']}, failed {s['failed']}, "
          f"cancelled {s['cancelled']}, still waiting {s['still_waiting']}, lost {s['lost']}")
    print(f"  rejected by status: {s['rejected_by_status'] or 'none'}; client errors: {s['client_errors'] or 'none'}")
    sl, el = s["submit_latency_ms"], s["e2e_latency_s"]
    print(f"  submit latency ms: p50 {sl['p50']}  p95 {sl['p95']}  p99 {sl['p99']}")
    print(f"  end-to-end latency s: p50 {el['p50']}  p95 {el['p95']}  p99 {el['p99']}")
    print(f"  wall {s['wall_s']}s; {s['submits_per_s']} submits/s; throughput {s['throughput_jobs_per_s']} jobs/s")


def write_html(path: str, summary: dict[str, Any], out: Outcome) -> None:
    from loadtest.report import html_report
    with open(path, "w", encoding="utf-8") as f:
        f.write(html_report(summary, out.submit_latency, out.e2e_latency))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--batch", action="store_true", help="submit the four predefined jobs")
    mode.add_argument("--random", type=int, metavar="N", help="submit N random jobs and wait for them")
    mode.add_argument("--spam", type=int, metavar="N", help="submit N jobs as fast as possible; do not wait")
    p.add_argument("--url", default="http://127.0.0.1:5001", help="Model Manager's base URL")
    p.add_argument("--model", help="model for every job (default: a small one the service can run)")
    p.add_argument("--priority", choices=["low", "normal", "high"], help="priority for every job")
    p.add_argument("--prompt", default="Why is the sky blue? Answer in one sentence.")
    p.add_argument("--max-tokens", type=int, default=0, help="options.num_predict for each job")
    p.add_argument("--delay", type=float, default=0.0, metavar="S", help="seconds between submissions")
    p.add_argument("--concurrency", type=int, default=1, metavar="N", help="submissions in flight at once")
    p.add_argument("--no-check", action="store_true", help="do not wait for the jobs to finish")
    p.add_argument("--wait-timeout", type=float, default=600.0, help="longest to wait for jobs to finish")
    p.add_argument("--request-timeout", type=float, default=30.0, help="timeout of one submit request")
    p.add_argument("--seed", type=int, default=0, help="random seed for --random/--spam")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object, last")
    p.add_argument("--html", metavar="PATH", help="write an HTML report with a latency histogram")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    for name in ("random", "spam"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.concurrency < 1 or args.delay < 0 or args.max_tokens < 0:
        p.error("--concurrency must be >= 1; --delay and --max-tokens >= 0")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = Client(args.url)
    try:
        client.get("/api/stats", timeout=5)
    except requests.RequestException as exc:
        print(f"cannot reach Model Manager at {args.url}: {exc}", file=sys.stderr)
        return 2
    jobs = build_jobs(args, client)
    out = Outcome(started=time.time())
    show_bar = not args.quiet and len(jobs) > 1
    with tqdm(total=len(jobs), desc="submit", disable=not show_bar, file=sys.stderr) as bar:
        submit_all(client, jobs, args, out, bar)
    if args.spam or args.no_check:
        out.ended = time.time()
        check_present(client, out, max(args.concurrency, 8))
    else:
        with tqdm(total=len(out.submitted), desc="done", disable=not show_bar, file=sys.stderr) as bar:
            wait_all(client, out, args, bar)
        out.ended = time.time()
    summary = summarise(out, args)
    sample = next(iter(out.final.values()), None) if len(jobs) <= len(BATCH) and not args.spam else None
    if sample is not None and "status" not in sample:
        sample = None
    print_summary(summary, sample)
    if args.html:
        write_html(args.html, summary, out)
        print(f"  report: {args.html}")
    if args.json:
        print(json.dumps(summary))
    waited = not (args.spam or args.no_check)
    bad = summary["lost"] or summary["server_errors_5xx"] or summary["failed"] or (
        waited and summary["completed"] < summary["submitted"])
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
