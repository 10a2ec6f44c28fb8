"""Starting a runtime this project serves itself (simulator, embedded runtime) as a child
process, and the child's side of that: serve on a free port, say which, and exit with the
parent so that a killed service leaves no runtime behind."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from werkzeug.serving import WSGIRequestHandler, make_server

from telemetry.logs import get_logger

log = get_logger("SYSTEM")


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Exit this process soon after `parent_pid` is gone (it is re-parented when it dies)."""
    def watch() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(interval)
    if parent_pid:
        threading.Thread(target=watch, name="parent-watch", daemon=True).start()


class NoDelayRequestHandler(WSGIRequestHandler):
    """Sends small writes (streamed chunks) at once: without TCP_NODELAY, Nagle's algorithm and
    the client's delayed ACK hold each chunk of a stream back by up to 40 ms."""

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass                                         # no line per request


def make_http_server(host: str, port: int, app):
    """werkzeug's threaded server with TCP_NODELAY and no per-request log lines."""
    return make_server(host, port, app, threaded=True, request_handler=NoDelayRequestHandler)


def serve(app, host: str, port: int, ready_file: str | None, parent_pid: int = 0) -> None:
    """Serve a WSGI app (threaded), then write the bound port to `ready_file`."""
    server = make_http_server(host, port, app)
    exit_with_parent(parent_pid)
    if ready_file:
        tmp = f"{ready_file}.tmp"
        Path(tmp).write_text(str(server.server_port))
        os.replace(tmp, ready_file)
    else:
        print(f"listening on http://{host}:{server.server_port}", flush=True)
    server.serve_forever()


class ManagedRuntime:
    """A runtime child process: `python -m <module> ...`, started and stopped with the service."""

    def __init__(self, kind: str, module: str, args: list[str], log_path: Path, host: str = "127.0.0.1",
                 env: dict[str, str] | None = None, fixed_port: int = 0):
        self.fixed_port = fixed_port
        self.kind = kind
        self.module = module
        self.args = args
        self.log_path = log_path
        self.host = host
        self.env = env
        self.process: subprocess.Popen | None = None
        self.url = ""

    def start(self, timeout: float = 60.0) -> str:
        ready = Path(tempfile.mkdtemp(prefix=f"mm-{self.kind}-")) / "port"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module, "--host", self.host, "--port", str(self.fixed_port),
                 "--ready-file", str(ready), "--parent-pid", str(os.getpid()), *self.args],
                stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(self.env or {})},
                cwd=Path(__file__).resolve().parent.parent)      # the project root
        deadline = time.time() + timeout
        while not ready.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"the {self.kind} runtime exited at start (code "
                                   f"{self.process.returncode}); see {self.log_path}")
            if time.time() > deadline:
                self.stop()
                raise RuntimeError(f"the {self.kind} runtime did not start within {timeout:.0f}s")
            time.sleep(0.02)
        self.url = f"http://{self.host}:{ready.read_text().strip()}"
        ready.unlink()
        ready.parent.rmdir()
        while True:
            try:
                answer = requests.get(self.url + "/api/version", timeout=1, allow_redirects=False)
                answer.close()
                if 200 <= answer.status_code < 300:    # a redirect is not followed, nor an answer
                    break
                raise requests.HTTPError(f"HTTP {answer.status_code}")
            except requests.RequestException:
                if time.time() > deadline:
                    self.stop()
                    raise RuntimeError(f"the {self.kind} runtime does not answer at {self.url}") from None
                time.sleep(0.05)
        log.info("%s runtime started at %s (pid %d)", self.kind, self.url, self.process.pid)
        return self.url

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        terminate(self.process, timeout)
        log.info("%s runtime stopped", self.kind)


def terminate(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, and SIGKILL if it is still there after `timeout` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
