"""Choosing and starting the runtime: Ollama, the embedded runtime, or the GPU simulator, each
with the memory the scheduler plans with."""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import psutil
import requests

from config import MIB, Config
from model_registry import ModelSpec, canonical_name
from resource_monitor import FixedMemory, GpuMemory, MemorySource, SimulatorMemory
from runtime.client import OllamaClient
from runtime.gpu_probe import detect_gpu
from runtime.launcher import ManagedRuntime
from runtime.node_urls import check_resolved, split_node_url, validate_node_url
from telemetry.logs import get_logger

log = get_logger("SYSTEM")


@dataclass
class Runtime:
    kind: str                          # "ollama", "embedded" or "sim"
    url: str
    client: OllamaClient
    memory: MemorySource
    process: ManagedRuntime | None = None
    catalog: tuple[ModelSpec, ...] = ()   # models this runtime could serve once installed
    num_parallel: int | None = None       # slots per model, when the runtime says (None: OLLAMA_NUM_PARALLEL)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def restart_if_dead(self) -> bool:
        """A runtime this service started (simulator, embedded) that died is started again."""
        if self.process is None or self.process.alive():
            return False
        code = self.process.process.returncode if self.process.process else None
        log.warning("the %s runtime exited (code %s); starting it again", self.kind, code)
        self.url = self.process.start()
        self.client.base_url = self.url
        return True


def ollama_answers(url: str, timeout: float = 1.5) -> bool:
    """Whether an Ollama answers at `url` itself (a redirect is not followed, and is no answer)."""
    try:
        answer = requests.get(url.rstrip("/") + "/api/version", timeout=timeout, allow_redirects=False)
    except requests.RequestException:
        return False
    answer.close()
    return 200 <= answer.status_code < 300


def choose_backend(config: Config) -> str:
    """`auto`: Ollama when one answers at OLLAMA_URL, else the embedded runtime."""
    if config.BACKEND != "auto":
        return config.BACKEND
    if config.OLLAMA_URLS.strip():
        return "ollama"             # nodes named on purpose: scheduled even if none answers yet
    if ollama_answers(split_node_url(config.runtime_urls[0])[0]):
        return "ollama"
    if importlib.util.find_spec("embedded_runtime") is None or importlib.util.find_spec("xllamacpp") is None:
        log.info("no Ollama answers at %s and the embedded runtime is not installed: "
                 "using the GPU simulator", config.OLLAMA_URL)
        return "sim"
    log.info("no Ollama answers at %s: using the embedded runtime", config.OLLAMA_URL)
    return "embedded"


def host_memory(config: Config) -> FixedMemory:
    """No GPU: plan with VRAM_TOTAL_MB, else a share of the RAM available now."""
    if config.VRAM_TOTAL_MB:
        return FixedMemory(config.VRAM_TOTAL_MB * MIB, "config")
    available = psutil.virtual_memory().available
    return FixedMemory(int(available * config.HOST_MEMORY_FRACTION), "host")


def open_runtimes(config: Config) -> list[Runtime]:
    """Every node to schedule: SIM_NODES simulators, the Ollama nodes of OLLAMA_URLS, or one."""
    kind = choose_backend(config)
    if kind == "sim":
        return [open_simulator(config, i) for i in range(config.SIM_NODES)]
    if kind == "ollama":
        return [open_ollama(config, url) for url in config.runtime_urls]
    return [open_runtime(config)]


def checked_node_url(config: Config, node_url: str) -> str:
    """`node_url` when node_urls' check passes it, and its host resolves to no refused address
    (NodeUrlError otherwise): every node opened goes through here, whatever it came from."""
    validate_node_url(node_url, allow_link_local=config.NODE_ALLOW_LINK_LOCAL)
    check_resolved(node_url, allow_link_local=config.NODE_ALLOW_LINK_LOCAL)
    return node_url


def runtime_client(config: Config, url: str) -> OllamaClient:
    return OllamaClient(url, config.RUNTIME_CONNECT_TIMEOUT_S, config.MAX_RUNNING_JOBS + 8)


def open_simulator(config: Config, node: int = 0) -> Runtime:
    process = ManagedRuntime("sim", "simulator", [
        "--vram-gb", str(config.SIM_VRAM_GB), "--load-gbps", str(config.SIM_LOAD_GBPS),
        "--tokens-per-s", str(config.SIM_TOKENS_PER_S), "--batch-gain", str(config.SIM_BATCH_GAIN),
        "--default-tokens", str(config.SIM_DEFAULT_TOKENS), "--num-parallel", str(config.SIM_NUM_PARALLEL),
        "--max-queue", str(config.SIM_MAX_QUEUE), "--num-ctx", str(config.NUM_CTX),
        "--gpus", str(config.SIM_GPUS_PER_NODE), "--gpu-split", config.gpu_split],
        config.DATA_DIR / "logs" / (f"simulator-{node}.log" if node else "simulator.log"),
        fixed_port=config.SIM_PORT + node if config.SIM_PORT else 0)
    url = process.start()
    client = runtime_client(config, url)
    return Runtime("sim", url, client, SimulatorMemory(client, config.SIM_ENERGY_COUNTER), process,
                   num_parallel=config.SIM_NUM_PARALLEL)


def open_ollama(config: Config, node_url: str) -> Runtime:
    """An Ollama node. The first node is taken to run on this host: its GPUs are read through
    NVML (else it plans with host RAM, as a single node always did). Another host's GPU cannot be
    read from here, so each further node says its memory in its URL (`http://gpu2:11434#vram=24`,
    GB; the fragment is never sent) or takes VRAM_TOTAL_MB; with neither it loads nothing."""
    checked_node_url(config, node_url)
    url, vram_gb = split_node_url(node_url)
    client = runtime_client(config, url)
    first = node_url == config.runtime_urls[0]
    gpu = detect_gpu() if first and vram_gb is None else None
    if gpu is not None:
        memory: MemorySource = GpuMemory(gpu, config.VRAM_TOTAL_MB * MIB)
        log.info("GPU memory of %s read through %s", url, gpu.name)
    elif vram_gb is not None:
        memory = FixedMemory(int(vram_gb * 1e9), "node-url")
    elif first or config.VRAM_TOTAL_MB:
        fixed = host_memory(config)
        log.info("%s: planning with %.1f GB (%s)", url, fixed.total_bytes / 1e9, fixed.name)
        memory = fixed
    else:
        memory = FixedMemory(0, "unknown")
        log.error("node %s: its memory is unknown, so nothing is loaded there; give it in the URL "
                  "(%s#vram=GB) or set VRAM_TOTAL_MB", url, url)
    return Runtime("ollama", url, client, memory)


def open_runtime(config: Config) -> Runtime:
    kind = choose_backend(config)
    if kind == "sim":
        return open_simulator(config)
    if kind == "embedded":
        from embedded_runtime.catalog import CATALOG
        from embedded_runtime.launch import start_embedded
        process = start_embedded(config)
        client = runtime_client(config, process.url)
        catalog = tuple(ModelSpec(canonical_name(m.name), m.size_bytes, m.capabilities, m.family, m.parameter_size,
                                  m.install_command) for m in CATALOG.values())
        return Runtime("embedded", process.url, client, host_memory(config), process, catalog,
                       num_parallel=config.EMBEDDED_NUM_PARALLEL)
    return open_ollama(config, config.runtime_urls[0])
