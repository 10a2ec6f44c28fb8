"""The tests' fixtures. What they share besides fixtures is in helpers.py."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from config import Config
from helpers import ROOT, STORE_BACKENDS, MainProcess, ServiceRunner, drop_mongo, free_port, make_config, mongo_store, wait_until
from store.sqlite import SqliteStore


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return make_config(tmp_path)


@pytest.fixture(scope="session")
def nx_mongo(tmp_path_factory):
    """A MongoDB wire-protocol server (nx-27017, on SQLite) for the MongoDB store's tests; it has
    its own pid file, log file and port so that parallel runs never collide."""
    directory = tmp_path_factory.mktemp("nx27017")
    port = free_port()
    exe = Path(sys.executable).parent / "nx-27017"
    proc = subprocess.Popen([str(exe), "--db", str(directory / "nx.db"), "--host", "127.0.0.1", "-p", str(port),
                             "--pid-file", str(directory / "nx.pid"), "--log-file", str(directory / "nx.log")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    uri = f"mongodb://127.0.0.1:{port}/"

    def ready():
        from pymongo import MongoClient
        client: MongoClient[dict[str, Any]]
        try:
            with MongoClient(uri, serverSelectionTimeoutMS=300) as client:
                client.admin.command("ping")
            return True
        except Exception:
            return False
    wait_until(ready, timeout=30, message="nx-27017 to answer")
    yield uri
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:       # it sometimes ignores SIGTERM while busy
        proc.kill()
        proc.wait(10)


@pytest.fixture(params=STORE_BACKENDS)
def store(request, tmp_path):
    """Every store backend the contract holds for: SQLite on a file and in memory, MongoDB through
    nx-27017 always, and a real MongoDB when MONGODB_URI is set."""
    if request.param.startswith("mongodb"):
        uri = request.getfixturevalue("nx_mongo") if request.param == "mongodb-nx" else os.environ["MONGODB_URI"]
        s = mongo_store(uri)
        yield s
        drop_mongo(s)
        return
    s = SqliteStore(tmp_path / "jobs.db") if request.param == "sqlite" else SqliteStore.in_memory()
    yield s
    s.close()


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


@pytest.fixture
def main_process(tmp_path):
    """Factory: start `main.py` with extra arguments and environment; stopped at the end."""
    started: list[MainProcess] = []

    def start(args=("--backend", "sim"), **env) -> MainProcess:
        proc = MainProcess(tmp_path / f"main{len(started)}", list(args), {k: str(v) for k, v in env.items()})
        proc.directory.mkdir(parents=True, exist_ok=True)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture(scope="session")
def model_cache() -> Path:
    """Joined model files, kept between test runs (joining qwen takes seconds)."""
    path = ROOT / ".cache" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
