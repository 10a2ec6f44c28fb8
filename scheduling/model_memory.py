"""What a model needs in memory, estimated the way Ollama estimates it. Pure functions.

need = weights x VRAM_ESTIMATION_MULTIPLIER (compute graph, buffers) + KV cache, where the KV
cache (f16) is, as in Ollama's `GraphSize` and llama.cpp:

    2 (K and V) x block_count x head_count_kv x head_dim x (num_ctx x num_parallel) x 2 bytes

with head_dim = key_length when the model states it, else embedding_length / head_count, and
num_ctx capped at the model's trained context. The estimate stands until the runtime reports
what the model really took once loaded with the same settings.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

F16_BYTES = 2
# Without the model's architecture (a model the runtime has not described yet): KV bytes per
# token of context per byte of weights. Real models range from 3e-5 (GQA: llama3, qwen2.5) to
# 1.8e-4 (phi3, llama2); this sits on the safe side of the common ones.
UNKNOWN_ARCH_KV_PER_TOKEN_PER_BYTE = 5e-5


@dataclass(frozen=True)
class ModelArch:
    """The few numbers of a model's architecture that size its KV cache."""
    block_count: int
    head_count: int
    head_count_kv: int
    embedding_length: int
    context_length: int = 0          # trained context; 0 = unknown
    key_length: int = 0              # head dimension when stated (gemma: 256)

    @property
    def head_dim(self) -> int:
        return self.key_length or self.embedding_length // max(self.head_count, 1)

    def kv_bytes_per_token(self) -> int:
        return 2 * self.block_count * self.head_count_kv * self.head_dim * F16_BYTES


def effective_ctx(num_ctx: int, arch: ModelArch | None) -> int:
    """Ollama caps the context at the model's trained context (`effectiveContext`)."""
    if arch is not None and arch.context_length and num_ctx > arch.context_length:
        return arch.context_length
    return num_ctx


def kv_cache_bytes(arch: ModelArch | None, num_ctx: int, num_parallel: int, weights_bytes: int = 0) -> int:
    """KV cache for `num_parallel` slots of `num_ctx` tokens."""
    tokens = effective_ctx(num_ctx, arch) * num_parallel
    if arch is None:
        return int(weights_bytes * UNKNOWN_ARCH_KV_PER_TOKEN_PER_BYTE * tokens)
    return arch.kv_bytes_per_token() * tokens


def estimated_need(weights_bytes: int, multiplier: float, arch: ModelArch | None, num_ctx: int,
                   num_parallel: int) -> int:
    return int(weights_bytes * multiplier) + kv_cache_bytes(arch, num_ctx, num_parallel, weights_bytes)


def grown_need(current: int, room: int, factor: float) -> int:
    """The planned need after an out-of-memory incident: larger by `factor`, never past `room`,
    the most the model could have now (past it, it would wait for memory that is not there, or
    fail as one that can never fit); never smaller than it was."""
    grown = max(int(current * factor), current + 1)
    return max(min(grown, room), current) if room > 0 else grown


def _number(value: Any) -> int:
    if isinstance(value, list):                  # per-layer values (some architectures): the largest
        value = max((v for v in value if isinstance(v, (int, float))), default=0)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return 0
    return int(value)


def arch_from_model_info(model_info: Mapping[str, Any]) -> ModelArch | None:
    """The architecture from Ollama's `/api/show` → `model_info` (GGUF metadata keys), or None
    when it lacks what the KV estimate needs."""
    name = model_info.get("general.architecture")
    if not isinstance(name, str) or not name:
        return None

    def key(suffix: str) -> int:
        return _number(model_info.get(f"{name}.{suffix}"))

    blocks, heads, embedding = key("block_count"), key("attention.head_count"), key("embedding_length")
    if not (blocks and heads and embedding):
        return None
    return ModelArch(blocks, heads, key("attention.head_count_kv") or heads, embedding,
                     key("context_length"), key("attention.key_length"))


def model_info_of(arch: ModelArch, family: str) -> dict[str, Any]:
    """The `model_info` keys Ollama's `/api/show` gives for `arch` (runtimes this project serves)."""
    info: dict[str, Any] = {
        "general.architecture": family,
        f"{family}.block_count": arch.block_count,
        f"{family}.attention.head_count": arch.head_count,
        f"{family}.attention.head_count_kv": arch.head_count_kv,
        f"{family}.embedding_length": arch.embedding_length,
        f"{family}.context_length": arch.context_length,
    }
    if arch.key_length:
        info[f"{family}.attention.key_length"] = arch.key_length
    return info
