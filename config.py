"""Every knob of Model Manager in one object, read from the environment and `.env`.

`Config()` reads environment variables (and a `.env` file in the working directory, through
python-dotenv as used by pydantic-settings); `Config(FIELD=value)` overrides in code and tests.
The object is built once by `main.py` (or the WSGI entry point) and passed to each component;
nothing else reads the environment.

`python config.py --markdown` (or `model-manager settings`) prints the table of settings that
docs/configuration.md carries (a test holds the two equal).
"""
from __future__ import annotations

import ipaddress
import json
import sys
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from runtime.node_urls import validate_node_url

MIB = 1024 * 1024
MAX_WAIT_S = 300.0          # the longest `?wait=` a long poll may ask for (an API limit, not a setting)

PerModel = Annotated[dict[str, int], NoDecode]


def parse_per_model(value: Any) -> Any:
    """`"qwen2.5:0.5b=4, phi3:mini=2"` (or a JSON object) -> {"qwen2.5:0.5b": 4, "phi3:mini": 2}."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        return json.loads(text)
    out: dict[str, str] = {}
    for item in text.split(","):
        name, sep, number = item.strip().rpartition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected model=number pairs separated by commas, got {item.strip()!r}")
        out[name.strip()] = number.strip()
    return out


class Config(BaseSettings):
    """Service configuration. Field names are the environment variable names."""

    # hide_input_in_errors: a refused setting is named, its value (a URL with a password) is not printed
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True, hide_input_in_errors=True)

    # --- HTTP API -------------------------------------------------------------------------
    HTTP_HOST: str = Field("127.0.0.1", description="Address the API listens on.")
    HTTP_PORT: int = Field(5001, ge=0, le=65535, description="Port the API listens on (`--http-port`).")
    HTTP_THREADS: int = Field(
        64, ge=8, description="Request threads per process (`python main.py`, and each gunicorn worker unless "
        "GUNICORN_THREADS says otherwise); a long poll or an Ollama/OpenAI request holds one while it waits.")
    CLIENT_TIMEOUT_S: float = Field(
        30.0, gt=0, description="Longest a client may take to send the rest of a request, or to take the next piece of "
        "an answer, before its connection is closed (gunicorn; waitress reads whole requests before a thread is used).")
    GUNICORN_WORKERS: int = Field(
        4, ge=1, description="API worker processes under gunicorn (`gunicorn -c gunicorn.conf.py wsgi:app`); they "
        "elect one scheduler among themselves.")
    GUNICORN_THREADS: int | None = Field(
        None, ge=8, description="Request threads per gunicorn worker (default HTTP_THREADS); must be above MAX_WAITERS.")
    MAX_PROMPT_BYTES: int = Field(
        4 * MIB, gt=0, description="Largest request body accepted, chunked or not; larger gets 413 before it is read.")
    MAX_WAITERS: int = Field(
        48, ge=0, description="Most requests one process holds open waiting for a job: long polls (`?wait=`) and "
        "Ollama/OpenAI requests together. Past it a long poll answers at once with the job as it is and an "
        "Ollama/OpenAI request gets 503 (Ollama's 'server busy'), so that the request threads are never all taken "
        "(`/api/ping` and `/api/health` always answer). Must be below HTTP_THREADS.")
    MAX_WAITERS_PER_TENANT: int = Field(
        24, ge=1, description="Most of those waiting requests one tenant (an API key's) holds in one process, so that "
        "one tenant's long polls cannot keep another's requests at 503. Callers without a key are held only by "
        "MAX_WAITERS. A long poll whose client went away frees its place at once.")
    MAX_PAGE_BYTES: int = Field(
        1 * MIB, gt=0, description="Largest answer of a listing (`/api/jobs`, `/api/ledger`); a longer one ends early "
        "with `next_cursor`. Metadata over 4 KB is shown in listings as its size only.")
    IDEMPOTENCY_TTL_S: float = Field(
        24 * 3600.0, gt=0, description="How long an `Idempotency-Key` of a submission is remembered: a retry with the "
        "same key within it gets the same job, never a second one.")
    QUEUE_MAX_SIZE: int = Field(
        1000, gt=0, description="Most jobs waiting (pending or queued) at once; more gets 429 with Retry-After. "
        "Past it, a tenant below its fair share (this divided among the tenants with jobs waiting) is still let in, "
        "up to twice this in all.")

    # --- Keys and tenants ---------------------------------------------------------------------
    AUTH_REQUIRED: bool = Field(
        False, description="Every route but `/api/ping` and `/api/health` needs an API key (`Authorization: Bearer "
        "KEY` or `X-API-Key`), made with `python main.py keys create`; else 401. A key sent when this is off still "
        "counts: it names the tenant and its limits.")
    ALLOW_OPEN: bool = Field(
        False, description="Listen on a non-loopback address without AUTH_REQUIRED anyway (on purpose: anyone who "
        "can reach the port can then read every prompt and cancel any job).")
    KEY_CACHE_S: float = Field(
        5.0, ge=0, description="How long a process trusts a key it has looked up; a revoked key stops working "
        "within this.")
    RESULT_CACHE_TTL_S: float = Field(
        24 * 3600.0, gt=0, description="How long an answer stays in the opt-in result cache (`\"cache\": true` or "
        "`X-Cache: true` with temperature 0 or a fixed seed).")

    # --- Runtime ------------------------------------------------------------------------------
    BACKEND: Literal["auto", "ollama", "embedded", "sim"] = Field(
        "auto", description="Which runtime serves models: `auto` uses Ollama at OLLAMA_URL when it "
        "answers, else the embedded runtime; `ollama`, `embedded` or `sim` (the GPU simulator) force one.")
    OLLAMA_URL: str = Field("http://localhost:11434", description="Base URL of the Ollama server.")
    OLLAMA_URLS: str = Field(
        "", description="Several runtime nodes: a comma-separated list of Ollama base URLs, one per node (overrides "
        "OLLAMA_URL). Nodes can also be added and removed at run time through `/api/admin/nodes`.")
    NODE_ALLOW_LINK_LOCAL: bool = Field(
        False, description="Accept runtime node URLs (OLLAMA_URL, OLLAMA_URLS, `/api/admin/nodes`) whose host is, or "
        "resolves to, a link-local address (169.254.0.0/16, fe80::/10) or a cloud metadata service "
        "(169.254.169.254, metadata.google.internal, ...); off, such a URL is refused. Every node URL is "
        "`http(s)://host[:port]`, optionally `#vram=GB`: no credentials, path or query.")
    GPU_SPLIT: Literal["ollama", "spread", "single"] = Field(
        "ollama", description="How the runtime places a model on a node with several GPUs: `ollama` = on the GPU "
        "with the most free memory if it needs at most 80% of it, else split over all (Ollama's rule); `spread` = "
        "always split (set it when the runtime runs with OLLAMA_SCHED_SPREAD=1); `single` = never split.")
    OLLAMA_SCHED_SPREAD: bool = Field(
        False, description="The runtime's own setting, mirrored: true = it always splits models over all GPUs "
        "(same as GPU_SPLIT=spread).")
    PINNED_MODELS: str = Field(
        "", description="Comma-separated models kept loaded: loaded when memory is free, never pushed out, sent "
        "keep_alive -1 so the runtime keeps them too.")
    PRELOAD_WINDOW_S: float = Field(
        0.0, ge=0, description="Preloading: models with jobs arriving in this many seconds are loaded into memory "
        "no waiting work needs, before their next job (0 = off). See docs/BENCHMARKS.md for what it saves and costs.")
    PRELOAD_LIMIT: int = Field(2, ge=0, description="Preloading: at most this many predicted models are wanted at once.")
    REPLICA_AFTER: int = Field(
        8, ge=1, description="Several nodes: a model whose waiting jobs exceed its nodes' free slots by this many gets "
        "a second copy on another node that has memory free for it.")
    REPLICA_WAIT_S: float = Field(
        30.0, ge=0, description="Several nodes: once that overflow has waited this long, idle models with no waiting "
        "work on another node may be pushed out to make room for the second copy.")
    NODE_DOWN_AFTER_S: float = Field(
        10.0, gt=0, description="A node whose runtime has not answered for this long is down: its running requests "
        "are stopped and their jobs re-queued to run elsewhere (a node that refuses connections loses them at once).")
    MODEL_KEEP_ALIVE: str = Field(
        "30m", description="keep_alive sent with every load and request: how long the runtime keeps "
        "an idle model if Model Manager stops managing it (the scheduler unloads models itself).")
    RUNTIME_POLL_INTERVAL: float = Field(
        1.0, gt=0, description="Seconds between reads of the runtime's loaded models (`/api/ps`) and GPU memory.")
    LOAD_TIMEOUT_S: float = Field(300.0, gt=0, description="Longest a model load may take before it counts as failed.")
    RUNTIME_CONNECT_TIMEOUT_S: float = Field(5.0, gt=0, description="Connect timeout for calls to the runtime.")
    OLLAMA_NUM_PARALLEL: int = Field(
        1, ge=1, description="Slots per model on Ollama: requests one loaded model serves at once. Set it to the "
        "Ollama server's own OLLAMA_NUM_PARALLEL (default 1); a model is never sent more requests than it has "
        "slots, so waiting work keeps its priority here instead of queueing first come, first served inside Ollama. "
        "Each slot costs KV-cache memory (NUM_CTX tokens).")
    MODEL_NUM_PARALLEL: PerModel = Field(
        default_factory=dict, description="Per-model slots, overriding the runtime's (`name=N,name=N`); it must match "
        "what the runtime really gives that model. Embedding models always get 1, as in Ollama.")
    NUM_CTX: int = Field(
        4096, ge=64, description="Context length per slot that every model is loaded with; sent as `options.num_ctx` "
        "with every load and request, and budgeted as KV cache (capped at the model's trained context).")
    MODEL_NUM_CTX: PerModel = Field(
        default_factory=dict, description="Per-model context length, overriding NUM_CTX (`name=N,name=N`).")

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
    MAX_RUNNING_JOBS: int = Field(
        64, gt=0, description="Most jobs running at once over all models (each model is also held to its slots).")
    MAX_LOADED_MODELS: int = Field(0, ge=0, description="Most models loaded at once; 0 = as many as fit.")
    QUEUE_AGING_S: float = Field(
        60.0, gt=0, description="Seconds of waiting worth one priority level, capped below one level (lower "
        "priorities are kept from starving by shares instead); also how much longer work for a model must "
        "wait than a loaded model's work of the same priority before it may take that model's memory.")
    FAIR_SHARE: bool = Field(
        True, description="Inside each priority, the next job is the one of the tenant (then, inside it, the user) "
        "that has received the least service, in weighted tokens over its key's weight (the Virtual Token Counter); "
        "false = first come, first served across tenants.")
    FAIR_OUTPUT_WEIGHT: float = Field(
        2.0, gt=0, description="What an output token counts for in the fair share, a prompt token counting 1.")
    PREEMPTION: bool = Field(
        True, description="Urgent work may stop running work of a lower priority (never of its own): the stopped "
        "job goes back to its place in line and resumes from its partial answer where the runtime allows it.")
    PREEMPT_AFTER_S: float = Field(
        1.0, ge=0, description="How long a job must wait for a slot, or for memory, held by lower-priority running "
        "work before that work is stopped for it.")
    PREEMPT_MAX: int = Field(2, ge=0, description="Most times one job is stopped for more urgent work.")
    SWAP_MARGIN: float = Field(
        1.0, ge=0, description="Priority levels (after aging) by which waiting work must outrank a busy "
        "loaded model before that model stops taking new jobs to make room; larger = more grouping by model.")
    MIN_RESIDENCY_LOADS: float = Field(
        4.0, ge=0, description="A model just loaded serves its work for at least this many times its own load "
        "time before other work may push it out (one with no waiting work may go at once): higher = fewer loads "
        "and more throughput under memory pressure, lower = urgent work for other models gets memory sooner.")
    OOM_MAX_RETRIES: int = Field(
        3, ge=0, description="Times a job is re-queued after a passing failure before it fails: an out-of-memory "
        "answer, the runtime's queue full (503), or its connection dropped by a runtime that then does not answer "
        "(a node that died).")
    OOM_GROWTH: float = Field(
        1.25, gt=1.0, description="After an out-of-memory incident, a model's planned need grows by this factor (once "
        "per incident, never past the capacity) until its next successful load measures it.")
    MAX_LOAD_FAILURES: int = Field(
        3, ge=1, description="Failed loads of a model in a row (out of memory included) before its waiting jobs fail.")
    LOAD_RETRY_DELAY_S: float = Field(2.0, ge=0, description="Seconds before a model whose load failed is tried again.")

    # --- Jobs ---------------------------------------------------------------------------------
    JOB_TIMEOUT_S: float = Field(300.0, gt=0, description="Default per-job timeout (a job's `timeout_s` overrides it).")
    MAX_JOB_TIMEOUT_S: float = Field(3600.0, gt=0, description="Largest `timeout_s` a job may ask for.")
    RECOVER_RUNNING: Literal["requeue", "fail"] = Field(
        "requeue", description="Jobs left running by a scheduler that stopped are re-queued or failed (once no "
        "request of theirs can still be in flight).")
    MAX_ATTEMPTS: int = Field(
        3, ge=1, description="Times a job may be started; one left running by a stopped scheduler that many times "
        "fails with the reason instead of being re-queued again.")
    JOB_RETENTION_S: float = Field(
        7 * 24 * 3600.0, gt=0, description="Finished jobs older than this are deleted (TTL index on MongoDB, cleanup on SQLite).")
    LEDGER_RETENTION_S: float = Field(
        30 * 24 * 3600.0, gt=0, description="Ledger entries (`job_metrics`) older than this are deleted.")

    # --- Storage ------------------------------------------------------------------------------
    STORE: Literal["sqlite", "mongodb", "memory"] | None = Field(
        None, description="Job store: `sqlite` (default), `mongodb` (default when MONGODB_URI is set) "
        "or `memory` (one process, nothing kept).")
    DATA_DIR: Path = Field(Path("./data"), description="Folder for the SQLite file, learned model sizes and runtime files.")
    MONGODB_URI: str = Field("", description="MongoDB connection string, e.g. `mongodb://localhost:27017`.")
    MONGODB_DB: str = Field("model_manager", description="MongoDB database name.")
    MONGODB_COLLECTION_PREFIX: str = Field("", description="Prefix for every collection name (jobs, job_metrics, ...).")
    STORE_RETRY_S: float = Field(
        30.0, gt=0, description="How long the scheduler retries a store write while the store does not answer "
        "(locked, connection lost) before it gives up on that write (and logs it).")
    RESULT_RETRY_S: float = Field(
        600.0, gt=0, description="How long a finished job's result is retried before it is given up (and logged): "
        "long, since a result lost means running the job again.")
    API_STORE_WAIT_S: float = Field(
        5.0, gt=0, description="How long an API request waits for a store that does not answer before it gets 503 "
        "with Retry-After (nothing is acknowledged that was not stored).")

    # --- Embedded runtime (--backend embedded) ------------------------------------------------
    EMBEDDED_THREADS: int = Field(1, ge=1, description="Embedded runtime: CPU threads per runner (one model).")
    EMBEDDED_NUM_PARALLEL: int = Field(
        1, ge=1, description="Embedded runtime: slots per runner, the requests one model works on at once "
        "(more wait in line, first come, first served).")
    EMBEDDED_PROMPT_CACHE_MIB: int = Field(
        0, ge=0, description="Embedded runtime: host memory (MiB) each runner may fill with llama.cpp's prompt "
        "cache, the KV state of earlier prompts kept for one that begins the same way. 0: none, as in Ollama, so "
        "that a runner's memory stays what the scheduler budgeted when it loaded (llama.cpp's own default, 8192, "
        "let every runner grow by up to 8 GiB over a long run).")
    EMBEDDED_MODEL_CACHE: Path | None = Field(
        None, description="Embedded runtime: where chunked models are joined and checked (default DATA_DIR/models).")
    EMBEDDED_BINDING: Literal["xllamacpp"] = Field("xllamacpp", description="Embedded runtime: llama.cpp binding.")

    # --- Metrics and dashboard -----------------------------------------------------------------
    PROMETHEUS_MULTIPROC_DIR: Path | None = Field(
        None, description="gunicorn: folder where the workers write the counters and histograms that `/metrics` "
        "adds up (prometheus-client's multiprocess mode); emptied when gunicorn starts. Default: a new temporary "
        "folder, removed when gunicorn stops. `python main.py` (one process) needs none.")

    # --- Logging ------------------------------------------------------------------------------
    LOG_FILE: Path = Field(Path("model_manager.log"), description="Log file; lines are `[HH:MM:SS.mmm] [COMPONENT] message`.")
    LOG_MAX_BYTES: int = Field(
        20 * MIB, gt=0, description="The log file is rotated when it reaches this size.")
    LOG_BACKUPS: int = Field(5, ge=0, description="Rotated log files kept (model_manager.log.1, .2, ...).")
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
    SIM_PORT: int = Field(
        0, ge=0, le=65535, description="Simulator: port when main.py starts it (0 = any free port; with SIM_NODES, "
        "node i listens on SIM_PORT + i).")
    SIM_NODES: int = Field(1, ge=1, le=64, description="Simulator: how many simulated runtime nodes to start, each "
                           "with SIM_VRAM_GB of memory.")
    SIM_GPUS_PER_NODE: int = Field(
        1, ge=1, le=16, description="Simulator: GPUs per node; SIM_VRAM_GB is split evenly among them and each "
        "model is placed by the GPU_SPLIT rule, out of memory when it fits no GPU.")
    SIM_ENERGY_COUNTER: bool = Field(
        True, description="The simulated GPU has an energy counter (as NVIDIA GPUs from Volta on), read when each job "
        "starts and ends to divide energy among jobs; off, jobs get no energy figure. Reading it is an HTTP request to "
        "the simulator where NVML's is a library call, so `bench/overhead.py` turns it off.")
    SIM_NUM_PARALLEL: int = Field(
        1, ge=1, description="Simulator: slots per model, like Ollama's OLLAMA_NUM_PARALLEL; further requests wait "
        "inside the simulator first come, first served.")
    SIM_MAX_QUEUE: int = Field(
        512, ge=1, description="Simulator: requests waiting inside it before it answers 503 (Ollama's OLLAMA_MAX_QUEUE).")

    @model_validator(mode="after")
    def _threads_left_over(self) -> Config:
        if self.MAX_WAITERS >= self.HTTP_THREADS:
            raise ValueError(f"MAX_WAITERS ({self.MAX_WAITERS}) must be below HTTP_THREADS ({self.HTTP_THREADS}), "
                             "or waiting requests could take every request thread")
        return self

    def exposure_error(self) -> str | None:
        """Why the service must not listen where it is told to (an open port without keys)."""
        if self.AUTH_REQUIRED or self.ALLOW_OPEN or is_loopback(self.HTTP_HOST):
            return None
        return (f"refusing to listen on {self.HTTP_HOST} without AUTH_REQUIRED=true: anyone who can reach the port "
                "could read every prompt and cancel any job. Make keys (python main.py keys create --tenant NAME), "
                "set AUTH_REQUIRED=true, or set ALLOW_OPEN=true if an open port is what you want")

    @model_validator(mode="after")
    def _node_urls_acceptable(self) -> Config:
        """Every node URL of the settings passes node_urls' check, or the service does not start."""
        named = [("OLLAMA_URL", self.OLLAMA_URL.strip())]
        named += [("OLLAMA_URLS", u.strip()) for u in self.OLLAMA_URLS.split(",") if u.strip()]
        for name, url in named:
            try:
                validate_node_url(url, allow_link_local=self.NODE_ALLOW_LINK_LOCAL)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return self

    @field_validator("MODEL_NUM_PARALLEL", "MODEL_NUM_CTX", mode="before")
    @classmethod
    def _per_model(cls, value: Any) -> Any:
        return parse_per_model(value)

    @field_validator("MODEL_NUM_PARALLEL", "MODEL_NUM_CTX")
    @classmethod
    def _positive(cls, value: dict[str, int]) -> dict[str, int]:
        bad = [name for name, n in value.items() if n < 1]
        if bad:
            raise ValueError(f"must be at least 1 for {', '.join(bad)}")
        return value

    @property
    def store_kind(self) -> str:
        if self.STORE:
            return self.STORE
        return "mongodb" if self.MONGODB_URI else "sqlite"

    @property
    def model_cache_dir(self) -> Path:
        return self.EMBEDDED_MODEL_CACHE or self.DATA_DIR / "models"

    @property
    def runtime_urls(self) -> list[str]:
        """The Ollama nodes to schedule: OLLAMA_URLS, else OLLAMA_URL."""
        urls = [u.strip().rstrip("/") for u in self.OLLAMA_URLS.split(",") if u.strip()]
        return urls or [self.OLLAMA_URL.rstrip("/")]

    @property
    def gpu_split(self) -> str:
        return "spread" if self.OLLAMA_SCHED_SPREAD else self.GPU_SPLIT

    @property
    def pinned_models(self) -> frozenset[str]:
        return frozenset(m.strip() for m in self.PINNED_MODELS.split(",") if m.strip())

    @property
    def safety_margin_bytes(self) -> int:
        return self.VRAM_SAFETY_MARGIN_MB * MIB


def is_loopback(host: str) -> bool:
    if host.strip().lower() in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def settings_markdown() -> str:
    """docs/configuration.md's table, generated so that it cannot drift from the code."""
    lines = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Config.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "" if default is None or default == {} else str(default)
        lines.append(f"| `{name}` | `{shown}` | {field.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if "--markdown" in sys.argv:
        print(settings_markdown())
    else:
        print(Config().model_dump_json(indent=2))
