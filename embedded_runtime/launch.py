"""Starting the embedded runtime as a child process of the service."""
from __future__ import annotations

from config import Config
from runtime.launcher import ManagedRuntime


def embedded_args(config: Config) -> list[str]:
    """`python -m embedded_runtime`'s arguments from the service's settings."""
    return ["--cache-dir", str(config.model_cache_dir.resolve()), "--log-dir", str((config.DATA_DIR / "logs").resolve()),
            "--threads", str(config.EMBEDDED_THREADS), "--num-ctx", str(config.NUM_CTX),
            "--parallel", str(config.EMBEDDED_NUM_PARALLEL), "--binding", config.EMBEDDED_BINDING,
            "--prompt-cache-mib", str(config.EMBEDDED_PROMPT_CACHE_MIB)]


def start_embedded(config: Config) -> ManagedRuntime:
    process = ManagedRuntime("embedded", "embedded_runtime", embedded_args(config),
                             config.DATA_DIR / "logs" / "embedded_runtime.log")
    process.start()
    return process
