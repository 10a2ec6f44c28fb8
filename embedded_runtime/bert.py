"""A BERT sentence encoder in numpy: all-MiniLM-L6-v2 (Ollama's `all-minilm`) without torch.

The forward pass of sentence-transformers' model, step by step: WordPiece tokens (the model's own
`tokenizer.json`, read by `tokenizers`), word + position + token-type embeddings and a layer norm,
then `num_hidden_layers` encoder layers (self-attention over the unpadded tokens, a residual and a
layer norm, a GELU feed-forward, a residual and a layer norm), mean pooling over the real tokens,
and an L2 normalisation. Weights are float32, read from `model.safetensors` by `safetensors`.

Why numpy and not llama.cpp: llama.cpp runs BERT only from a GGUF file, and writing one means
reproducing llama.cpp's converter (its tokenizer metadata above all) for one model; a mistake there
gives vectors that are wrong without an error. Six layers of 384 are small: numpy's matrix products
do the work, and the vectors are checked against sentence-transformers' in the tests.

Inputs are encoded in batches of sentences of similar length, padded and masked; a sentence's
vector does not depend on what it is batched with (within float32 rounding).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from embedded_runtime.binding import Answer, BindingError, Embeddings, OnPiece

Array = NDArray[np.float32]
BATCH = 32                  # sentences per forward pass at most,
BATCH_TOKENS = 2048         # and tokens: 32 inputs of 512 would hold 400 MB of attention scores


class TooLong(ValueError):
    """An input longer than the model's context, with truncation off."""


@dataclass(frozen=True)
class BertConfig:
    hidden: int
    heads: int
    layers: int
    max_positions: int
    eps: float

    @classmethod
    def read(cls, folder: Path) -> BertConfig:
        raw = json.loads((folder / "config.json").read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError("only BERT with GELU and absolute positions is supported")
        pooling = folder / "1_Pooling" / "config.json"
        if pooling.exists() and not json.loads(pooling.read_text()).get("pooling_mode_mean_tokens"):
            raise ValueError("only mean pooling is supported")
        return cls(int(raw["hidden_size"]), int(raw["num_attention_heads"]), int(raw["num_hidden_layers"]),
                   int(raw["max_position_embeddings"]), float(raw.get("layer_norm_eps", 1e-12)))


def _erf(x: Array) -> Array:
    """erf to within 1.5e-7 (Abramowitz and Stegun 7.1.26); numpy has none, and BERT's GELU is exact."""
    sign = np.sign(x)
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.3275911 * a)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    return (sign * (1.0 - poly * np.exp(-a * a))).astype(np.float32)


def _gelu(x: Array) -> Array:
    return (0.5 * x * (1.0 + _erf(x * np.float32(1 / np.sqrt(2))))).astype(np.float32)


def _layer_norm(x: Array, weight: Array, bias: Array, eps: float) -> Array:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return ((x - mean) / np.sqrt(var + eps) * weight + bias).astype(np.float32)


