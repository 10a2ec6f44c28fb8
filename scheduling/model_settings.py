"""How each model is run: its context length and its slots, and which request options would
change that. Pure: configuration in, answers out.

Ollama loads a model once per set of runner options (context length, batch size, GPU layers,
threads, mmap). A request whose options differ makes Ollama reload the model with another
memory footprint, one the scheduler never planned. So Model Manager fixes those options per
model (NUM_CTX and MODEL_NUM_CTX), sends them with every load and request, and refuses a
request that asks for other values (`reload_option_error`). Sampling options pass untouched.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Ollama's runner options (api.Runner, and older releases' ones) with the values that leave a
# loaded model as it is: what Ollama uses when a request does not set them. `num_ctx` is
# absent: its value is the model's configured context length.
_NEUTRAL_RUNNER_OPTIONS: dict[str, tuple[Any, ...]] = {
    "num_batch": (512,),
    "num_gpu": (),              # any negative value means "decide for me", as when unset
    "main_gpu": (0,),
    "num_thread": (0,),
    "use_mmap": (None,),
    "use_mlock": (False,),
    "low_vram": (False,),
    "numa": (False,),
    "f16_kv": (True,),
    "vocab_only": (False,),
    "logits_all": (False,),
    "draft_num_predict": (),
}
RUNNER_OPTIONS = frozenset(_NEUTRAL_RUNNER_OPTIONS) | {"num_ctx"}


def canonical_name(name: str) -> str:
    """Ollama's own rule: a name without a tag means `:latest`."""
    name = name.strip()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _lookup(overrides: Mapping[str, int], model: str) -> int | None:
    if model in overrides:
        return overrides[model]
    return overrides.get(canonical_name(model))


@dataclass(frozen=True)
class ModelSettings:
    """Context length and slots per model: a default and per-model overrides."""
    num_ctx: int = 4096
    num_parallel: int = 1                       # the runtime's slots per model
    ctx_overrides: Mapping[str, int] = field(default_factory=dict)
    parallel_overrides: Mapping[str, int] = field(default_factory=dict)
    pinned: frozenset[str] = frozenset()        # PINNED_MODELS, canonical names
    keep_alive: str = "30m"                     # MODEL_KEEP_ALIVE

    @classmethod
    def from_config(cls, config: Any, runtime_num_parallel: int | None = None) -> ModelSettings:
        """`runtime_num_parallel`: what the runtime in use gives each model (the embedded runtime
        and the simulator say; for Ollama it is OLLAMA_NUM_PARALLEL)."""
        return cls(config.NUM_CTX, runtime_num_parallel or config.OLLAMA_NUM_PARALLEL,
                   {canonical_name(k): v for k, v in config.MODEL_NUM_CTX.items()},
                   {canonical_name(k): v for k, v in config.MODEL_NUM_PARALLEL.items()},
                   frozenset(canonical_name(m) for m in config.pinned_models), config.MODEL_KEEP_ALIVE)

    def keep_alive_for(self, model: str) -> str | int:
        """What loads and requests of `model` send as keep_alive: -1 (forever) for a pinned one."""
        return -1 if canonical_name(model) in self.pinned else self.keep_alive

    def ctx_for(self, model: str) -> int:
        return _lookup(self.ctx_overrides, model) or self.num_ctx

    def slots_for(self, model: str, embedding_only: bool = False) -> int:
        """Requests `model` serves at once. Ollama loads embedding models with one slot."""
        override = _lookup(self.parallel_overrides, model)
        if override:
            return override
        return 1 if embedding_only else self.num_parallel

    def load_options(self, model: str) -> dict[str, Any]:
        """The runner options every load and request of `model` carries."""
        return {"num_ctx": self.ctx_for(model)}

    def request_options(self, model: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
        return {**(options or {}), **self.load_options(model)}

    def signature(self, model: str, embedding_only: bool = False) -> str:
        """What a measured footprint depends on: a figure measured under other settings is stale."""
        return f"ctx={self.ctx_for(model)},par={self.slots_for(model, embedding_only)}"


def reload_option_error(options: Mapping[str, Any] | None, model: str, settings: ModelSettings) -> str | None:
    """The first option in `options` that would make the runtime reload `model` with another
    footprint, as a message naming it; None when every option may pass."""
    for name, value in (options or {}).items():
        if name not in RUNNER_OPTIONS:
            continue
        if name == "num_ctx":
            configured = settings.ctx_for(model)
            if value != configured or isinstance(value, bool):
                return (f"options.num_ctx: {model} runs with a context of {configured} tokens (NUM_CTX / MODEL_NUM_CTX); "
                        f"another value would make the runtime reload it with a footprint the scheduler did not plan. "
                        f"Leave num_ctx out, or ask the operator to change the model's configured context")
            continue
        neutral = _NEUTRAL_RUNNER_OPTIONS[name]
        if name == "num_gpu" and isinstance(value, int) and not isinstance(value, bool) and value < 0:
            continue
        if any(value == n and type(value) is type(n) for n in neutral):
            continue
        return (f"options.{name}: runner options are fixed per model by Model Manager (a different {name} would make "
                f"the runtime reload {model} with a footprint the scheduler did not plan); leave it out")
    return None


def settle_runner_options(options: Mapping[str, Any] | None, model: str,
                          settings: ModelSettings) -> tuple[dict[str, Any], str | None]:
    """For clients that send runner options as a habit (Ollama's and OpenAI's routes): the
    options without them (the model runs with its configured ones), or an error when the
    client needs more context than the model is configured with."""
    kept = {k: v for k, v in (options or {}).items() if k not in RUNNER_OPTIONS}
    wanted = (options or {}).get("num_ctx")
    configured = settings.ctx_for(model)
    if isinstance(wanted, int) and not isinstance(wanted, bool) and wanted > configured:
        return kept, (f"options.num_ctx: {model} runs with a context of {configured} tokens here (NUM_CTX / "
                      f"MODEL_NUM_CTX), less than the {wanted} asked for; ask the operator for a longer context")
    return kept, None
