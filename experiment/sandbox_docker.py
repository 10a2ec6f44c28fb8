"""The same check in a Docker container, where a Docker engine answers (the `docker` SDK):
no network, read-only root, memory, CPU and process limits equal to the process sandbox's,
the program mounted read-only and a small tmpfs as its only writable place."""
from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import requests
from docker.types import LogConfig

from experiment.sandbox import Limits, SandboxResult, verdict_of

IMAGE = "python:3.11-slim"
# as the process sandbox runs it: not as __main__ (see sandbox_guard.py)
_RUN_AS_SANDBOX = ("exec(compile(open('/check/program.py').read(), '/check/program.py', 'exec'), "
                   "{'__name__': '__sandbox__'})")


class DockerSandbox:
    name = "docker"

    def __init__(self, limits: Limits | None = None, image: str = IMAGE):
        import docker

        self.limits = limits or Limits()
        self.image = image
        self.client = docker.from_env(timeout=int(self.limits.wall_s) + 30)
        self.client.ping()                   # fail now, clearly, when no engine answers

    def run(self, program: str, must_print: str | None = None) -> SandboxResult:
        limits = self.limits
        work = Path(tempfile.mkdtemp(prefix="mm-docker-sandbox-"))
        (work / "program.py").write_text(program, encoding="utf-8")
        started = time.monotonic()
        container = self.client.containers.run(
            self.image, ["python", "-I", "-B", "-c", _RUN_AS_SANDBOX], detach=True, network_disabled=True,
            read_only=True, mem_limit=limits.memory_bytes, memswap_limit=limits.memory_bytes, nano_cpus=10**9,
            pids_limit=limits.processes, working_dir="/tmp", user="65534:65534",
            tmpfs={"/tmp": f"size={limits.output_bytes},mode=1777"},
            volumes={str(work): {"bind": "/check", "mode": "ro"}},
            ulimits=[_ulimit("cpu", limits.cpu_s), _ulimit("fsize", limits.output_bytes),
                     _ulimit("nofile", limits.open_files), _ulimit("core", 0)],
            security_opt=["no-new-privileges"], cap_drop=["ALL"],
            # the engine keeps no more output than the check may print
            log_config=LogConfig(type="json-file", config={"max-size": str(limits.output_bytes), "max-file": "1"}))
        timed_out = False
        try:
            status = container.wait(timeout=limits.wall_s)
            code = status.get("StatusCode")
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            timed_out, code = True, None       # the wait timed out: the whole container goes
        try:
            stdout = container.logs(stdout=True, stderr=False)[: limits.output_bytes].decode("utf-8", "replace")
            stderr = container.logs(stdout=False, stderr=True)[: limits.output_bytes].decode("utf-8", "replace")
            oom = bool(container.attrs.get("State", {}).get("OOMKilled"))
        finally:
            container.remove(force=True)
            shutil.rmtree(work, ignore_errors=True)
        if oom:
            stderr += "\nMemoryError: the container was killed for memory"
        # docker reports 128 + signal for a killed process; the verdict reads a negative signal
        if code is not None and code > 128:
            code = -(code - 128)
        over_output = max(len(stdout), len(stderr)) >= limits.output_bytes
        result = verdict_of(code, timed_out, over_output, stdout, stderr, time.monotonic() - started, 0.0,
                            ("container", "no-network", "read-only-root", "pids-limit", "mem-limit"))
        if result.passed and must_print is not None and must_print not in stdout.splitlines():
            return replace(result, passed=False,
                           error="exited with status 0 before the end of the program (its tests did not all run)")
        return result


def _ulimit(name: str, value: int):
    from docker.types import Ulimit
    return Ulimit(name=name, soft=value, hard=value)
