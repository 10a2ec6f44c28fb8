"""What a job used while it ran: the runtime process's CPU and memory, the host's CPU, and the
GPU's memory, utilisation and energy. The engine starts a `JobSample` when a job starts and adds
what `stop()` returns to the job's metrics and its ledger entry.

Cheap by construction: CPU time comes from two reads of the process's own counters (start and
stop: exact, not sampled); peak RSS from one psutil read per running job every SAMPLE_INTERVAL_S;
GPU figures from the readings the resource monitor takes anyway (`observe`), plus two reads of
NVML's energy counter. The sampler keeps count of its own CPU time (`cost()`).
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from gpu_probe import GpuSource
from log_setup import get_logger
from resource_monitor import ResourceState
from runtime_client import OllamaClient, RuntimeFailure

log = get_logger("MONITOR")
SAMPLE_INTERVAL_S = 0.5


def _busy_cpu_seconds(times: Any) -> float:
    return sum(getattr(times, k, 0.0) for k in ("user", "system", "nice", "irq", "softirq", "steal"))


@dataclass
class _Running:
    model: str
    started: float
    process: psutil.Process | None
    proc_cpu0: float
    host_cpu0: Any
    energy0: float | None
    peak_rss: int = 0
    gpu_used: list[int] = field(default_factory=list)
    gpu_util: list[float] = field(default_factory=list)
    model_size: int = 0
    model_size_vram: int = 0


class JobSampleHandle:
    def __init__(self, sampler: ResourceSampler, running: _Running):
        self._sampler = sampler
        self._running = running

    def stop(self) -> dict[str, Any]:
        return self._sampler._finish(self._running)


class ResourceSampler:
    """The `JobMeter` of job_metrics: samples what each running job's runtime process uses."""

    def __init__(self, pid_of: Callable[[str], int | None], gpu: GpuSource | None = None,
                 interval: float = SAMPLE_INTERVAL_S):
        self.pid_of = pid_of
        self.gpu = gpu
        self.interval = interval
        self._lock = threading.Lock()
        self._running: set[int] = set()
        self._jobs: dict[int, _Running] = {}
        self._latest: ResourceState | None = None
        self._own_cpu = 0.0
        self._since = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="resource-sampler", daemon=True)
        self._thread.start()

    # --- the engine's side ----------------------------------------------------------------------
    def start(self, model: str) -> JobSampleHandle:
        cpu0 = time.thread_time()
        try:
            return self._start(model)
        finally:
            self._count(cpu0)

    def _count(self, cpu0: float) -> None:
        spent = time.thread_time() - cpu0
        with self._lock:
            self._own_cpu += spent

    def _start(self, model: str) -> JobSampleHandle:
        process = None
        pid = self.pid_of(model)
        if pid:
            try:
                process = psutil.Process(pid)
                proc_cpu0 = _busy_cpu_seconds(process.cpu_times())
                rss = process.memory_info().rss
            except psutil.Error:
                process, proc_cpu0, rss = None, 0.0, 0
        else:
            proc_cpu0, rss = 0.0, 0
        running = _Running(model, time.monotonic(), process, proc_cpu0, psutil.cpu_times(),
                           self._energy(), peak_rss=rss)
        latest = self._latest
        if latest is not None:
            info = next((m for m in latest.loaded if m.name == model), None)
            if info is not None:
                running.model_size, running.model_size_vram = info.size, info.size_vram
        with self._lock:
            self._jobs[id(running)] = running
        return JobSampleHandle(self, running)

    def _finish(self, running: _Running) -> dict[str, Any]:
        cpu0 = time.thread_time()
        try:
            return self._stop_sample(running)
        finally:
            self._count(cpu0)

    def _stop_sample(self, running: _Running) -> dict[str, Any]:
        with self._lock:
            self._jobs.pop(id(running), None)
        wall = max(time.monotonic() - running.started, 1e-9)
        out: dict[str, Any] = {"model_size_bytes": running.model_size, "model_size_vram_bytes": running.model_size_vram}
        host1 = psutil.cpu_times()
        busy = _busy_cpu_seconds(host1) - _busy_cpu_seconds(running.host_cpu0)
        total = sum(host1) - sum(running.host_cpu0)
        out["host_cpu_pct"] = round(100.0 * busy / total, 2) if total > 0 else 0.0
        if running.process is not None:
            try:
                cpu = _busy_cpu_seconds(running.process.cpu_times()) - running.proc_cpu0
                running.peak_rss = max(running.peak_rss, running.process.memory_info().rss)
                out.update(runtime_pid=running.process.pid, runtime_cpu_s=round(cpu, 4),
                           runtime_cpu_pct=round(100.0 * cpu / wall, 2), runtime_peak_rss_bytes=running.peak_rss)
            except psutil.Error:
                pass          # the runner is gone (crashed): no process figures for this job
        if not running.gpu_used and self._latest is not None and self._latest.gpus:
            self._observe_into(running, self._latest)
        if running.gpu_used:
            out["gpu_memory_used_bytes"] = int(sum(running.gpu_used) / len(running.gpu_used))
            out["gpu_memory_used_max_bytes"] = max(running.gpu_used)
        if running.gpu_util:
            out["gpu_utilization_pct"] = round(sum(running.gpu_util) / len(running.gpu_util), 2)
        energy1 = self._energy()
        if running.energy0 is not None and energy1 is not None:
            out["gpu_energy_j"] = round(energy1 - running.energy0, 3)
        return out

    # --- readings -------------------------------------------------------------------------------
    def observe(self, state: ResourceState) -> None:
        """A new reading from the resource monitor: GPU figures for every running job."""
        self._latest = state
        if not state.gpus:
            return
        with self._lock:
            for running in self._jobs.values():
                self._observe_into(running, state)

    @staticmethod
    def _observe_into(running: _Running, state: ResourceState) -> None:
        running.gpu_used.append(sum(g.memory_total - g.memory_free for g in state.gpus))
        utils = [g.utilization_pct for g in state.gpus if g.utilization_pct is not None]
        if utils:
            running.gpu_util.append(sum(utils) / len(utils))

    def _energy(self) -> float | None:
        reader = getattr(self.gpu, "energy_total_j", None)
        if reader is None:
            return None
        try:
            return reader()
        except Exception:        # the counter is optional (Volta and newer); absent means absent
            return None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            cpu0 = time.thread_time()
            with self._lock:
                jobs = list(self._jobs.values())
            for running in jobs:
                if running.process is not None:
                    try:
                        running.peak_rss = max(running.peak_rss, running.process.memory_info().rss)
                    except psutil.Error:
                        pass
            self._count(cpu0)

    def cost(self) -> dict[str, float]:
        """The sampler's own CPU time, as seconds and as a share of one core since it started."""
        wall = max(time.monotonic() - self._since, 1e-9)
        return {"cpu_s": round(self._own_cpu, 4), "cpu_pct_of_core": round(100.0 * self._own_cpu / wall, 4)}

    def close(self) -> None:
        self._stop.set()


