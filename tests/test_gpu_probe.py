"""GPU readings parsed from recorded output of real GPUs (tests/fixtures/nvidia-smi)."""
import re
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from helpers import FIXTURES, present
from resource_monitor import GpuMemory
from runtime.gpu_probe import MIB, NvmlSource, parse_compute_apps_csv, parse_query_gpu_csv

CAPTURES = {
    "h100": "linux-x86_64__nvidia-h100-80gb-hbm3__590.48.01.txt",
    "rtx4080": "linux-x86_64__nvidia-geforce-rtx-4080-super__595.71.05.txt",
    "l40s": "linux-x86_64__nvidia-l40s__595.80.txt",
}
RULE = "\n" + "#" * 80 + "\n"


def section(gpu: str, title: str) -> str:
    """The output under the capture's `# <title>` header."""
    blocks = (FIXTURES / "nvidia-smi" / CAPTURES[gpu]).read_text().split(RULE)
    for i, block in enumerate(blocks):
        if block.startswith(f"# {title}"):
            return blocks[i + 1]
    raise KeyError(title)


def search(pattern: str, text: str) -> re.Match[str]:
    """`pattern` in a capture that the test knows prints it."""
    found = re.search(pattern, text)
    assert found is not None, f"{pattern!r} is not in the capture"
    return found


def constant_need(amount: int) -> Callable[[str], int]:
    """A `need_of` that gives every model the same need."""
    return lambda model: amount


def query_fields(gpu: str, phase: str) -> dict[str, float]:
    """Memory, utilisation and power as `nvidia-smi -q` printed them in the same capture."""
    text = section(gpu, f"{phase} :: query (-q)")
    fb = search(r"FB Memory Usage\s+Total\s+:\s+(\d+) MiB\s+Reserved\s+:\s+(\d+) MiB\s+Used\s+:\s+(\d+) MiB"
                   r"\s+Free\s+:\s+(\d+) MiB", text)
    util = search(r"Utilization\s+GPU\s+:\s+(\d+) %", text)
    power = search(r"Instantaneous Power Draw\s+:\s+([\d.]+) W", text)
    return {"total": int(fb.group(1)), "reserved": int(fb.group(2)), "used": int(fb.group(3)),
            "free": int(fb.group(4)), "util": float(util.group(1)), "power": float(power.group(1))}


@pytest.mark.parametrize("gpu", CAPTURES)
@pytest.mark.parametrize("phase", ["idle", "load"])
def test_query_gpu_csv_matches_the_same_capture_q_output(gpu, phase):
    readings = parse_query_gpu_csv(section(gpu, f"{phase} :: query-gpu (csv"))
    assert len(readings) == 1
    r = readings[0]
    q = query_fields(gpu, phase)
    assert r.memory_total == q["total"] * MIB
    assert r.memory_used == q["used"] * MIB
    assert r.memory_free == q["free"] * MIB
    assert r.name.startswith("NVIDIA")
    assert r.utilization_pct is not None and 0 <= r.utilization_pct <= 100
    assert r.power_w is not None and r.power_w > 0


def test_reserved_memory_is_not_counted_as_free():
    r = parse_query_gpu_csv(section("h100", "idle :: query-gpu (csv"))[0]
    total, used, _ = GpuMemory(SimpleNamespace(name="fake", read=lambda: [r])).read(0)
    assert used == total - r.memory_free > 0          # 478 MiB reserved by the driver while idle


def test_header_without_units_and_several_gpus_and_missing_values():
    text = ("index, name, uuid, memory.total [MiB], memory.used [MiB], memory.free [MiB], utilization.gpu [%], power.draw [W]\n"
            "0, NVIDIA L40S, GPU-a, 46068 MiB, 1235 MiB, 44225 MiB, 9 %, 110.23 W\n"
            "1, NVIDIA L40S, GPU-b, 46068 MiB, [N/A], 46068 MiB, [Not Supported], [N/A]\n")
    a, b = parse_query_gpu_csv(text)
    assert (a.index, b.index) == (0, 1)
    assert b.memory_used == 0 and b.utilization_pct is None and b.power_w is None
    nounits = parse_query_gpu_csv("memory.total, memory.used, memory.free\n1000, 400, 600\n")
    assert nounits[0].memory_used == 400 * MIB
    assert parse_query_gpu_csv("") == []


