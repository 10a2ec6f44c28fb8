"""Every knob of Model Manager in one object, read from the environment and `.env`.

`Config()` reads environment variables (and a `.env` file in the working directory, through
python-dotenv as used by pydantic-settings); `Config(FIELD=value)` overrides in code and tests.
The object is built once by `main.py` (or the WSGI entry point) and passed to each component;
nothing else reads the environment.

`python config.py --markdown` prints the table of settings that the README carries.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

MIB = 1024 * 1024


class Config(BaseSettings):
    """Service configuration. Field names are the environment variable names."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    # --- HTTP API -------------------------------------------------------------------------
    HTTP_HOST: str = Field("127.0.0.1", description="Address the API listens on.")
    HTTP_PORT: int = Field(5001, ge=0, le=65535, description="Port the API listens on (`--http-port`).")
    HTTP_THREADS: int = Field(
        64, ge=1, description="`python main.py`: request threads (a long poll, `?wait=`, holds one while it waits).")
    MAX_PROMPT_BYTES: int = Field(
        4 * MIB, gt=0, description="Largest request body or prompt accepted; larger gets 413.")
    QUEUE_MAX_SIZE: int = Field(
        1000, gt=0, description="Most jobs waiting (pending or queued) at once; more gets 429 with Retry-After.")

    # --- Runtime ------------------------------------------------------------------------------
    BACKEND: Literal["auto", "ollama", "embedded", "sim"] = Field(
        "auto", description="Which runtime serves models: `auto` uses Ollama at OLLAMA_URL when it "
        "answers, else the embedded runtime; `ollama`, `embedded` or `sim` (the GPU simulator) force one.")
    OLLAMA_URL: str = Field("http://localhost:11434", description="Base URL of the Ollama server.")
    MODEL_KEEP_ALIVE: str = Field(
        "30m", description="keep_alive sent with every load and request: how long the runtime keeps "
        "an idle model if Model Manager stops managing it (the scheduler unloads models itself).")
    RUNTIME_POLL_INTERVAL: float = Field(
        1.0, gt=0, description="Seconds between reads of the runtime's loaded models (`/api/ps`) and GPU memory.")
    LOAD_TIMEOUT_S: float = Field(300.0, gt=0, description="Longest a model load may take before it counts as failed.")
    RUNTIME_CONNECT_TIMEOUT_S: float = Field(5.0, gt=0, description="Connect timeout for calls to the runtime.")

    # --- Scheduler ----------------------------------------------------------------------------
    SCHEDULER_LOOP_INTERVAL: float = Field(
        0.1, gt=0, description="Seconds between scheduler passes; a submit in the same process wakes it at once.")
    VRAM_TOTAL_MB: int = Field(
        0, ge=0, description="Memory the scheduler may plan with when no GPU is detected; 0 = take it "
        "from the GPU, the simulator, or a fraction of host RAM (HOST_MEMORY_FRACTION).")
    VRAM_SAFETY_MARGIN_MB: int = Field(1024, ge=0, description="Memory kept free: budget = total - this margin.")
    VRAM_ESTIMATION_MULTIPLIER: float = Field(
        1.3, ge=1.0, description="A model's need = its size x this, until learned from the runtime's reported size_vram.")
    HOST_MEMORY_FRACTION: float = Field(
        0.5, gt=0, le=1, description="Without a GPU: share of host RAM available at start-up that models may use.")
    MAX_CONCURRENT_PER_MODEL: int = Field(20, gt=0, description="Most jobs running at once on one model.")
    MAX_RUNNING_JOBS: int = Field(64, gt=0, description="Most jobs running at once over all models.")
    MAX_LOADED_MODELS: int = Field(0, ge=0, description="Most models loaded at once; 0 = as many as fit.")
    QUEUE_AGING_S: float = Field(
        60.0, gt=0, description="Seconds of waiting worth one priority level, so that low priority cannot starve.")
    SWAP_MARGIN: float = Field(
        1.0, ge=0, description="Priority levels (after aging) by which waiting work must outrank a busy "
        "loaded model before that model stops taking new jobs to make room; larger = more grouping by model.")
    OOM_MAX_RETRIES: int = Field(3, ge=0, description="Times a job is re-queued after an out-of-memory answer before it fails.")

    # --- Jobs ---------------------------------------------------------------------------------
    JOB_TIMEOUT_S: float = Field(300.0, gt=0, description="Default per-job timeout (a job's `timeout_s` overrides it).")
    MAX_JOB_TIMEOUT_S: float = Field(3600.0, gt=0, description="Largest `timeout_s` a job may ask for.")
    RECOVER_RUNNING: Literal["requeue", "fail"] = Field(
        "requeue", description="At start-up, jobs left running by a dead scheduler are re-queued or failed.")
    JOB_RETENTION_S: float = Field(
        7 * 24 * 3600.0, gt=0, description="Finished jobs older than this are deleted (TTL index on MongoDB, cleanup on SQLite).")

    # --- Storage ------------------------------------------------------------------------------
    STORE: Literal["sqlite", "mongodb", "memory"] | None = Field(
        None, description="Job store: `sqlite` (default), `mongodb` (default when MONGODB_URI is set) "
        "or `memory` (one process, nothing kept).")
    DATA_DIR: Path = Field(Path("./data"), description="Folder for the SQLite file, learned model sizes and runtime files.")
    MONGODB_URI: str = Field("", description="MongoDB connection string, e.g. `mongodb://localhost:27017`.")
    MONGODB_DB: str = Field("model_manager", description="MongoDB database name.")
    MONGODB_COLLECTION_PREFIX: str = Field("", description="Prefix for every collection name (jobs, job_metrics, ...).")

    # --- Embedded runtime (--backend embedded) ------------------------------------------------
    EMBEDDED_THREADS: int = Field(1, ge=1, description="Embedded runtime: CPU threads per runner (one model).")
    EMBEDDED_NUM_CTX: int = Field(2048, ge=64, description="Embedded runtime: context length per request slot.")
    EMBEDDED_NUM_PARALLEL: int = Field(
        1, ge=1, description="Embedded runtime: requests one runner works on at once (more wait in line).")
    EMBEDDED_MODEL_CACHE: Path | None = Field(
        None, description="Embedded runtime: where chunked models are joined and checked (default DATA_DIR/models).")
    EMBEDDED_BINDING: Literal["xllamacpp"] = Field("xllamacpp", description="Embedded runtime: llama.cpp binding.")

    # --- Logging ------------------------------------------------------------------------------
    LOG_FILE: Path = Field(Path("model_manager.log"), description="Log file; lines are `[HH:MM:SS.mmm] [COMPONENT] message`.")
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")

    # --- GPU simulator (--backend sim) --------------------------------------------------------
    SIM_VRAM_GB: float = Field(24.0, gt=0, description="Simulator: memory of the virtual GPU.")
    SIM_LOAD_GBPS: float = Field(2.0, gt=0, description="Simulator: load bandwidth; a load takes size / this.")
    SIM_TOKENS_PER_S: float = Field(
        400.0, gt=0, description="Simulator: aggregate generation throughput of the GPU for one running job.")
    SIM_BATCH_GAIN: float = Field(
        0.25, ge=0, description="Simulator: aggregate throughput with n jobs = SIM_TOKENS_PER_S x (1 + gain x log2 n).")
    SIM_DEFAULT_TOKENS: int = Field(
        64, gt=0, description="Simulator: tokens generated when a request does not set options.num_predict.")
    SIM_PORT: int = Field(0, ge=0, le=65535, description="Simulator: port when main.py starts it (0 = any free port).")

    @property
    def store_kind(self) -> str:
        if self.STORE:
            return self.STORE
        return "mongodb" if self.MONGODB_URI else "sqlite"

    @property
    def model_cache_dir(self) -> Path:
        return self.EMBEDDED_MODEL_CACHE or self.DATA_DIR / "models"

    @property
    def safety_margin_bytes(self) -> int:
        return self.VRAM_SAFETY_MARGIN_MB * MIB


def settings_markdown() -> str:
    """The README's configuration table, generated so that it cannot drift from the code."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Config.model_fields.items():
        default = field.default
        shown = "" if default is None else str(default)
        lines.append(f"| `{name}` | `{shown}` | {field.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(settings_markdown())
    else:
        print(Config().model_dump_json(indent=2))
