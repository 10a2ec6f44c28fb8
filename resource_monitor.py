"""What the machine and the runtime look like right now. Reports; decides nothing.

A `ResourceState` brings together: the memory the scheduler plans with (a GPU through NVML or
nvidia-smi, the simulator's virtual GPU, or a fixed budget of host RAM), the models the runtime
has loaded (`/api/ps`), and the host's CPU and RAM (psutil).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import psutil

from runtime.client import OllamaClient, RuntimeFailure
from runtime.gpu_probe import GpuSource
from runtime.readings import GpuReading, HostReading, LoadedModelInfo, ResourceState
from telemetry.logs import get_logger

log = get_logger("MONITOR")


class MemorySource(Protocol):
    """Where the planning total and current use come from."""
    name: str
    counts_vram: bool            # a model's footprint is its size_vram (GPU) or its size (RAM)

    @property
    def energy_source(self) -> object:
        """Something with energy_total_j() (NVML, the simulator), or None."""
        ...

    def read(self, loaded_bytes: int) -> tuple[int, int, tuple[GpuReading, ...]]:
        """(total, used, per-GPU readings); `loaded_bytes` is what the loaded models take."""
        ...


class GpuMemory:
    """A real GPU (or several: their memory is added up, as Ollama spreads models over them)."""
    counts_vram = True

    def __init__(self, gpu: GpuSource, cap_bytes: int = 0):
        self.gpu = gpu
        self.name = gpu.name
        self.cap_bytes = cap_bytes
        self.energy_source = gpu

    def read(self, loaded_bytes: int) -> tuple[int, int, tuple[GpuReading, ...]]:
        readings = tuple(self.gpu.read())
        total = sum(r.memory_total for r in readings)
        # total - free, not "used": the driver's reserved memory is not free either
        used = sum(r.memory_total - r.memory_free for r in readings)
        if self.cap_bytes and total > self.cap_bytes:   # VRAM_TOTAL_MB: plan with a share only
            used = max(used - (total - self.cap_bytes), loaded_bytes)
            total = self.cap_bytes
        return total, used, readings


class FixedMemory:
    """No GPU: a fixed budget (VRAM_TOTAL_MB, or a share of host RAM) used by the loaded models."""
    counts_vram = False
    energy_source = None

    def __init__(self, total_bytes: int, name: str):
        self.total_bytes = total_bytes
        self.name = name

    def read(self, loaded_bytes: int) -> tuple[int, int, tuple[GpuReading, ...]]:
        return self.total_bytes, loaded_bytes, ()


class SimulatorMemory:
    """The GPU simulator's virtual GPU, read from its `/api/sim/stats` (its simulated energy
    counter too)."""
    counts_vram = True
    name = "sim"

    def __init__(self, client: OllamaClient, energy_counter: bool = True):
        self.client = client
        # the counter is read when each job starts and ends (an HTTP request here): off, no job
        # gets an energy figure, as on a GPU without the counter
        self.energy_source = self if energy_counter else None

    def energy_total_j(self) -> float | None:
        value = self.client.get_json("/api/sim/stats", timeout=2.0).get("energy_j")
        return float(value) if value is not None else None

    def read(self, loaded_bytes: int) -> tuple[int, int, tuple[GpuReading, ...]]:
        stats = self.client.get_json("/api/sim/stats")
        total, used = int(stats["vram_total_bytes"]), int(stats["vram_used_bytes"])
        gpus = stats.get("gpus") or [{"index": 0, "total_bytes": total, "used_bytes": used}]
        return total, used, tuple(
            GpuReading(int(g["index"]), "simulated GPU", f"sim-{g['index']}", int(g["total_bytes"]),
                       int(g["used_bytes"]), int(g["total_bytes"]) - int(g["used_bytes"]), stats.get("utilization_pct"))
            for g in gpus)


def host_reading() -> HostReading:
    vm = psutil.virtual_memory()
    return HostReading(psutil.cpu_percent(interval=None), vm.total, vm.available)


def parse_ps(entries: list[dict], counts_vram: bool) -> tuple[LoadedModelInfo, ...]:
    out = []
    for e in entries:
        size = int(e.get("size") or 0)
        size_vram = int(e.get("size_vram") or 0)
        out.append(LoadedModelInfo(
            name=str(e.get("name") or e.get("model")), size=size, size_vram=size_vram,
            expires_at=e.get("expires_at"), footprint=size_vram if counts_vram else size,
            pid=int(e["pid"]) if isinstance(e.get("pid"), int) else None,
            context_length=int(e.get("context_length") or 0)))
    return tuple(out)


@dataclass
class ResourceMonitor:
    client: OllamaClient
    memory: MemorySource
    clock: Callable[[], float] = time.time
    _last_error: str | None = field(default=None, init=False)

    def sample(self) -> ResourceState:
        now = self.clock()
        try:
            loaded = parse_ps(self.client.ps(), self.memory.counts_vram)
            runtime_ok, error = True, None
        except RuntimeFailure as exc:
            loaded, runtime_ok, error = (), False, str(exc)
        if error != self._last_error:
            (log.warning if error else log.info)("runtime %s", error or "answers again")
            self._last_error = error
        try:
            total, used, gpus = self.memory.read(sum(m.footprint for m in loaded))
        except (RuntimeFailure, OSError, KeyError, ValueError) as exc:
            log.warning("cannot read memory from %s: %s", self.memory.name, exc)
            total, used, gpus = 0, 0, ()
        return ResourceState(now, self.memory.name, total, used, gpus, loaded, runtime_ok, error,
                             host_reading())