class BertEncoder:
    """Sentence vectors from a sentence-transformers BERT folder (config, tokenizer, safetensors)."""

    def __init__(self, folder: Path):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        folder = Path(folder)
        self.config = BertConfig.read(folder)
        weights = load_file(str(folder / "model.safetensors"))
        self.w = {k.removeprefix("bert."): np.ascontiguousarray(v, dtype=np.float32) for k, v in weights.items()}
        for name in [k for k in self.w if k.startswith("encoder.") and k.endswith(".weight") and self.w[k].ndim == 2]:
            self.w[name + ".T"] = np.ascontiguousarray(self.w.pop(name).T)    # (in, out): x @ W.T ready
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()           # the file pads and cuts at 128: batches are padded here
        self.tokenizer.no_truncation()
        self.context_length = self.config.max_positions
        self.dimensions = self.config.hidden

    # --- tokens ---------------------------------------------------------------------------------
    def tokens(self, texts: list[str], truncate: bool = True) -> list[list[int]]:
        """Token ids with [CLS] and [SEP]; past the context, the end is cut (truncate) or TooLong."""
        out = []
        for text in texts:
            ids = self.tokenizer.encode(text).ids
            if len(ids) > self.context_length:
                if not truncate:
                    raise TooLong(f"the input length exceeds the context length ({len(ids)} tokens; the context is "
                                  f"{self.context_length})")
                ids = ids[:self.context_length - 1] + ids[-1:]      # keep [SEP] at the end
            out.append(ids)
        return out

    # --- the forward pass -----------------------------------------------------------------------
    def embed(self, texts: list[str], truncate: bool = True) -> tuple[list[list[float]], int]:
        """L2-normalised sentence vectors, and the number of tokens read."""
        ids = self.tokens(texts, truncate)
        vectors: list[Array | None] = [None] * len(ids)
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))     # similar lengths share a batch
        start = 0
        while start < len(order):
            longest = len(ids[order[min(start + BATCH, len(order)) - 1]])
            chunk = order[start:start + max(1, min(BATCH, BATCH_TOKENS // longest))]
            for i, vector in zip(chunk, self._forward([ids[i] for i in chunk]), strict=True):
                vectors[i] = vector
            start += len(chunk)
        return [v.tolist() for v in vectors if v is not None], sum(len(t) for t in ids)

    def _forward(self, batch: list[list[int]]) -> Array:
        c, w = self.config, self.w
        n = max(len(t) for t in batch)
        ids = np.zeros((len(batch), n), dtype=np.int64)
        mask = np.zeros((len(batch), n), dtype=np.float32)
        for row, tokens in enumerate(batch):
            ids[row, :len(tokens)] = tokens
            mask[row, :len(tokens)] = 1.0
        x = (w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
             + w["embeddings.token_type_embeddings.weight"][0])
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], c.eps)
        # padded keys get -inf-like scores: exp() makes them 0, so a sentence sees only its own tokens
        blocked = ((1.0 - mask) * np.float32(-1e9))[:, None, None, :]
        head = c.hidden // c.heads
        for layer in range(c.layers):
            p = f"encoder.layer.{layer}."

            def dense(v: Array, name: str, p: str = p) -> Array:     # one matrix product for the batch
                out = v.reshape(-1, v.shape[-1]) @ w[p + name + ".weight.T"] + w[p + name + ".bias"]
                return out.reshape(*v.shape[:-1], out.shape[-1])

            def split(v: Array) -> Array:    # (batch, n, hidden) -> (batch, heads, n, head)
                return v.reshape(len(batch), n, c.heads, head).transpose(0, 2, 1, 3)

            q = split(dense(x, "attention.self.query"))
            k = split(dense(x, "attention.self.key"))
            v = split(dense(x, "attention.self.value"))
            scores = q @ k.transpose(0, 1, 3, 2) / np.float32(np.sqrt(head)) + blocked
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            attended = (scores / scores.sum(-1, keepdims=True)) @ v
            attended = attended.transpose(0, 2, 1, 3).reshape(len(batch), n, c.hidden)
            x = _layer_norm(x + dense(attended, "attention.output.dense"),
                            w[p + "attention.output.LayerNorm.weight"], w[p + "attention.output.LayerNorm.bias"], c.eps)
            inner = _gelu(dense(x, "intermediate.dense"))
            x = _layer_norm(x + dense(inner, "output.dense"),
                            w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"], c.eps)
        pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        return (pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)).astype(np.float32)



def model_info(folder: Path) -> dict[str, Any]:
    """The model's facts as Ollama's /api/show lists a GGUF file's (`model_info`), read without
    loading the weights (their count from the safetensors header)."""
    folder = Path(folder)
    c = BertConfig.read(folder)
    with open(folder / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    parameters = sum(int(np.prod(t["shape"])) for k, t in header.items() if k != "__metadata__")
    return {"general.architecture": "bert", "general.parameter_count": parameters,
            "bert.block_count": c.layers, "bert.context_length": c.max_positions, "bert.embedding_length": c.hidden,
            "bert.attention.head_count": c.heads, "bert.attention.layer_norm_epsilon": c.eps,
            "bert.pooling_type": 1, "tokenizer.ggml.model": "bert"}


class BertModel:
    """The encoder as a runner's model (`embedded_runtime.binding.LoadedModel`): embeddings only."""

    def __init__(self, folder: str):
        self.encoder = BertEncoder(Path(folder))

    def embed(self, request: dict[str, Any]) -> Embeddings:
        inputs = request.get("input")
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise BindingError(400, "input must be a string or a list of strings")
        started = time.perf_counter()
        try:
            vectors, tokens = self.encoder.embed(inputs, truncate=request.get("truncate", True) is not False)
        except TooLong as exc:
            raise BindingError(400, str(exc)) from None
        return Embeddings(vectors, tokens, (time.perf_counter() - started) * 1000)

    def complete(self, request: dict[str, Any], on_piece: OnPiece | None) -> Answer:
        raise BindingError(400, "this model does not support generate (it makes embeddings only)")

    def chat(self, request: dict[str, Any], on_piece: OnPiece | None) -> Answer:
        raise BindingError(400, "this model does not support chat (it makes embeddings only)")

    def close(self) -> None:
        self.encoder.w.clear()
