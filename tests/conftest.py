"""Shared fixtures: configurations, stores, and a real service on the GPU simulator."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from config import Config  # noqa: E402
from jobs import JobKind, Priority, new_job  # noqa: E402
from store.sqlite import SqliteStore  # noqa: E402

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def make_config(tmp_path: Path, **overrides) -> Config:
    """A configuration isolated from the developer's environment and `.env`."""
    base = dict(DATA_DIR=tmp_path / "data", LOG_FILE=tmp_path / "mm.log", STORE="sqlite",
                MONGODB_URI="", BACKEND="sim", OLLAMA_URL="http://127.0.0.1:9",
                SIM_LOAD_GBPS=50.0, SIM_TOKENS_PER_S=4000.0, SIM_DEFAULT_TOKENS=16,
                SCHEDULER_LOOP_INTERVAL=0.02, RUNTIME_POLL_INTERVAL=0.2)
    base.update(overrides)
    return Config(_env_file=None, **base)


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


def sample_job(model: str = "m", priority: Priority = Priority.NORMAL, submitted_at: float | None = None,
               **extra) -> dict:
    job = new_job(model=model, kind=JobKind.GENERATE, priority=priority,
                  submitted_at=time.time() if submitted_at is None else submitted_at,
                  timeout_s=30, prompt="hi")
    job.update(extra)
    return job


@pytest.fixture(params=["sqlite", "memory"])
def store(request, tmp_path):
    """Every store backend the contract holds for (MongoDB joins in test_store_mongo)."""
    s = SqliteStore(tmp_path / "jobs.db") if request.param == "sqlite" else SqliteStore.in_memory()
    yield s
    s.close()


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
        self.started = []

    def __call__(self, **overrides):
        from api import create_app
        from service import Service

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


@pytest.fixture
def running_service(tmp_path):
    runner = ServiceRunner(tmp_path)
    yield runner
    runner.stop()


@pytest.fixture(scope="module")
def module_service(tmp_path_factory):
    runner = ServiceRunner(tmp_path_factory.mktemp("service"))
    yield runner
    runner.stop()
