"""API capacity: job submissions per second under gunicorn, against a bare endpoint on the same
server in the same run.

    python bench/api_capacity.py [--seconds 10] [--clients 32] [--json]

gunicorn serves the API (gunicorn.conf.py: GUNICORN_WORKERS=4 gthread workers) on this machine.
The runtime is deliberately unreachable, so accepted jobs only queue: what is measured is the
API's own path (validate, store in SQLite, answer 202 with a position), not inference. 32
clients with keep-alive connections alternate between `POST /api/submit` and the bare
`GET /api/ping` (Flask returning a constant) for the same time each, three times; the ratio is
the median of the three rounds' ratios. Uses `wrk` when it
is installed, else a small asyncio client in this process. Target: submits/s >= 0.5 x bare/s.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import ROOT, emit_json, free_port, machine, table  # noqa: E402

SUBMIT = json.dumps({"model": "qwen2.5:0.5b", "prompt": "Why is the sky blue?", "priority": "normal"})


def start_gunicorn(directory: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "HTTP_PORT": str(port), "DATA_DIR": str(directory / "data"),
           "LOG_FILE": str(directory / "mm.log"), "LOG_LEVEL": "WARNING", "STORE": "sqlite", "MONGODB_URI": "",
           "BACKEND": "ollama", "OLLAMA_URL": "http://127.0.0.1:9", "QUEUE_MAX_SIZE": "10000000",
           "GUNICORN_WORKERS": os.environ.get("GUNICORN_WORKERS", "4")}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=open(directory / "gunicorn.log", "wb"))
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/api/ping", timeout=1).ok:
                return proc
        except requests.RequestException:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("gunicorn did not start")


def run_wrk(url: str, method: str, seconds: float, clients: int) -> tuple[float, int]:
    script = Path(tempfile.mkdtemp()) / "req.lua"
    if method == "POST":
        script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(SUBMIT)}\n'
                          'wrk.headers["Content-Type"] = "application/json"\n')
    else:
        script.write_text("")
    out = subprocess.run(["wrk", "-t2", f"-c{clients}", f"-d{int(seconds)}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    total = int(_first(r"(\d+) requests in", out))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    ok = total - (int(bad.group(1)) if bad else 0)
    elapsed = float(_first(r"requests in ([\d.]+)(m?s)", out))
    unit = _first(r"requests in [\d.]+(m?s)", out)
    elapsed = elapsed / 1000 if unit == "ms" else elapsed
    return ok / elapsed, total - ok


def _first(pattern: str, text: str) -> str:
    """The first group of `pattern` in wrk's summary (which always has it)."""
    found = re.search(pattern, text)
    assert found is not None, f"wrk printed no {pattern!r}"
    return found.group(1)


async def _client(host: str, port: int, request: bytes, stop_at: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while time.perf_counter() < stop_at:
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            found = re.search(rb"(?i)content-length: *(\d+)", head)
            assert found is not None, "an answer without Content-Length"     # the service always sends it
            length = int(found.group(1))
            await reader.readexactly(length)
            counts[0 if 200 <= status < 300 else 1] += 1
            if re.search(rb"(?i)connection: *close", head):
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    finally:
        writer.close()


def run_asyncio(url: str, method: str, seconds: float, clients: int) -> tuple[float, int]:
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    body = SUBMIT.encode() if method == "POST" else b""
    request = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: keep-alive\r\n"
               + (f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n" if body else "")
               + "\r\n").encode() + body
    counts = [0, 0]

    async def main():
        stop_at = time.perf_counter() + seconds
        await asyncio.gather(*(_client(host, int(port), request, stop_at, counts) for _ in range(clients)))
    t0 = time.perf_counter()
    asyncio.run(main())
    return counts[0] / (time.perf_counter() - t0), counts[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0, help="per phase")
    parser.add_argument("--rounds", type=int, default=3, help="bare/submit alternations; medians are reported")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--client", choices=["auto", "wrk", "asyncio"], default="auto")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    use_wrk = args.client == "wrk" or (args.client == "auto" and shutil.which("wrk"))
    load = run_wrk if use_wrk else run_asyncio
    directory = Path(tempfile.mkdtemp(prefix="mm-capacity-"))
    port = free_port()
    proc = start_gunicorn(directory, port)
    base = f"http://127.0.0.1:{port}"
    try:
        load(base + "/api/ping", "GET", 2, args.clients)            # warm up
        bare, submits, rejected = [], [], 0
        for _ in range(args.rounds):
            rate, _ = load(base + "/api/ping", "GET", args.seconds, args.clients)
            bare.append(rate)
            rate, bad = load(base + "/api/submit", "POST", args.seconds, args.clients)
            submits.append(rate)
            rejected += bad
        stored = requests.get(base + "/api/stats", timeout=30).json()["queue"]["total_jobs"]
    finally:
        proc.terminate()
        proc.wait(30)
    bare_per_s, submits_per_s = statistics.median(bare), statistics.median(submits)
    ratio = statistics.median(s / b for s, b in zip(submits, bare, strict=False))
    print(f"gunicorn, {os.environ.get('GUNICORN_WORKERS', '4')} workers, {args.clients} clients, "
          f"{'wrk' if use_wrk else 'asyncio client'}, {args.seconds:.0f}s per phase, {os.cpu_count()} CPUs")
    print(table([["GET /api/ping (bare)", bare_per_s, " ".join(f"{v:.0f}" for v in bare)],
                 ["POST /api/submit", submits_per_s, " ".join(f"{v:.0f}" for v in submits)]],
                ["endpoint", "median req/s", "each round"]))
    print(f"ratio {ratio:.3f} (target >= 0.5); non-2xx submits: {rejected}; jobs stored: {stored}")
    emit_json(args.json, {"submits_per_s": round(submits_per_s, 1), "bare_per_s": round(bare_per_s, 1),
                          "ratio": round(ratio, 4),
                          "rounds": [[round(b, 1), round(s, 1)] for b, s in zip(bare, submits, strict=False)],
                          "non_2xx": rejected, "jobs_stored": stored,
                          "client": "wrk" if use_wrk else "asyncio", "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
