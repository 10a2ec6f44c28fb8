"""What the benchmarks share: starting the service, timing, and printing results."""
from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

from telemetry.percentiles import percentile as quantile

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Service:
    """`python main.py` in its own process, on a throwaway data folder."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, data_dir: Path | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = data_dir or Path(tempfile.mkdtemp(prefix="mm-bench-"))
        self.env = {**os.environ, "DATA_DIR": str(self.dir / "data"), "LOG_FILE": str(self.dir / "mm.log"),
                    "STORE": os.environ.get("STORE", "sqlite"), "LOG_LEVEL": "WARNING", **(env or {})}
        self.args = args
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> Service:
        self.process = subprocess.Popen([sys.executable, "main.py", "--http-port", str(self.port), *self.args],
                                        cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL,
                                        stderr=open(self.dir / "stderr.log", "wb"))
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/api/health", timeout=1).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited; see {self.dir / 'stderr.log'}")
            time.sleep(0.1)
        raise RuntimeError("the service did not become healthy")

    def __exit__(self, *exc: Any) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()


def percentile(values: list[float], q: float) -> float:
    """telemetry.percentiles.percentile, NaN where there are no values (benchmark tables print it)."""
    value = quantile(values, q)
    return float("nan") if value is None else value


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(rows: list[list[Any]], header: list[str]) -> str:
    cells = [header] + [[f"{c:.3f}" if isinstance(c, float) else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def emit_json(enabled: bool, result: dict[str, Any]) -> None:
    if enabled:
        print(json.dumps(result))


def machine() -> dict[str, Any]:
    import platform

    import psutil
    return {"cpus": psutil.cpu_count(), "python": platform.python_version(), "platform": platform.platform()}