def test_compute_apps_per_process_memory():
    procs = parse_compute_apps_csv(section("h100", "load :: query-compute-apps"))
    assert [(p.pid, present(p.used_memory) // MIB) for p in procs] == [(11327, 2566), (11328, 1542), (11345, 15690)]
    assert procs[2].name == "./gpu_burn"
    assert parse_compute_apps_csv(section("h100", "idle :: query-compute-apps")) == []


class FakeNvml:
    """The pynvml calls NvmlSource makes, answering with one capture's recorded values."""

    class NVMLError(Exception):
        pass

    NVML_TEMPERATURE_GPU = 0

    def __init__(self, q: dict[str, float] | list[dict[str, float]], energy_supported: bool = True):
        self.devices = q if isinstance(q, list) else [q]    # several: one capture per device
        self.energy_supported = energy_supported

    def nvmlInit(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        q = self.devices[h]
        return SimpleNamespace(total=q["total"] * MIB, used=q["used"] * MIB, free=q["free"] * MIB)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=int(self.devices[h]["util"]), memory=0)

    def nvmlDeviceGetPowerUsage(self, h):
        return int(self.devices[h]["power"] * 1000)       # milliwatts

    def nvmlDeviceGetTemperature(self, h, sensor):
        return 40 + h

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if not self.energy_supported:
            raise self.NVMLError("Not Supported")
        return 123_456_789                        # millijoules

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUUID(self, h):
        return "GPU-0"

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=11345, usedGpuMemory=15690 * MIB)]


def test_nvml_reading_converts_units_and_survives_unsupported_calls():
    q = query_fields("h100", "load")
    r = NvmlSource(FakeNvml(q)).read()[0]
    assert r.memory_total == q["total"] * MIB and r.memory_free == q["free"] * MIB
    assert r.power_w == pytest.approx(q["power"]) and r.utilization_pct == 100.0
    assert r.energy_j == pytest.approx(123_456.789) and r.name == "NVIDIA H100 80GB HBM3"
    r = NvmlSource(FakeNvml(q, energy_supported=False)).read()[0]
    assert r.energy_j is None
    assert NvmlSource(FakeNvml(q)).processes()[0].used_memory == 15690 * MIB


def test_several_devices_are_read_and_budgeted_one_by_one():
    """Three recorded GPUs as one node: each keeps its own budget, and a model goes where Ollama
    would put it (the GPU with most free memory if it needs <= 80% of it, else split)."""
    from resource_monitor import ResourceState
    from scheduling.snapshot import build_snapshot
    from vram_scheduler import Demand, Limits, plan
    captures = [query_fields("h100", "load"), query_fields("rtx4080", "idle"), query_fields("l40s", "load")]
    readings = NvmlSource(FakeNvml(captures)).read()
    assert [r.index for r in readings] == [0, 1, 2] and [r.temperature_c for r in readings] == [40.0, 41.0, 42.0]
    total, used, gpus = GpuMemory(SimpleNamespace(name="nvml", read=lambda: readings)).read(0)
    state = ResourceState(0.0, "nvml", total, used, gpus)
    margin = 512 * MIB
    snapshot = build_snapshot(state, (), [], lambda m: 0, Limits(), margin)
    assert snapshot.gpu_budgets == tuple(q["free"] * MIB - margin for q in captures)
    most_free = max(range(3), key=lambda i: captures[i]["free"])
    room = snapshot.gpu_budgets[most_free]
    small, large = int(room * 0.7), int(room * 1.2)
    for name, need in (("small", small), ("large", large)):
        s = build_snapshot(state, (), [Demand(name, 1, 1.0, 0.0)], constant_need(need), Limits(), margin)
        decided = plan(s)
        alloc = decided.placements[name]
        assert all(a <= b for a, b in zip(alloc, s.gpu_budgets, strict=False)) and sum(alloc) == need
        if name == "small":
            assert alloc[most_free] == need                   # whole, on the GPU with most free memory
        else:
            assert sum(1 for a in alloc if a) >= 2            # more than any one GPU holds: split


def test_query_gpu_csv_reads_the_temperature():
    r = parse_query_gpu_csv(section("h100", "load :: query-gpu (csv"))[0]
    assert r.temperature_c is not None and 0 < r.temperature_c < 120
