"""The embedded runtime's runner processes: start, talk to, measure, expire and stop them.

Each loaded model lives in its own `embedded_runtime.runner` process, so that unloading or a
crash frees exactly that model's memory, its CPU and memory can be read from the process, and
no model object is ever shared across threads of one process.
"""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from multiprocessing.connection import Client
from pathlib import Path
from typing import Any

import psutil

from embedded_runtime.catalog import CATALOG, EmbeddedModel, ModelFiles, ModelUnavailable
from embedded_runtime.runner import AUTHKEY_ENV
from runtime.launcher import terminate

ROOT = Path(__file__).resolve().parent.parent
REAP_EVERY_S = 0.5


class RunnerFailed(Exception):
    """The runner could not start, or stopped while answering."""


@dataclass
class Runner:
    model: EmbeddedModel
    num_ctx: int                       # context length of each slot, as loaded
    process: subprocess.Popen
    socket: str
    authkey: bytes
    loaded_at: float
    load_seconds: float
    keep_alive_s: float | None = 300.0
    expires: float | None = None
    active: int = 0
    unload_when_idle: bool = False
    reloading: bool = False            # to be replaced (another num_ctx): takes no new requests
    ready: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss(self) -> int:
        try:
            return psutil.Process(self.pid).memory_info().rss
        except psutil.Error:
            return 0

    def exit_reason(self, grace: float = 0.5) -> str:
        """Why the process ended (waiting up to `grace` seconds for a dying one to be reaped)."""
        try:
            code = self.process.wait(grace)
        except subprocess.TimeoutExpired:
            code = None
        if code is None:
            return "still running"
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"

    def request(self, op: str, body: dict[str, Any], stream: bool) -> Generator[dict[str, Any], None, None]:
        """Send one request; yield the runner's messages until the final one."""
        try:
            conn = Client(self.socket, family="AF_UNIX", authkey=self.authkey)
        except (OSError, EOFError) as exc:
            raise RunnerFailed(f"the runner for {self.model.name} does not answer ({self.exit_reason()})") from exc
        try:
            conn.send({"op": op, "request": body, "stream": stream})
            while True:
                try:
                    message = conn.recv()
                except (EOFError, OSError) as exc:
                    raise RunnerFailed(f"the runner for {self.model.name} stopped while answering "
                                       f"({self.exit_reason()})") from exc
                yield message
                if message["type"] in ("done", "error"):
                    return
        finally:
            conn.close()

    def stop(self, timeout: float = 5.0) -> None:
        terminate(self.process, timeout)
        try:
            os.unlink(self.socket)
        except OSError:
            pass


