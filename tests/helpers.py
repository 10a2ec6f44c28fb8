"""What the tests share that is not a fixture: the project root, a configuration and a job to
start from, waiting on a condition, starting a service, `main.py` or gunicorn, the installed
models. Imported as a module (`from helpers import ...`); the fixtures are in conftest.py."""
from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, TypeVar, cast

import pytest
import requests

from config import Config
from experiment.strategies import ModelAnswer
from jobs.model import JobDoc, JobKind, Priority, new_job
from simulator.des import Job

if TYPE_CHECKING:
    from service.facade import Service

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_config(tmp_path: Path, **overrides) -> Config:
    """A configuration isolated from the developer's environment and `.env`."""
    base: dict[str, Any] = dict(DATA_DIR=tmp_path / "data", LOG_FILE=tmp_path / "mm.log", STORE="sqlite",
                MONGODB_URI="", BACKEND="sim", OLLAMA_URL="http://127.0.0.1:9",
                SIM_LOAD_GBPS=50.0, SIM_TOKENS_PER_S=4000.0, SIM_DEFAULT_TOKENS=16,
                SCHEDULER_LOOP_INTERVAL=0.02, RUNTIME_POLL_INTERVAL=0.2)
    base.update(overrides)
    return Config(_env_file=None, **base)


def sample_job(model: str = "m", priority: Priority = Priority.NORMAL, submitted_at: float | None = None,
               **extra: Any) -> JobDoc:
    job = new_job(model=model, kind=JobKind.GENERATE, priority=priority,
                  submitted_at=time.time() if submitted_at is None else submitted_at,
                  timeout_s=30, prompt="hi")
    job.update(cast(JobDoc, extra))     # the extra fields are JobDoc keys
    return job


STORE_BACKENDS = ["sqlite", "memory", "mongodb-nx"] + (["mongodb-real"] if os.environ.get("MONGODB_URI") else [])


def mongo_store(uri: str, retention_s: float | None = None):
    """A MongoStore on fresh collections (a unique prefix), dropped afterwards by `drop_mongo`."""
    import uuid

    from pymongo import MongoClient

    from store.mongo import MongoStore
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
    return MongoStore(client, os.environ.get("MONGODB_TEST_DB", "mm_test"), f"t{uuid.uuid4().hex[:10]}_",
                      retention_s)


def drop_mongo(store) -> None:
    for coll in (store.jobs, store.metrics, store.state, store.leases, store.epochs, store.footprints_coll,
                 store.tasks, store.results, store.tokens, store.idempotency, store.keys, store.rates, store.counters,
                 store.cache, store.pieces):
        coll.drop()
    store.close()


