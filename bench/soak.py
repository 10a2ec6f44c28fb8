"""A soak: mixed traffic against gunicorn with 4 workers, with the leader frozen once a minute.

    python bench/soak.py [--minutes 10] [--rate 30] [--freeze-every 60] [--warm-up 120] [--json]

The simulator runs on its own (like an Ollama server, so that it outlives leadership changes
and counts every prompt it serves over the whole run). gunicorn serves the API with 4 workers
in front of it. Client threads send, at `--rate` requests per second in all: submissions (each
with an Idempotency-Key; one in ten is sent again with the same key, as a client retrying after
a timeout would), polls (some long), cancels, and bad requests (invalid JSON, unknown model, bad
priority, an option that would reload the model, an oversized body). Once a minute the worker
holding the scheduler lease is frozen (SIGSTOP) for 8 s, then resumed (`--freeze-every`; the
first after half that). Every 10 s the resident memory of each process is read.

It prints: accepted, completed, failed, cancelled, lost (accepted but missing or never finished
after the drain), served twice (prompts the simulator started, or answered in whole, more than
once), 5xx answers, idempotent retries that got another job, p50/p99 submission latency, and
each process's memory growth in MB/min after the warm-up (`--warm-up`, 2 minutes; least-squares
slope).
Targets: 0 lost, 0 served twice, 0 5xx, memory growth < 1 MB/min. Preemption is off here: a
preempted job's prompt is sent again by design.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path

import psutil
import requests

from bench.common import ROOT, emit_json, free_port, machine, percentile, table  # noqa: E402
from runtime.launcher import ManagedRuntime  # noqa: E402

MODELS = ("qwen2.5:0.5b", "smollm:360m", "tinyllama:1.1b")
FINISHED = ("complete", "failed", "cancelled")
FREEZE_S = 8.0


class Soak:
    def __init__(self, url: str, sim_url: str, rate: float, clients: int):
        self.url, self.sim_url = url, sim_url
        self.rate, self.clients = rate, clients
        self.lock = threading.Lock()
        self.accepted: dict[str, str] = {}              # job id -> idempotency key
        self.by_key: dict[str, set[str]] = defaultdict(set)
        self.cancelled: set[str] = set()
        self.statuses: Counter[int] = Counter()
        self.submit_ms: list[float] = []
        self.errors: Counter[str] = Counter()
        self.stop = threading.Event()

    def _post(self, path: str, **kwargs) -> requests.Response | None:
        try:
            r = requests.post(self.url + path, timeout=15, **kwargs)
        except requests.RequestException as exc:
            with self.lock:
                self.errors[type(exc).__name__] += 1
            return None
        with self.lock:
            self.statuses[r.status_code] += 1
        return r

    def _get(self, path: str) -> requests.Response | None:
        try:
            r = requests.get(self.url + path, timeout=15)
        except requests.RequestException as exc:
            with self.lock:
                self.errors[type(exc).__name__] += 1
            return None
        with self.lock:
            self.statuses[r.status_code] += 1
        return r

    def submit(self, rng: random.Random, key: str | None = None, body: dict | None = None) -> None:
        key = key or uuid.uuid4().hex
        body = body or {"model": rng.choice(MODELS), "prompt": f"soak {key}",
                        "priority": rng.choice(("low", "normal", "high")), "options": {"num_predict": rng.randint(4, 24)}}
        started = time.perf_counter()
        r = self._post("/api/submit", json=body, headers={"Idempotency-Key": key})
        if r is not None and r.status_code in (200, 202):
            with self.lock:
                self.submit_ms.append((time.perf_counter() - started) * 1000)
                job_id = r.json()["job_id"]
                self.accepted[job_id] = key
                self.by_key[key].add(job_id)
            if rng.random() < 0.1:                       # a client that retries after a timeout
                self.submit(rng, key, body)

    def poll(self, rng: random.Random) -> None:
        with self.lock:
            if not self.accepted:
                return
            job_id = rng.choice(list(self.accepted)[-200:])
        self._get(f"/api/job/{job_id}" + ("?wait=1" if rng.random() < 0.2 else ""))

    def cancel(self, rng: random.Random) -> None:
        with self.lock:
            if not self.accepted:
                return
            job_id = rng.choice(list(self.accepted)[-50:])
        r = self._post(f"/api/job/{job_id}/cancel")
        if r is not None and r.status_code == 200:
            with self.lock:
                self.cancelled.add(job_id)

    def bad(self, rng: random.Random) -> None:
        kind = rng.randrange(5)
        if kind == 0:
            self._post("/api/submit", data=b"{not json", headers={"Content-Type": "application/json"})
        elif kind == 1:
            self._post("/api/submit", json={"model": "no-such-model:1b", "prompt": "x"})
        elif kind == 2:
            self._post("/api/submit", json={"model": MODELS[0], "prompt": "x", "priority": "urgent"})
        elif kind == 3:
            self._post("/api/submit", json={"model": MODELS[0], "prompt": "x", "options": {"num_ctx": 99}})
        else:
            self._post("/api/submit", data=b"x" * 5_000_000, headers={"Content-Type": "application/json"})

    def client(self, seed: int) -> None:
        rng = random.Random(seed)
        interval = self.clients / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            roll = rng.random()
            if roll < 0.55:
                self.submit(rng)
            elif roll < 0.80:
                self.poll(rng)
            elif roll < 0.88:
                self.cancel(rng)
            else:
                self.bad(rng)
            next_at += interval * rng.expovariate(1.0)
            self.stop.wait(max(next_at - time.monotonic(), 0.0))


def memory_slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return float("nan")
    n = len(samples)
    mx = sum(t for t, _ in samples) / n
    my = sum(m for _, m in samples) / n
    var = sum((t - mx) ** 2 for t, _ in samples)
    return 60.0 * sum((t - mx) * (m - my) for t, m in samples) / var if var else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=30.0, help="requests per second, all clients together")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--freeze-every", type=float, default=60.0, help="seconds between leader freezes")
    parser.add_argument("--warm-up", type=float, default=120.0, help="seconds left out of the memory slope")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="mm-soak-"))
    sim = ManagedRuntime("sim", "simulator", ["--num-parallel", "4", "--tokens-per-s", "3000", "--load-gbps", "20",
                                              "--vram-gb", "8", "--max-queue", "512"], work / "sim.log")
    sim_url = sim.start()
    assert sim.process is not None          # start() started it
    sim_pid = sim.process.pid
    port = free_port()
    env = {**os.environ, "HTTP_PORT": str(port), "DATA_DIR": str(work / "data"), "LOG_FILE": str(work / "mm.log"),
           "LOG_LEVEL": "WARNING", "BACKEND": "ollama", "OLLAMA_URL": sim_url, "OLLAMA_NUM_PARALLEL": "4",
           "VRAM_TOTAL_MB": "7000", "STORE": os.environ.get("STORE", "sqlite"), "GUNICORN_WORKERS": str(args.workers),
           "QUEUE_MAX_SIZE": "5000", "MAX_PROMPT_BYTES": str(1024 * 1024),
           # a preempted job is sent again by design (it resumes, or starts over): this soak counts
           # prompts served twice to catch faults, so it runs without preemption (tested on its own:
           # tests/test_preemption_end_to_end.py)
           "PREEMPTION": "false"}
    gunicorn = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                                env=env, stdout=open(work / "gunicorn.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url)
        soak = Soak(url, sim_url, args.rate, args.clients)
        threads = [threading.Thread(target=soak.client, args=(i,), daemon=True) for i in range(args.clients)]
        started = time.monotonic()
        for t in threads:
            t.start()
        memory: dict[str, list[tuple[float, float]]] = defaultdict(list)
        freezes = 0
        next_freeze, next_sample = started + args.freeze_every / 2, started
        end = started + args.minutes * 60.0
        while time.monotonic() < end:
            now = time.monotonic()
            if now >= next_sample:
                for name, proc in _processes(gunicorn.pid, sim_pid).items():
                    try:
                        memory[name].append((now - started, proc.memory_info().rss / 1e6))
                    except psutil.Error:
                        pass
                next_sample = now + 10.0
            if now >= next_freeze and now + FREEZE_S < end:
                freezes += _freeze_leader(url)
                next_freeze = now + args.freeze_every
            time.sleep(0.5)
        soak.stop.set()
        for t in threads:
            t.join(30)
        result = _settle(soak, sim_url, args, freezes, memory)
    finally:
        gunicorn.send_signal(signal.SIGTERM)
        try:
            gunicorn.wait(30)
        except subprocess.TimeoutExpired:
            gunicorn.kill()
        sim.stop()
    _report(result)
    emit_json(args.json, result)
    return 0


def _wait_healthy(url: str) -> None:
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            if requests.get(url + "/api/health", timeout=1).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError("gunicorn did not become healthy")


def _processes(master_pid: int, sim_pid: int) -> dict[str, psutil.Process]:
    master = psutil.Process(master_pid)
    out = {"gunicorn master": master, "simulator": psutil.Process(sim_pid)}
    for i, child in enumerate(sorted(master.children(), key=lambda p: p.pid)):
        out[f"worker {i + 1} (pid {child.pid})"] = child
    return out


def _freeze_leader(url: str) -> int:
    try:
        owner = requests.get(url + "/api/stats", timeout=5).json()["scheduler"]["leader"]
        pid = int(owner.split(":")[1])
    except (requests.RequestException, KeyError, TypeError, ValueError, AttributeError):
        return 0
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(FREEZE_S)
    finally:
        os.kill(pid, signal.SIGCONT)
    return 1


def _settle(soak: Soak, sim_url: str, args, freezes: int, memory: dict) -> dict:
    """Wait for every accepted job to finish (bounded), then count."""
    deadline = time.time() + 180
    pending = set(soak.accepted)
    final: dict[str, str] = {}
    last_seen: dict[str, str] = {}
    while pending and time.time() < deadline:
        for job_id in list(pending):
            try:
                r = requests.get(f"{soak.url}/api/job/{job_id}", timeout=10)
            except requests.RequestException:
                continue
            status = r.json().get("status") if r.status_code == 200 else "missing"
            last_seen[job_id] = status
            if status in FINISHED or status == "missing":
                final[job_id] = status
                pending.discard(job_id)
        if pending:
            time.sleep(1.0)
    statuses = Counter(final.values())
    repeats = requests.get(sim_url + "/api/sim/stats", timeout=10).json()["repeats"]
    growth = {name: round(memory_slope_mb_per_min([s for s in samples if s[0] >= args.warm_up]), 3)
              for name, samples in memory.items()}
    return {
        "minutes": args.minutes, "rate_per_s": args.rate, "warm_up_s": args.warm_up, "workers": args.workers,
        "leader_freezes": freezes,
        "requests_by_status": {str(k): v for k, v in sorted(soak.statuses.items())},
        "client_errors": dict(soak.errors),
        "accepted": len(soak.accepted), "completed": statuses.get("complete", 0), "failed": statuses.get("failed", 0),
        "cancelled": statuses.get("cancelled", 0), "lost": statuses.get("missing", 0) + len(pending),
        "lost_jobs": {job_id: last_seen.get(job_id, "?") for job_id in sorted(pending)}
                     | {job_id: "missing" for job_id, s in final.items() if s == "missing"},
        "served_twice": repeats["started"], "answered_twice": repeats["answered"], "prompts_served": repeats["prompts"],
        "server_errors_5xx": sum(v for k, v in soak.statuses.items() if k >= 500 and k != 503),
        "store_busy_503": soak.statuses.get(503, 0),
        "idempotent_retries_with_a_second_job": sum(1 for ids in soak.by_key.values() if len(ids) > 1),
        "submit_p50_ms": round(percentile(soak.submit_ms, 0.5), 2), "submit_p99_ms": round(percentile(soak.submit_ms, 0.99), 2),
        "memory_growth_mb_per_min": growth,
        "memory_mb_at_end": {name: round(samples[-1][1], 1) for name, samples in memory.items() if samples},
        "machine": machine(),
    }


def _report(r: dict) -> None:
    print(f"soak: {r['minutes']} min at {r['rate_per_s']} requests/s, {r['workers']} workers, "
          f"{r['leader_freezes']} leader freezes of {FREEZE_S:.0f} s")
    print(f"requests by status: {r['requests_by_status']}; client-side errors: {r['client_errors']}")
    print(f"accepted {r['accepted']}: completed {r['completed']}, failed {r['failed']}, cancelled {r['cancelled']}, "
          f"lost {r['lost']} (target 0)" + (f": {r['lost_jobs']}" if r["lost"] else ""))
    print(f"served twice {r['served_twice']}, answered twice {r['answered_twice']} of {r['prompts_served']} prompts "
          f"(target 0); 5xx {r['server_errors_5xx']} (target 0; 503 store-busy {r['store_busy_503']}); "
          f"idempotent retries that got a second job: {r['idempotent_retries_with_a_second_job']}")
    print(f"submission latency p50 {r['submit_p50_ms']} ms, p99 {r['submit_p99_ms']} ms")
    rows = [[name, r["memory_mb_at_end"].get(name, float("nan")), growth]
            for name, growth in r["memory_growth_mb_per_min"].items()]
    print(table(rows, ["process", "RSS MB at end", f"growth MB/min after {r['warm_up_s']:g} s (target < 1)"]))


if __name__ == "__main__":
    raise SystemExit(main())