class RunnerPool:
    """The loaded models of the embedded runtime. Thread-safe."""

    def __init__(self, files: ModelFiles, log_dir: Path, threads: int = 1, num_ctx: int = 2048,
                 parallel: int = 1, binding: str = "xllamacpp", load_timeout: float = 300.0,
                 prompt_cache_mib: int = 0):
        self.files = files
        self.log_dir = Path(log_dir)
        self.threads = threads
        self.num_ctx = num_ctx
        self.parallel = parallel
        self.binding = binding
        self.load_timeout = load_timeout
        self.prompt_cache_mib = prompt_cache_mib
        self.runners: dict[str, Runner] = {}
        self.crashes = 0
        self._lock = threading.Condition()
        self._socket_dir = Path(tempfile.mkdtemp(prefix="mm-runners-"))
        self._stop = False
        self._reaper = threading.Thread(target=self._reap, name="runner-reaper", daemon=True)
        self._reaper.start()

    def slots(self, model: EmbeddedModel) -> int:
        """Requests a runner of `model` works on at once: one for an embedding model, as in Ollama."""
        return 1 if model.embedding else self.parallel

    # --- loading --------------------------------------------------------------------------------
    def acquire(self, name: str, keep_alive_s: float | None, num_ctx: int | None = None) -> tuple[Runner, float]:
        """The runner for `name`, started if needed, marked busy; returns (runner, load seconds
        spent for this call). Callers must `release` it.

        `num_ctx` (capped at the model's trained context) is the context to load the model with;
        None takes the loaded runner as it is, or the pool's default for a new one. As in Ollama,
        a loaded runner with another num_ctx is reloaded: it takes no new requests, its requests
        in flight finish, it stops, and a new one starts."""
        model = CATALOG.get(name)
        if model is None:
            raise KeyError(name)
        path = self.files.path(model)     # joins and verifies outside the lock; may raise ModelUnavailable
        wanted = min(num_ctx or self.num_ctx, model.context_length)
        with self._lock:
            owner = False                     # this call starts the runner and waits for it to load
            while True:
                runner = self.runners.get(name)
                if runner is not None and runner.ready.is_set() and not runner.alive():
                    self._forget(name)
                    runner = None
                if runner is None:
                    runner, owner = self._start(model, path, wanted), True
                    break
                if runner.reloading:          # another request's reload is under way: use its runner
                    self._lock.wait()
                    continue
                if num_ctx is None or runner.num_ctx == wanted:
                    break
                runner.reloading = True
                while runner.active > 0 and self.runners.get(name) is runner:
                    self._lock.wait()
                if self.runners.get(name) is runner:      # not gone meanwhile (crashed, unloaded)
                    # Stopped before the new one starts, so that the two never hold memory at
                    # once; a runner exits at SIGTERM within milliseconds.
                    self.runners.pop(name).stop()
                    runner, owner = self._start(model, path, wanted), True
                    break
            runner.active += 1
            runner.unload_when_idle = False
        started = time.time()
        try:
            if owner:
                self._wait_ready(runner)
            else:
                runner.ready.wait(self.load_timeout)
                if runner.error:
                    raise RunnerFailed(runner.error)
        except BaseException:
            self.release(runner, keep_alive_s)
            raise
        return runner, (time.time() - started) if owner else 0.0

    def _start(self, model: EmbeddedModel, path: Path, num_ctx: int) -> Runner:
        """Start a runner process for `model` and make it the model's runner (it loads meanwhile)."""
        authkey = secrets.token_bytes(16)
        socket = str(self._socket_dir / f"{model.sha256[:16]}-{secrets.token_hex(4)}.sock")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_dir / f"runner-{model.name.replace(':', '-')}.log", "ab")
        env = {**os.environ, AUTHKEY_ENV: authkey.hex()}
        if model.binding is not None:       # numpy's BLAS takes every core unless told
            env.update({v: str(self.threads) for v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")})
        process = subprocess.Popen(
            [sys.executable, "-m", "embedded_runtime.runner", "--model-path", str(path), "--socket", socket,
             "--ctx", str(num_ctx), "--threads", str(self.threads), "--parallel", str(self.slots(model)),
             "--binding", model.binding or self.binding, "--prompt-cache-mib", str(self.prompt_cache_mib),
             "--parent-pid", str(os.getpid())],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        log.close()
        runner = Runner(model, num_ctx, process, socket, authkey.hex().encode(), time.time(), 0.0)
        self.runners[model.name] = runner
        self._lock.notify_all()
        return runner

    def _wait_ready(self, runner: Runner) -> None:
        line = ""
        started = time.time()
        timer = threading.Timer(self.load_timeout, runner.process.kill)
        timer.start()
        stdout = runner.process.stdout
        assert stdout is not None               # the runner is started with stdout=PIPE
        try:
            line = stdout.readline().strip()
        finally:
            timer.cancel()
        with self._lock:
            if line == "READY":
                runner.loaded_at = time.time()
                runner.load_seconds = runner.loaded_at - started
            else:
                reason = line.removeprefix("FAILED ").strip() or f"the runner exited ({runner.exit_reason()})"
                runner.error = f"cannot load {runner.model.name}: {reason}"
                self._forget(runner.model.name)
            runner.ready.set()
            self._lock.notify_all()
        if runner.error:
            raise RunnerFailed(runner.error)

    def release(self, runner: Runner, keep_alive_s: float | None) -> None:
        with self._lock:
            runner.active -= 1
            runner.keep_alive_s = keep_alive_s
            runner.expires = None if keep_alive_s is None else time.time() + keep_alive_s
            self._lock.notify_all()

    # --- unloading ------------------------------------------------------------------------------
    def unload(self, name: str) -> bool:
        """Stop `name`'s runner now if idle, else as soon as its requests finish."""
        with self._lock:
            runner = self.runners.get(name)
            if runner is None:
                return False
            runner.unload_when_idle = True
            self._lock.notify_all()
        runner.ready.wait(self.load_timeout)
        self._expire(time.time())
        return True

    def _forget(self, name: str) -> Runner | None:
        runner = self.runners.pop(name, None)
        if runner is not None:
            threading.Thread(target=runner.stop, daemon=True).start()
            self._lock.notify_all()
        return runner

    def _expire(self, now: float) -> None:
        with self._lock:
            for name, runner in list(self.runners.items()):
                if not runner.ready.is_set():
                    continue
                if not runner.alive():
                    self.crashes += 1
                    self._forget(name)
                elif runner.active == 0 and (runner.unload_when_idle or
                                             (runner.expires is not None and runner.expires <= now)):
                    self._forget(name)

    def _reap(self) -> None:
        while True:
            with self._lock:
                if self._stop:
                    return
                self._lock.wait(REAP_EVERY_S)
            self._expire(time.time())

    def loaded(self) -> list[Runner]:
        with self._lock:
            return [r for r in self.runners.values() if r.ready.is_set() and r.alive()]

    def close(self) -> None:
        with self._lock:
            self._stop = True
            runners = list(self.runners.values())
            self.runners.clear()
            self._lock.notify_all()
        for runner in runners:
            runner.stop()


__all__ = ["Runner", "RunnerFailed", "RunnerPool", "ModelUnavailable"]
