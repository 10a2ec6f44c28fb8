"""What a job used while it ran: its share of the runtime process's CPU, the process's memory,
the host's CPU, and its share of the GPU's energy and busy time. The engine starts a
`JobSample` when a job gets its slot and adds what `stop()` returns to the job's metrics and
its ledger entry.

Shared resources are divided, not charged whole to every job (`resource_shares`): a runner
process serving several jobs at once, or a GPU serving several models, has its counters split
among the jobs active in each interval, so that the jobs' CPU seconds (and joules, and GPU busy
seconds) add up to what the OS (or the driver) counted. Each figure says how many jobs shared it
(`runner_jobs_max`/`_mean`, `gpu_jobs_max`/`_mean`). Memory (peak RSS, GPU memory in use) is
reported as the process's or device's own: memory held by a loaded model is not consumed by a
job, and `model_size_bytes` says what the model itself took.

Cheap by construction: the process's CPU counter is read when a job starts or stops (exact, not
sampled); peak RSS once per running job every SAMPLE_INTERVAL_S; GPU utilisation from the
readings the resource monitor takes anyway (`observe`); the GPU energy counter when a job starts
or stops. The sampler keeps count of its own CPU time (`cost()`).
"""
from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil

from metering.shares import Share, SharedCounter
from runtime.client import OllamaClient, RuntimeFailure
from runtime.readings import ResourceState
from telemetry.logs import get_logger

log = get_logger("MONITOR")
SAMPLE_INTERVAL_S = 0.5


def _busy_cpu_seconds(times: Any) -> float:
    return sum(getattr(times, k, 0.0) for k in ("user", "system", "nice", "irq", "softirq", "steal"))


@dataclass
class _Running:
    model: str
    started: float
    process: psutil.Process | None
    host_cpu0: Any
    peak_rss: int = 0
    gpu_used: list[int] = field(default_factory=list)
    model_size: int = 0
    model_size_vram: int = 0


class JobSampleHandle:
    def __init__(self, sampler: ResourceSampler, running: _Running):
        self._sampler = sampler
        self._running = running

    def stop(self) -> dict[str, Any]:
        return self._sampler._finish(self._running)


class _GpuBusy:
    """Seconds the GPU was busy (utilisation x time), integrated from the monitor's readings."""

    def __init__(self) -> None:
        self.total = 0.0
        self.util = 0.0
        self.at: float | None = None

    def observe(self, util_pct: float, at: float) -> None:
        if self.at is not None and at > self.at:
            self.total += self.util / 100.0 * (at - self.at)
        self.util, self.at = util_pct, at

    def value(self, now: float) -> float | None:
        if self.at is None:
            return None
        return self.total + self.util / 100.0 * max(now - self.at, 0.0)