def wait_until(predicate, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


class ServiceRunner:
    """Starts leading Services on the GPU simulator, each with a Flask test client; stops them all."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.started: list[Service] = []

    def __call__(self, **overrides):
        from api import create_app
        from service.facade import Service

        cfg = make_config(self.directory / f"svc{len(self.started)}", **overrides)
        service = Service(cfg)
        service.start()
        self.started.append(service)
        assert service.wait_until_leading(30), "the scheduler did not start"
        wait_until(lambda: service.state is not None, message="first resource sample")
        service.publish()
        return service, create_app(cfg, service).test_client()

    def stop(self):
        for service in self.started:
            service.stop()
            service.store.close()


@contextmanager
def gunicorn_server(directory: Path, env: dict[str, str], workers: int = 2):
    """`gunicorn -c gunicorn.conf.py wsgi:app` as deployed, on a free port with its data in
    `directory`; yields (url, process) once /api/health answers 200; stopped with SIGTERM."""
    port = free_port()
    full = {**os.environ, "HTTP_PORT": str(port), "DATA_DIR": str(directory / "data"),
            "LOG_FILE": str(directory / "mm.log"), "STORE": "sqlite", "MONGODB_URI": "",
            "GUNICORN_WORKERS": str(workers), **env}
    proc = subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                            env=full, stdout=open(directory / "gunicorn.log", "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        try:
            return requests.get(url + "/api/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False
    try:
        wait_until(healthy, timeout=60, message="gunicorn to serve")
        yield url, proc
    finally:
        terminate(proc)


def terminate(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM, as a service manager stops it; SIGKILL if it has not ended within `timeout`."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MainProcess:
    """`python main.py` in its own process, as users start it."""

    def __init__(self, directory: Path, args: list[str], env: dict[str, str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.directory = directory
        self.args = args
        self.env = {**os.environ, "DATA_DIR": str(directory / "data"), "LOG_FILE": str(directory / "mm.log"),
                    "STORE": "sqlite", "MONGODB_URI": "", "PYTHONUNBUFFERED": "1", **env}
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> MainProcess:
        self.process = subprocess.Popen(
            [sys.executable, "main.py", "--http-port", str(self.port), *self.args], cwd=ROOT, env=self.env,
            stdout=open(self.directory / "stdout.log", "ab"), stderr=subprocess.STDOUT)
        wait_until(self.healthy, timeout=timeout, message=f"the service at {self.url}")
        return self

    def healthy(self) -> bool:
        try:
            return requests.get(self.url + "/api/health", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def kill(self) -> None:
        """SIGKILL: no clean-up at all, as a crash or the OOM killer would."""
        assert self.process is not None, "kill() before start()"
        self.process.kill()
        self.process.wait()

    def restart(self, timeout: float = 60) -> MainProcess:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        return self.start(timeout)

    def stop(self, sig=None) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        if sig is None:
            self.process.terminate()
        else:
            self.process.send_signal(sig)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


T = TypeVar("T")


def present(value: T | None) -> T:
    """A field that a client library's types declare optional, where the answer must carry it."""
    assert value is not None, "the answer lacks a field it must carry"
    return value


def require_models(*names: str) -> None:
    """Skip when the embedded models a test needs are not installed; in CI (where `make test`
    installs them) that is a failure, not a skip."""
    from embedded_runtime.catalog import CATALOG, is_installed
    missing = [n for n in names if not is_installed(CATALOG[n])]
    if missing:
        message = f'models not installed: {", ".join(missing)} (make models MODELS="{" ".join(missing)}")'
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


# --- the discrete-event simulator's tests (test_des.py, test_scale_out.py) ----------------------------
class Physics(TypedDict):
    """The keyword arguments of `run` that describe each node's speed."""
    load_bytes_per_s: float
    tokens_per_s: float
    batch_gain: float


PHYSICS = Physics(load_bytes_per_s=10**9, tokens_per_s=100.0, batch_gain=0.0)   # 1 GB/s


def started(job: Job) -> float:
    """When `job` started; the test has run it."""
    assert job.started is not None, f"job {job.id} never started"
    return job.started


def finished(job: Job) -> float:
    """When `job` finished; the test has run it."""
    assert job.finished is not None, f"job {job.id} never finished"
    return job.finished


def make_key(service, tenant, **limits) -> str:
    """A key made as `python main.py keys create` makes it; returns the key (its last line)."""
    from tenancy import keys_cli

    parser = argparse.ArgumentParser()
    keys_cli.add_parser(parser.add_subparsers(dest="command"))
    argv = ["keys", "create", "--tenant", tenant]
    for name, value in limits.items():
        flag = "--" + name.replace("_", "-")
        argv += [flag] if value is True else [] if value is False else [flag, str(value)]
    args = parser.parse_args(argv)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert keys_cli.run(args, service.config, store=service.raw_store) == 0
    return out.getvalue().strip().splitlines()[-1]


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


# --- the experiment's strategies on scripted model answers ----------------------------------------
class ScriptedCalls:
    """Answers each model's calls from a script, in order; records what was asked."""

    def __init__(self, script: dict[str, list[str | None]]):
        self.script = {model: iter(answers) for model, answers in script.items()}
        self.ids = itertools.count()
        self.submitted: list[dict] = []
        self.answers: dict[str, ModelAnswer] = {}

    def submit(self, model, messages, tags, options=None):
        job_id = f"job{next(self.ids)}"
        self.submitted.append({"job_id": job_id, "model": model, "messages": messages, "tags": tags,
                               "options": options})
        text = next(self.script[model])
        self.answers[job_id] = ModelAnswer(job_id, "", "runtime error") if text is None else ModelAnswer(job_id, text)
        return job_id

    def answer(self, job_id):
        return self.answers[job_id]
