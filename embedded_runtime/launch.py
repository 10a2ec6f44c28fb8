"""Starting the embedded runtime as a child process of the service."""
from __future__ import annotations

from config import Config
from runtime.launcher import ManagedRuntime


def start_embedded(config: Config) -> ManagedRuntime:
    process = ManagedRuntime("embedded", "embedded_runtime", [
        "--cache-dir", str(config.model_cache_dir.resolve()), "--log-dir", str((config.DATA_DIR / "logs").resolve()),
        "--threads", str(config.EMBEDDED_THREADS), "--num-ctx", str(config.NUM_CTX),
        "--parallel", str(config.EMBEDDED_NUM_PARALLEL), "--binding", config.EMBEDDED_BINDING,
        "--prompt-cache-mib", str(config.EMBEDDED_PROMPT_CACHE_MIB)],
        config.DATA_DIR / "logs" / "embedded_runtime.log")
    process.start()
    return process
