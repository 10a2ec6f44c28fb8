"""The embedded runtime's HTTP server: the Ollama API (the subset Model Manager and common
clients use) over real llama.cpp inference on the CPU, one runner process per loaded model.

Endpoints: /api/generate, /api/chat (streaming by default, as in Ollama, or not), /api/embed and
the older /api/embeddings (the embedding model, `all-minilm`), /api/ps, /api/tags, /api/show, /api/version;
loading and unloading through keep_alive as in Ollama, and a model loaded with the context of
the request's `options.num_ctx` (reloaded when a later request asks for another one). The routes
are `runtime.ollama_server`'s; this module is the backend behind them (`EmbeddedBackend`).
"""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Flask

from embedded_runtime import bert
from embedded_runtime.catalog import CATALOG, EmbeddedModel, ModelUnavailable, installed_models
from embedded_runtime.gguf_metadata import GGUFError, cached_metadata
from embedded_runtime.runners import Runner, RunnerFailed, RunnerPool
from runtime import ollama_protocol as proto
from runtime.ollama_protocol import Refused
from runtime.ollama_server import Answer, Kind, Route, Stream, Tag, create_ollama_app

VERSION = "0.0.0-embedded"
SAMPLING_OPTIONS = {  # Ollama option -> llama.cpp server request field
    "num_predict": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
    "min_p": "min_p", "seed": "seed", "stop": "stop", "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "typical_p": "typical_p",
}


def sampling(options: Any) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise proto.BadRequest("options must be an object")
    out = {SAMPLING_OPTIONS[k]: v for k, v in options.items() if k in SAMPLING_OPTIONS and v is not None}
    if isinstance(out.get("max_tokens"), int) and out["max_tokens"] < 0:
        del out["max_tokens"]            # Ollama's -1: until the model stops
    seed = out.get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        if seed < 0:
            del out["seed"]              # Ollama's -1: a random seed
        else:
            out["seed"] = seed & 0xFFFFFFFF   # llama.cpp's seed is 32 bits; OpenAI's may be 64
    return out


def requested_num_ctx(options: Any) -> int | None:
    """`options.num_ctx`: the context to load the model with (None: the runtime's default)."""
    if not isinstance(options, dict) or options.get("num_ctx") is None:
        return None
    num_ctx = options["num_ctx"]
    if isinstance(num_ctx, bool) or not isinstance(num_ctx, int) or num_ctx <= 0:
        raise proto.BadRequest("options.num_ctx must be a positive integer")
    return num_ctx


def response_format(fmt: Any) -> dict[str, Any]:
    if not fmt:
        return {}
    if fmt == "json":
        return {"response_format": {"type": "json_object"}}
    if isinstance(fmt, dict):
        return {"response_format": {"type": "json_schema", "json_schema": {"name": "output", "schema": fmt}}}
    raise proto.BadRequest('format must be "json" or a JSON schema object')


def _details(model: EmbeddedModel) -> dict[str, Any]:
    return {"format": model.format, "family": model.family, "families": [model.family],
            "parameter_size": model.parameter_size, "quantization_level": model.quantization}


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise proto.BadRequest("messages must be a non-empty list")
    out = []
    for m in raw:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise proto.BadRequest("each message needs a role and content")
        if m.get("images"):
            raise Refused(400, "this model does not take images")
        out.append({"role": m["role"], "content": m.get("content") or ""})
    return out


