"""What a reading of a node says: its GPUs, the runtime's loaded models, the host, and memory
the scheduler may plan with. Plain data (pure): the monitors that take readings
(resource_monitor.py, runtime/gpu_probe.py) build these; the scheduling packages read them."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GpuReading:
    index: int
    name: str
    uuid: str
    memory_total: int            # bytes
    memory_used: int
    memory_free: int
    utilization_pct: float | None = None
    power_w: float | None = None
    energy_j: float | None = None  # total since the driver loaded (NVML only; Volta and newer)
    temperature_c: float | None = None


@dataclass(frozen=True)
class LoadedModelInfo:
    """One entry of the runtime's `/api/ps`."""
    name: str
    size: int
    size_vram: int
    expires_at: str | None
    footprint: int               # bytes it takes from the memory the scheduler plans with
    pid: int | None = None       # the runner process, where the runtime says (the embedded one does)
    context_length: int = 0      # the context it was loaded with (0: the runtime does not say)


@dataclass(frozen=True)
class HostReading:
    cpu_percent: float
    ram_total: int
    ram_available: int


@dataclass(frozen=True)
class ResourceState:
    taken_at: float
    memory_source: str
    memory_total: int            # bytes the scheduler may plan with, before the safety margin
    memory_used: int             # bytes in use on that memory, by anyone
    gpus: tuple[GpuReading, ...] = ()
    loaded: tuple[LoadedModelInfo, ...] = ()
    runtime_ok: bool = True
    runtime_error: str | None = None
    host: HostReading | None = None

    @property
    def memory_free(self) -> int:
        return max(self.memory_total - self.memory_used, 0)

    @property
    def used_by_others(self) -> int:
        """Memory in use that is not the runtime's loaded models (desktop, other programs)."""
        return max(self.memory_used - sum(m.footprint for m in self.loaded), 0)