class ResourceSampler:
    """The `JobMeter` of job_metrics: what each running job's runtime process and GPU did."""

    def __init__(self, pid_of: Callable[[str], int | None], gpu: Any = None,
                 interval: float = SAMPLE_INTERVAL_S, clock: Callable[[], float] = time.time):
        self.pid_of = pid_of
        self.gpu = gpu                      # anything with energy_total_j() (NVML, the simulator), or None
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[int, _Running] = {}
        self._cpu: dict[tuple[int, float], SharedCounter] = {}      # per runner process (pid, start time)
        self._energy = SharedCounter()
        self._busy = SharedCounter()
        self._gpu_busy = _GpuBusy()
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
            except psutil.Error:
                process = None
        running = _Running(model, self.clock(), process, psutil.cpu_times())
        latest = self._latest
        if latest is not None:
            info = next((m for m in latest.loaded if m.name == model), None)
            if info is not None:
                running.model_size, running.model_size_vram = info.size, info.size_vram
        key = id(running)
        with self._lock:
            now = self.clock()
            running.started = now
            if process is not None:
                self._cpu.setdefault(_identity(process), SharedCounter()).join(key, self._process_cpu(process), now)
                running.peak_rss = self._rss(process)
            self._energy.join(key, self._energy_j(), now)
            self._busy.join(key, self._gpu_busy.value(now), now)
            self._jobs[key] = running
        return JobSampleHandle(self, running)

    def _finish(self, running: _Running) -> dict[str, Any]:
        cpu0 = time.thread_time()
        try:
            return self._stop_sample(running)
        finally:
            self._count(cpu0)

    def _stop_sample(self, running: _Running) -> dict[str, Any]:
        key = id(running)
        cpu_share = None
        with self._lock:
            now = self.clock()
            self._jobs.pop(key, None)
            if running.process is not None:
                identity = _identity(running.process)
                counter = self._cpu.get(identity)
                if counter is not None:
                    cpu_share = counter.leave(key, self._process_cpu(running.process), now)
                    if not counter:
                        del self._cpu[identity]
                running.peak_rss = max(running.peak_rss, self._rss(running.process))
            energy_now = self._energy_j()
            energy_share = self._energy.leave(key, energy_now, now)
            busy_share = self._busy.leave(key, self._gpu_busy.value(now), now)
        wall = max(now - running.started, 1e-9)
        out: dict[str, Any] = {"model_size_bytes": running.model_size, "model_size_vram_bytes": running.model_size_vram}
        host1 = psutil.cpu_times()
        busy = _busy_cpu_seconds(host1) - _busy_cpu_seconds(running.host_cpu0)
        total = sum(host1) - sum(running.host_cpu0)
        out["host_cpu_pct"] = round(100.0 * busy / total, 2) if total > 0 else 0.0
        if running.process is not None and cpu_share is not None and running.peak_rss:
            out.update(runtime_pid=running.process.pid, runtime_cpu_s=round(cpu_share.amount, 4),
                       runtime_cpu_pct=round(100.0 * cpu_share.amount / wall, 2),
                       runtime_peak_rss_bytes=running.peak_rss, **_sharing("runner", cpu_share, now))
        if not running.gpu_used and self._latest is not None and self._latest.gpus:
            self._observe_memory(running, self._latest)
        if running.gpu_used:
            out["gpu_memory_used_bytes"] = int(sum(running.gpu_used) / len(running.gpu_used))
            out["gpu_memory_used_max_bytes"] = max(running.gpu_used)
        if busy_share is not None and self._gpu_busy.at is not None:
            out["gpu_utilization_pct"] = round(100.0 * busy_share.amount / wall, 2)
            out["gpu_busy_s"] = round(busy_share.amount, 4)
            out.update(_sharing("gpu", busy_share, now))
        if energy_share is not None and energy_now is not None:
            out["gpu_energy_j"] = round(energy_share.amount, 3)
        return out

    def _process_cpu(self, process: psutil.Process) -> float | None:
        try:
            return _busy_cpu_seconds(process.cpu_times())
        except psutil.Error:
            return None                       # the runner is gone (crashed): no figure for this stretch

    @staticmethod
    def _rss(process: psutil.Process) -> int:
        try:
            return process.memory_info().rss
        except psutil.Error:
            return 0

    # --- readings -------------------------------------------------------------------------------
    def observe(self, state: ResourceState) -> None:
        """A new reading from the resource monitor: GPU figures for every running job."""
        self._latest = state
        if not state.gpus:
            return
        utils = [g.utilization_pct for g in state.gpus if g.utilization_pct is not None]
        with self._lock:
            if utils:
                self._gpu_busy.observe(sum(utils) / len(utils), state.taken_at)
            for running in self._jobs.values():
                self._observe_memory(running, state)

    @staticmethod
    def _observe_memory(running: _Running, state: ResourceState) -> None:
        running.gpu_used.append(sum(g.memory_total - g.memory_free for g in state.gpus))

    def _energy_j(self) -> float | None:
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
                    running.peak_rss = max(running.peak_rss, self._rss(running.process))
            self._count(cpu0)

    def cost(self) -> dict[str, float]:
        """The sampler's own CPU time, as seconds and as a share of one core since it started."""
        wall = max(time.monotonic() - self._since, 1e-9)
        return {"cpu_s": round(self._own_cpu, 4), "cpu_pct_of_core": round(100.0 * self._own_cpu / wall, 4)}

    def close(self) -> None:
        self._stop.set()


def _identity(process: psutil.Process) -> tuple[int, float]:
    """A process, told apart from a later one that reuses its pid."""
    try:
        return process.pid, process.create_time()
    except psutil.Error:
        return process.pid, 0.0


def _sharing(prefix: str, share: Share, now: float) -> dict[str, Any]:
    return {f"{prefix}_jobs_max": share.max_sharing, f"{prefix}_jobs_mean": round(share.mean_sharing(now), 3)}


class RunnerPids:
    """Which OS process runs each loaded model: the `pid` in `/api/ps` when the runtime gives it
    (the embedded runtime), else, for a local Ollama, the `ollama runner` process whose command
    line names the model's blob (from `/api/show`'s modelfile)."""

    def __init__(self, client: OllamaClient, latest: Callable[[], ResourceState | None]):
        self.client = client
        self.latest = latest
        self._blob: dict[str, str | None] = {}
        self._runner: dict[str, int] = {}          # model -> the ollama runner pid found last time

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
        cached = self._runner.get(model)
        if cached is not None:                      # one read of /proc instead of a scan of all processes
            try:
                if any(blob in part for part in psutil.Process(cached).cmdline()):
                    return cached
            except psutil.Error:
                pass
        for proc in psutil.process_iter(["pid", "cmdline"]):
            cmdline = proc.info.get("cmdline") or []
            if "runner" in cmdline and any(blob in part for part in cmdline):
                self._runner[model] = proc.info["pid"]
                return proc.info["pid"]
        return None
