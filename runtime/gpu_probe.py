"""Reading NVIDIA GPUs: NVML through `nvidia-ml-py` first, `nvidia-smi` as the fallback.

Both readers return the same `GpuReading` values (bytes, percent, watts, joules), so the rest
of the service never knows which one answered. The parsers are pure functions of the text or
the NVML values, tested against recorded output of real GPUs.
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from runtime.readings import GpuReading

MIB = 1024 * 1024

QUERY_FIELDS = ("index", "name", "uuid", "memory.total", "memory.used", "memory.free",
                "utilization.gpu", "power.draw", "temperature.gpu")
APPS_FIELDS = ("pid", "process_name", "gpu_uuid", "used_gpu_memory")


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    gpu_uuid: str
    used_memory: int | None      # bytes; None where the driver does not say


class GpuSource(Protocol):
    name: str

    def read(self) -> list[GpuReading]: ...

    def processes(self) -> list[GpuProcess]: ...


# --- nvidia-smi ---------------------------------------------------------------------------------
def _clean_header(name: str) -> str:
    """`memory.used [MiB]` -> `memory.used`."""
    return name.split("[", 1)[0].strip()


def _number(value: str | None) -> float | None:
    """`25 MiB`, `12 %`, `588.39 W`, `81559` -> float; `[N/A]`, `[Not Supported]`, `` -> None."""
    if value is None:
        return None
    text = value.strip()
    if not text or text.startswith("[") or text.upper() in ("N/A", "NOT SUPPORTED"):
        return None
    text = text.split()[0]
    try:
        return float(text)
    except ValueError:
        return None


def _csv_rows(text: str) -> list[dict[str, str]]:
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return []
    reader = csv.reader(io.StringIO("\n".join(lines)), skipinitialspace=True)
    header = [_clean_header(h) for h in next(reader)]
    return [dict(zip(header, (v.strip() for v in row), strict=False)) for row in reader if row]


def parse_query_gpu_csv(text: str) -> list[GpuReading]:
    """Parse `nvidia-smi --query-gpu=... --format=csv` (with or without `noheader`/`nounits`
    handled by the caller passing a header) into readings. Memory values are MiB."""
    readings = []
    for i, row in enumerate(_csv_rows(text)):
        total = _number(row.get("memory.total"))
        used = _number(row.get("memory.used"))
        free = _number(row.get("memory.free"))
        if total is None:
            continue
        if used is None and free is not None:
            used = total - free
        if free is None and used is not None:
            free = total - used
        index = _number(row.get("index"))
        readings.append(GpuReading(
            index=int(index) if index is not None else i,
            name=row.get("name", ""),
            uuid=row.get("uuid", ""),
            memory_total=int(total * MIB),
            memory_used=int((used or 0) * MIB),
            memory_free=int((free or 0) * MIB),
            utilization_pct=_number(row.get("utilization.gpu")),
            power_w=_number(row.get("power.draw")),
            temperature_c=_number(row.get("temperature.gpu")),
        ))
    return readings


def parse_compute_apps_csv(text: str) -> list[GpuProcess]:
    """Parse `nvidia-smi --query-compute-apps=pid,process_name,gpu_uuid,used_gpu_memory --format=csv`."""
    out = []
    for row in _csv_rows(text):
        pid = _number(row.get("pid"))
        if pid is None:
            continue
        mem = _number(row.get("used_gpu_memory"))
        out.append(GpuProcess(int(pid), row.get("process_name", ""), row.get("gpu_uuid", ""),
                              int(mem * MIB) if mem is not None else None))
    return out


class NvidiaSmiSource:
    name = "nvidia-smi"

    def __init__(self, binary: str = "nvidia-smi", timeout: float = 5.0):
        self.binary = binary
        self.timeout = timeout

    def _run(self, *args: str) -> str:
        return subprocess.run([self.binary, *args], capture_output=True, text=True, check=True,
                              timeout=self.timeout).stdout

    def read(self) -> list[GpuReading]:
        return parse_query_gpu_csv(self._run(f"--query-gpu={','.join(QUERY_FIELDS)}", "--format=csv"))

    def processes(self) -> list[GpuProcess]:
        return parse_compute_apps_csv(self._run(f"--query-compute-apps={','.join(APPS_FIELDS)}",
                                                "--format=csv"))


# --- NVML ---------------------------------------------------------------------------------------
class NvmlSource:
    """NVML through `nvidia-ml-py` (imported as `pynvml`). Values the device does not support
    come back as None rather than failing the whole reading."""
    name = "nvml"

    def __init__(self, nvml: ModuleType | Any):
        self.nvml = nvml
        nvml.nvmlInit()
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(nvml.nvmlDeviceGetCount())]

    def _optional(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self.nvml, fn)(*args)
        except self.nvml.NVMLError:
            return None

    def read(self) -> list[GpuReading]:
        readings = []
        for i, handle in enumerate(self._handles):
            memory = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            util = self._optional("nvmlDeviceGetUtilizationRates", handle)
            power_mw = self._optional("nvmlDeviceGetPowerUsage", handle)
            energy_mj = self._optional("nvmlDeviceGetTotalEnergyConsumption", handle)
            temperature = self._optional("nvmlDeviceGetTemperature", handle, getattr(self.nvml, "NVML_TEMPERATURE_GPU", 0))
            name = self._optional("nvmlDeviceGetName", handle) or ""
            uuid = self._optional("nvmlDeviceGetUUID", handle) or ""
            readings.append(GpuReading(
                index=i,
                name=name.decode() if isinstance(name, bytes) else name,
                uuid=uuid.decode() if isinstance(uuid, bytes) else uuid,
                memory_total=int(memory.total), memory_used=int(memory.used), memory_free=int(memory.free),
                utilization_pct=float(util.gpu) if util is not None else None,
                power_w=power_mw / 1000.0 if power_mw is not None else None,
                energy_j=energy_mj / 1000.0 if energy_mj is not None else None,
                temperature_c=float(temperature) if temperature is not None else None,
            ))
        return readings

    def energy_total_j(self) -> float | None:
        """Energy used by all GPUs since the driver loaded (None where unsupported)."""
        values = [self._optional("nvmlDeviceGetTotalEnergyConsumption", h) for h in self._handles]
        return None if any(v is None for v in values) else sum(values) / 1000.0

    def processes(self) -> list[GpuProcess]:
        out = []
        for handle in self._handles:
            uuid = self._optional("nvmlDeviceGetUUID", handle) or ""
            for proc in self._optional("nvmlDeviceGetComputeRunningProcesses", handle) or []:
                used = getattr(proc, "usedGpuMemory", None)
                out.append(GpuProcess(int(proc.pid), "", uuid.decode() if isinstance(uuid, bytes) else uuid,
                                      int(used) if used is not None else None))
        return out


def detect_gpu() -> GpuSource | None:
    """NVML if the driver's library loads, else nvidia-smi if it runs, else None (no GPU)."""
    try:
        import pynvml
        source = NvmlSource(pynvml)
        if source.read():
            return source
    except Exception:   # no driver, no library, no device: all mean "not through NVML"
        pass
    if shutil.which("nvidia-smi"):
        try:
            smi = NvidiaSmiSource()
            if smi.read():
                return smi
        except (subprocess.SubprocessError, OSError):
            pass
    return None