class EmbeddedBackend:
    """The embedded runtime as an Ollama backend (`runtime.ollama_server`): the catalog's installed
    models, served by the runner pool."""

    errors: tuple[type[Exception], ...] = (ModelUnavailable, RunnerFailed)

    def __init__(self, pool: RunnerPool):
        self.pool = pool

    def model_for(self, name: str) -> EmbeddedModel:
        model = CATALOG.get(name) or CATALOG.get(name.removesuffix(":latest"))
        if model is None:
            raise Refused(404, f"model '{name}' not found; the embedded runtime serves: {', '.join(CATALOG)}")
        return model

    def version(self) -> str:
        return VERSION

    def tags(self) -> list[Tag]:
        return [Tag(m.name, m.size_bytes, m.sha256, _details(m)) for m in installed_models()]

    def ps(self) -> list[dict[str, Any]]:
        return [{
            "name": r.model.name, "model": r.model.name, "size": r.rss(), "size_vram": 0,
            "digest": r.model.sha256, "details": _details(r.model),
            "expires_at": proto.rfc3339(r.expires) if r.expires is not None else proto.expires_at(None, 0),
            "context_length": r.num_ctx, "num_parallel": self.pool.slots(r.model), "pid": r.pid,
        } for r in self.pool.loaded()]

    def show(self, model: str) -> dict[str, Any]:
        found = self.model_for(model)
        try:
            path = self.pool.files.path(found)
            model_info = bert.model_info(path) if found.format == "safetensors" else cached_metadata(path)
        except (OSError, ValueError, GGUFError) as exc:
            raise Refused(500, f"cannot read the metadata of {found.name}: {exc}") from None
        ctx = found.context_length if found.embedding else self.pool.num_ctx
        template = "(the model's own chat template)" if found.chat_template else "{{ .Prompt }}"
        return {"details": _details(found), "parameters": f"num_ctx {ctx}",
                "template": "" if found.embedding else template,
                "model_info": model_info, "capabilities": list(found.capabilities)}

    def embed(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        """`/api/embed`: `input` a string or a list of them, one job for the whole list; each vector
        L2-normalised; `truncate` (default true) cuts inputs past the context, false refuses them;
        `dimensions` keeps the first n of each vector, normalised again (as Ollama does)."""
        found = self.model_for(model)
        if not found.embedding:
            raise Refused(400, f'"{found.name}" does not support embeddings')
        raw = body.get("input")
        inputs = [raw] if isinstance(raw, str) else raw if raw is not None else []
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise proto.BadRequest("input must be a string or a list of strings")
        truncate = body.get("truncate", True)
        if truncate is not None and not isinstance(truncate, bool):
            raise proto.BadRequest("truncate must be true or false")
        dimensions = body.get("dimensions")
        if dimensions is not None and (isinstance(dimensions, bool) or not isinstance(dimensions, int)
                                       or dimensions <= 0):
            raise proto.BadRequest("dimensions must be a positive integer")
        keep_alive = proto.parse_keep_alive(body.get("keep_alive"))
        if not inputs:      # Ollama loads the model and answers no vectors
            self.load_or_unload(found, keep_alive, None, "embed")
            return {"model": found.name, "embeddings": []}
        started = time.time()
        runner, load_s = self.pool.acquire(found.name, keep_alive)
        replies = runner.request("embed", {"input": inputs, "truncate": truncate is not False}, False)
        try:
            _, answer = _collect(replies)
        finally:
            replies.close()
            self.pool.release(runner, keep_alive)
        vectors = answer["vectors"]
        if dimensions is not None and dimensions < len(vectors[0]):
            vectors = [_normalised(v[:dimensions]) for v in vectors]
        return {"model": found.name, "embeddings": vectors, "total_duration": proto.ns(time.time() - started),
                "load_duration": proto.ns(load_s), "prompt_eval_count": answer["prompt_tokens"]}

    def routes(self) -> list[Route]:
        # Ollama's older embeddings route: one `prompt`, one vector
        def legacy(body: dict[str, Any]) -> dict[str, Any]:
            prompt = body.get("prompt")
            if not isinstance(prompt, str):
                raise proto.BadRequest("prompt must be a string")
            answer = self.embed(proto.require_model(body), {**body, "input": [prompt]})
            return {"embedding": answer["embeddings"][0]}
        return [Route("POST", "/api/embeddings", legacy)]

    def generate(self, kind: Kind, model: str, body: dict[str, Any]) -> Answer:
        found = self.model_for(model)
        keep_alive = proto.parse_keep_alive(body.get("keep_alive"))
        if "completion" not in found.capabilities:
            if keep_alive == 0 and not body.get("prompt") and not body.get("messages"):
                return self.load_or_unload(found, 0, None, kind)     # unloading any model, as Ollama does
            raise Refused(400, f'"{found.name}" does not support {kind}')
        num_ctx = requested_num_ctx(body.get("options"))
        if kind == "generate":
            prompt = body.get("prompt")
            if prompt is not None and not isinstance(prompt, str):
                raise proto.BadRequest("prompt must be a string")
            empty = not prompt
        else:
            empty = not body.get("messages")
        if empty:
            return self.load_or_unload(found, keep_alive, num_ctx, kind)
        if body.get("images"):
            raise Refused(400, "this model does not take images")
        params = {**sampling(body.get("options")), **response_format(body.get("format"))}
        system = body.get("system")
        if kind == "chat":
            if not found.chat_template:
                raise Refused(400, f'"{found.name}" does not support chat: it has no chat template '
                                   "(it is a base model; use /api/generate)")
            op, req = "chat", {"messages": _messages(body["messages"]), **params}
        elif body.get("raw") or not found.chat_template:
            text = f"{system}\n\n{prompt}" if system and not body.get("raw") else prompt
            op, req = "complete", {"prompt": text, **params}
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
            op, req = "chat", {"messages": messages, **params}
        stream = proto.wants_stream(body)
        started = time.time()
        pool = self.pool
        runner, load_s = pool.acquire(found.name, keep_alive, num_ctx)
        replies = runner.request(op, req, stream)
        if stream:
            def finish() -> None:
                replies.close()
                pool.release(runner, keep_alive)

            done = _Once(finish)
            # The stream releases the runner as soon as its last chunk is out; on_close covers a
            # stream that never started (a client gone before the first byte). Closing the runner
            # connection makes the runner stop generating.
            return Stream(proto.ndjson_lines(_stream(runner, replies, kind, started, load_s, done)), done)
        try:
            text, answer = _collect(replies)
        finally:
            replies.close()
            pool.release(runner, keep_alive)
        return _final(kind, runner.model.name, text, answer, started, load_s)

    def load_or_unload(self, model: EmbeddedModel, keep_alive: float | None, num_ctx: int | None,
                       kind: str) -> dict[str, Any]:
        if keep_alive == 0:
            self.pool.unload(model.name)
            reason = "unload"
        else:
            runner, _ = self.pool.acquire(model.name, keep_alive, num_ctx)
            self.pool.release(runner, keep_alive)
            reason = "load"
        return proto.answer(kind, model.name, "", done=True, done_reason=reason)


def create_embedded_app(pool: RunnerPool) -> Flask:
    return create_ollama_app(EmbeddedBackend(pool), "embedded_runtime")


def _collect(messages: Iterator[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    pieces: list[str] = []
    for message in messages:
        if message["type"] == "piece":
            pieces.append(message["text"])
        elif message["type"] == "error":
            raise Refused(message["status"], message["message"])
        else:
            return message["answer"].get("text") or "".join(pieces), message["answer"]
    raise RunnerFailed("the runner ended the answer early")


def _final(kind: str, name: str, text: str, answer: dict[str, Any], started: float, load_s: float) -> dict[str, Any]:
    return proto.final_answer(
        kind, name, text, done_reason="length" if answer.get("finish_reason") == "length" else "stop",
        total_s=time.time() - started, load_s=load_s, prompt_tokens=answer.get("prompt_tokens", 0),
        prompt_s=answer.get("prompt_ms", 0.0) / 1000, output_tokens=answer.get("output_tokens", 0),
        output_s=answer.get("output_ms", 0.0) / 1000)


def _normalised(vector: list[float]) -> list[float]:
    norm = sum(x * x for x in vector) ** 0.5
    return [x / norm for x in vector] if norm > 0 else vector


class _Once:
    """Runs a function once, however many times it is called."""

    def __init__(self, fn):
        self._fn = fn
        self._lock = threading.Lock()
        self._done = False

    def __call__(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._fn()


def _stream(runner: Runner, messages: Iterator[dict[str, Any]], kind: str, started: float,
            load_s: float, done: _Once) -> Iterator[dict[str, Any]]:
    """Ollama's stream: one object per piece, then the final one; errors as {"error": ...}."""
    try:
        for message in messages:
            if message["type"] == "piece":
                yield proto.answer(kind, runner.model.name, message["text"])
            elif message["type"] == "error":
                yield {"error": message["message"]}
                return
            else:
                yield _final(kind, runner.model.name, "", message["answer"], started, load_s)
                return
    except RunnerFailed as exc:
        yield {"error": str(exc)}
    finally:
        done()