class RunnerPids:
    """Which OS process runs each loaded model: the `pid` in `/api/ps` when the runtime gives it
    (the embedded runtime), else, for a local Ollama, the `ollama runner` process whose command
    line names the model's blob (from `/api/show`'s modelfile)."""

    def __init__(self, client: OllamaClient, latest: Callable[[], ResourceState | None]):
        self.client = client
        self.latest = latest
        self._blob: dict[str, str | None] = {}

    def __call__(self, model: str) -> int | None:
        state = self.latest()
        if state is not None:
            info = next((m for m in state.loaded if m.name == model), None)
            if info is not None:
                return info.pid or self._ollama_runner(model)
        # Not in the last reading (it loaded a moment ago): ask the runtime now.
        try:
            entry = next((e for e in self.client.ps() if e.get("name") == model), None)
        except RuntimeFailure:
            entry = None
        if entry is not None and isinstance(entry.get("pid"), int):
            return entry["pid"]
        return self._ollama_runner(model)

    def _ollama_runner(self, model: str) -> int | None:
        if model not in self._blob:
            try:
                modelfile = self.client.show(model).get("modelfile") or ""
            except RuntimeFailure:
                return None
            match = re.search(r"^FROM\s+(\S+)", modelfile, re.MULTILINE)
            self._blob[model] = match.group(1) if match and match.group(1).startswith("/") else None
        blob = self._blob[model]
        if not blob:
            return None
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if "runner" in cmdline and any(blob in part for part in cmdline):
                return proc.info["pid"]
        return None
