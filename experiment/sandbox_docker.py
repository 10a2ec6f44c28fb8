"""The same check in a Docker container, where a Docker engine answers (the `docker` SDK):
no network, read-only root, memory, CPU and process limits equal to the process sandbox's,
the program and the guard mounted read-only and a small tmpfs as the only writable place.

Inside, sandbox_guard.py runs as in the process sandbox (`run`, or `judge` with the candidate
in its own process). The judge's secret (the tests and the closing line) comes in its
environment, which it empties before the candidate starts; its process is undumpable, so the
candidate, of the same user in the same container, cannot read /proc/1/environ or its memory.
Landlock and the pids cgroup are the container's own here: read-only root, `pids_limit`.
"""
from __future__ import annotations

import json
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from docker.errors import DockerException
from docker.types import LogConfig, Ulimit

from experiment.sandbox import GUARD, Limits, SandboxResult, require_line, verdict_of

IMAGE = "python:3.11-slim"
_SECRET = "MM_JUDGE"


class DockerSandbox:
    name = "docker"

    def __init__(self, limits: Limits | None = None, image: str = IMAGE):
        import docker

        self.limits = limits or Limits()
        self.image = image
        self.client = docker.from_env(timeout=int(self.limits.wall_s) + 30)
        self.client.ping()                   # fail now, clearly, when no engine answers

    def run(self, program: str) -> SandboxResult:
        return self._launch({"program.py": program}, ["run", "/tmp", "/check/program.py", "1", "1"], {})

    def check(self, candidate: str, tests: str, entry_point: str) -> SandboxResult:
        closing_line = f"all tests ran {secrets.token_hex(16)}"
        secret = json.dumps({"tests": tests, "closing_line": closing_line})
        result = self._launch({"candidate.py": candidate},
                              ["judge", "/tmp", f"env:{_SECRET}", "/check/candidate.py", entry_point, "1", "1"],
                              {_SECRET: secret})
        return require_line(result, closing_line)

    def _launch(self, files: dict[str, str], guard_args: list[str], environment: dict[str, str]) -> SandboxResult:
        """The check in a container; whatever the engine does, a failed result rather than an
        exception into the harness, and neither the folder nor the container left behind."""
        work = Path(tempfile.mkdtemp(prefix="mm-docker-sandbox-"))
        container = None
        try:
            for name, text in files.items():
                (work / name).write_text(text, encoding="utf-8")
            started = time.monotonic()
            container = self._start(work, guard_args, environment)
            return self._collect(container, started)
        except DockerException as exc:
            return verdict_of(None, False, False, "", f"the Docker engine failed: {exc}", 0.0, 0.0, ("container",))
        finally:
            if container is not None:
                try:
                    container.remove(force=True)
                except DockerException:
                    pass
            shutil.rmtree(work, ignore_errors=True)

    def _start(self, work: Path, guard_args: list[str], environment: dict[str, str]) -> Any:
        limits = self.limits
        return self.client.containers.run(
            self.image, ["python", "-I", "-S", "-B", "/guard/sandbox_guard.py", *guard_args], detach=True,
            environment=environment, network_disabled=True, read_only=True,
            mem_limit=limits.memory_bytes, memswap_limit=limits.memory_bytes, nano_cpus=10**9,
            pids_limit=limits.processes, working_dir="/tmp", user="65534:65534",
            tmpfs={"/tmp": f"size={limits.output_bytes},mode=1777"},
            volumes={str(work): {"bind": "/check", "mode": "ro"},
                     str(GUARD.parent): {"bind": "/guard", "mode": "ro"}},
            ulimits=[_ulimit("cpu", limits.cpu_s), _ulimit("fsize", limits.output_bytes),
                     _ulimit("nofile", limits.open_files), _ulimit("core", 0)],
            security_opt=["no-new-privileges"], cap_drop=["ALL"],
            # the engine keeps no more output than the check may print
            log_config=LogConfig(type="json-file", config={"max-size": str(limits.output_bytes), "max-file": "1"}))

    def _collect(self, container: Any, started: float) -> SandboxResult:
        limits = self.limits
        timed_out = False
        try:
            status = container.wait(timeout=limits.wall_s)
            code = status.get("StatusCode")
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out, code = True, None       # the wait timed out: the whole container goes
        stdout = container.logs(stdout=True, stderr=False)[: limits.output_bytes].decode("utf-8", "replace")
        stderr = container.logs(stdout=False, stderr=True)[: limits.output_bytes].decode("utf-8", "replace")
        if bool(container.attrs.get("State", {}).get("OOMKilled")):
            stderr += "\nMemoryError: the container was killed for memory"
        # the engine reports 128 + signal for a killed process (and cannot tell it from a program
        # that exits with such a status itself); the verdict reads a negative signal
        if code is not None and code > 128:
            code = -(code - 128)
        over_output = max(len(stdout), len(stderr)) >= limits.output_bytes
        return verdict_of(code, timed_out, over_output, stdout, stderr, time.monotonic() - started, 0.0,
                          ("container", "no-network", "read-only-root", "pids-limit", "mem-limit", "audit-hook"))


def _ulimit(name: str, value: int) -> Ulimit:
    return Ulimit(name=name, soft=value, hard=value)
