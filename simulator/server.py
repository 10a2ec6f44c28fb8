"""The GPU simulator: an Ollama-compatible HTTP server with a virtual GPU, for scale tests and
capacity planning without a GPU. It answers the Ollama API that Model Manager uses, with
simulated timings and placeholder text: it is a simulator, not a model.

Loads take size / SIM_LOAD_GBPS seconds, the jobs running at once share the GPU's throughput
(`physics.SharedThroughput`), a load that does not fit fails with Ollama's out-of-memory error,
and idle models expire after their keep_alive as in Ollama. `GET /api/sim/stats` says what
happened: loads, unloads, out-of-memory errors, peak memory.
"""
from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, request

import ollama_protocol as proto
from model_registry import DESIGN_CATALOG, ModelSpec, canonical_name
from simulator.physics import SharedThroughput, SimOutOfMemory, VirtualGpu

VERSION = "0.0.0-sim"
STREAM_TICK_S = 0.25
EMBED_DIM = 384
_WORDS = ("the", "model", "answers", "with", "simulated", "tokens", "from", "a", "virtual", "GPU",
          "while", "the", "scheduler", "keeps", "memory", "within", "its", "budget", "and", "jobs",
          "share", "throughput", "fairly", "between", "priorities")


@dataclass
class _Resident:
    spec: ModelSpec
    ready: threading.Event = field(default_factory=threading.Event)
    loaded_at: float = 0.0
    keep_alive_s: float | None = proto.DEFAULT_KEEP_ALIVE_S
    expires: float | None = None         # wall time it expires when idle; None = never
    active: int = 0
    unload_when_idle: bool = False
    failed: str | None = None


class Simulator:
    def __init__(self, catalog: tuple[ModelSpec, ...] = DESIGN_CATALOG, vram_gb: float = 24.0,
                 load_gbps: float = 2.0, tokens_per_s: float = 400.0, batch_gain: float = 0.25,
                 default_tokens: int = 64, clock=time.time):
        self.catalog = {s.name: s for s in catalog}
        self.gpu = VirtualGpu(int(vram_gb * 1e9), load_gbps * 1e9)
        self.throughput = SharedThroughput(tokens_per_s, batch_gain)
        self.bandwidth = SharedThroughput(load_gbps * 1e9, 0.0)     # loads in flight share it
        self.default_tokens = default_tokens
        self.clock = clock
        self.models: dict[str, _Resident] = {}
        self.completed = 0
        self._events: dict[int, threading.Event] = {}
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._stop = False
        self._ticker = threading.Thread(target=self._tick, name="sim-ticker", daemon=True)
        self._ticker.start()

    # --- the clock thread: finishes jobs and expires idle models ---------------------------------
    def _tick(self) -> None:
        with self._lock:
            while not self._stop:
                now = self.clock()
                for key in self.throughput.advance(now) + self.bandwidth.advance(now):
                    self._events.pop(key).set()
                self._expire(now)
                wakes = [t for t in (self.throughput.next_finish(), self.bandwidth.next_finish()) if t is not None]
                wakes += [r.expires for r in self.models.values()
                          if r.expires is not None and r.active == 0 and r.ready.is_set()]
                timeout = max(min(wakes) - now, 0.0005) if wakes else 1.0
                self._lock.wait(min(timeout, 1.0))

    def _expire(self, now: float) -> None:
        for name, r in list(self.models.items()):
            if r.active == 0 and r.ready.is_set() and (
                    r.unload_when_idle or (r.expires is not None and r.expires <= now)):
                self._drop(name)

    def _drop(self, name: str) -> None:
        self.models.pop(name, None)
        self.gpu.unload(name)

    def close(self) -> None:
        with self._lock:
            self._stop = True
            self._lock.notify_all()

    # --- models ----------------------------------------------------------------------------------
    def spec(self, name: str) -> ModelSpec | None:
        return self.catalog.get(name) or self.catalog.get(canonical_name(name))

    def _touch(self, r: _Resident, keep_alive_s: float | None) -> None:
        r.keep_alive_s = keep_alive_s
        r.expires = None if keep_alive_s is None else self.clock() + keep_alive_s

    def ensure_loaded(self, spec: ModelSpec, keep_alive_s: float | None) -> float:
        """Load `spec` if needed (blocking for the simulated load time); return seconds spent."""
        with self._lock:
            r = self.models.get(spec.name)
            if r is None:
                self.gpu.begin_load(spec.name, spec.size_bytes)   # may raise SimOutOfMemory
                r = self.models[spec.name] = _Resident(spec)
                key = ("load", next(self._ids))
                loaded = self._events[key] = threading.Event()
                for done in self.bandwidth.add(key, spec.size_bytes, self.clock()):
                    self._events.pop(done).set()
                self._lock.notify_all()
                owner = True
            else:
                owner = False
            r.unload_when_idle = False
        started = self.clock()
        if owner:
            loaded.wait()
            with self._lock:
                r.loaded_at = self.clock()
                r.ready.set()
        else:
            r.ready.wait()
        with self._lock:
            self._touch(r, keep_alive_s)
            self._lock.notify_all()
        return self.clock() - started

    def unload(self, name: str) -> None:
        with self._lock:
            r = self.models.get(name)
            if r is None:
                return
            r.unload_when_idle = True
            self._lock.notify_all()
        r.ready.wait()
        with self._lock:
            self._expire(self.clock())

    # --- inference -------------------------------------------------------------------------------
    def generate(self, spec: ModelSpec, tokens: int, keep_alive_s: float | None) -> Iterator[int]:
        """Run a job of `tokens` tokens; yields the count of new tokens as they are produced,
        every STREAM_TICK_S, until done. The model must be loaded."""
        with self._lock:
            r = self.models[spec.name]
            r.active += 1
            key = next(self._ids)
            event = self._events[key] = threading.Event()
            for done in self.throughput.add(key, tokens, self.clock()):
                self._events.pop(done).set()
            self._lock.notify_all()
        sent = 0
        try:
            while not event.wait(STREAM_TICK_S):
                with self._lock:
                    for done in self.throughput.advance(self.clock()):
                        self._events.pop(done).set()
                    produced = int(self.throughput.produced(key))
                if produced > sent:
                    yield produced - sent
                    sent = produced
            if tokens > sent:
                yield tokens - sent
        finally:
            with self._lock:
                if self._events.pop(key, None) is not None:
                    self.throughput.remove(key, self.clock())
                r.active -= 1
                self.completed += 1
                self._touch(r, keep_alive_s)
                self._lock.notify_all()

    # --- views -----------------------------------------------------------------------------------
    def ps(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{
                "name": name, "model": name, "size": r.spec.size_bytes, "size_vram": r.spec.size_bytes,
                "digest": _digest(name), "details": _details(r.spec),
                "expires_at": proto.rfc3339(r.expires) if r.expires is not None else proto.expires_at(None, 0),
                "context_length": 4096,
            } for name, r in sorted(self.models.items()) if r.ready.is_set()]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "loads": self.gpu.loads, "unloads": self.gpu.unloads, "oom_errors": self.gpu.oom_errors,
                "peak_vram_bytes": self.gpu.peak_bytes, "vram_total_bytes": self.gpu.total_bytes,
                "vram_used_bytes": self.gpu.used_bytes, "running": len(self.throughput),
                "completed": self.completed,
                "utilization_pct": 100.0 if len(self.throughput) else 0.0,
            }


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _details(spec: ModelSpec) -> dict[str, Any]:
    return {"format": "gguf", "family": spec.family, "families": [spec.family],
            "parameter_size": spec.parameter_size, "quantization_level": "Q4_K_M"}


def _words(seed: str, start: int, count: int) -> str:
    base = int(hashlib.md5(seed.encode()).hexdigest()[:8], 16)
    return "".join(" " + _WORDS[(base + i) % len(_WORDS)] for i in range(start, start + count))


def _prompt_tokens(body: dict[str, Any]) -> int:
    text = str(body.get("prompt") or "") + "".join(
        str(m.get("content") or "") for m in body.get("messages") or [] if isinstance(m, dict))
    return max(1, len(text) // 4)


def create_sim_app(sim: Simulator) -> Flask:
    app = Flask("simulator")

    def body() -> dict[str, Any]:
        return proto.json_body(request.get_data())

    @app.errorhandler(proto.BadRequest)
    def bad_request(exc):
        return proto.error(400, str(exc))

    @app.get("/api/version")
    def version():
        return {"version": VERSION}

    @app.get("/api/tags")
    def tags():
        return {"models": [{"name": s.name, "model": s.name, "modified_at": proto.now_iso(),
                            "size": s.size_bytes, "digest": _digest(s.name), "details": _details(s)}
                           for s in sim.catalog.values()]}

    @app.get("/api/ps")
    def ps():
        return {"models": sim.ps()}

    @app.post("/api/show")
    def show():
        spec = sim.spec(proto.require_model(body()))
        if spec is None:
            return proto.error(404, "model not found")
        return {"details": _details(spec), "parameters": "", "template": "{{ .Prompt }}",
                "model_info": {"general.architecture": spec.family, "general.parameter_count": 0},
                "capabilities": list(spec.capabilities)}

    @app.get("/api/sim/stats")
    def stats():
        return sim.stats()

    def infer(kind: str):
        req = body()
        name = proto.require_model(req)
        spec = sim.spec(name)
        if spec is None:
            return proto.error(404, f"model '{name}' not found, try pulling it first")
        keep_alive = proto.parse_keep_alive(req.get("keep_alive"))
        prompt_empty = kind == "generate" and not req.get("prompt") and not req.get("messages")
        if kind == "chat" and not req.get("messages"):
            prompt_empty = True
        if prompt_empty and keep_alive == 0:
            sim.unload(spec.name)
            return proto.answer(kind, spec.name, "", done=True, done_reason="unload")
        if "completion" not in spec.capabilities:
            return proto.error(400, f'"{spec.name}" does not support {kind}')
        try:
            load_s = sim.ensure_loaded(spec, keep_alive)
        except SimOutOfMemory as exc:
            return proto.error(500, str(exc))
        if prompt_empty:
            return proto.answer(kind, spec.name, "", done=True, done_reason="load")
        options = req.get("options")
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise proto.BadRequest("options must be an object")
        tokens = options.get("num_predict") or sim.default_tokens
        if not isinstance(tokens, int) or isinstance(tokens, bool):
            raise proto.BadRequest("options.num_predict must be an integer")
        if tokens < 0:
            tokens = sim.default_tokens
        seed = str(req.get("prompt") or req.get("messages"))
        prompt_tokens = _prompt_tokens(req)
        started = time.time()

        def chunk(text: str) -> dict[str, Any]:
            return proto.answer(kind, spec.name, text)

        def final(text: str) -> dict[str, Any]:
            elapsed = time.time() - started
            return proto.final_answer(
                kind, spec.name, text, done_reason="length" if options.get("num_predict") else "stop",
                total_s=elapsed + load_s, load_s=load_s, prompt_tokens=prompt_tokens, prompt_s=0.0001,
                output_tokens=tokens, output_s=max(elapsed, 1e-6))

        if proto.wants_stream(req):
            def stream() -> Iterator[dict[str, Any]]:
                produced = 0
                for new in sim.generate(spec, tokens, keep_alive):
                    yield chunk(_words(seed, produced, new))
                    produced += new
                yield final("")
            return proto.ndjson(stream())
        produced = sum(sim.generate(spec, tokens, keep_alive))
        return final(_words(seed, 0, produced))

    @app.post("/api/generate")
    def generate():
        return infer("generate")

    @app.post("/api/chat")
    def chat():
        return infer("chat")

    @app.post("/api/embed")
    def embed():
        req = body()
        name = proto.require_model(req)
        spec = sim.spec(name)
        if spec is None:
            return proto.error(404, f"model '{name}' not found, try pulling it first")
        inputs = req.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not all(isinstance(i, str) for i in inputs):
            return proto.error(400, "input must be a string or a list of strings")
        keep_alive = proto.parse_keep_alive(req.get("keep_alive"))
        if "embedding" not in spec.capabilities:
            return proto.error(400, f'"{spec.name}" does not support embeddings')
        try:
            load_s = sim.ensure_loaded(spec, keep_alive)
        except SimOutOfMemory as exc:
            return proto.error(500, str(exc))
        if not inputs:   # Ollama loads the model and answers with no embeddings
            return {"model": spec.name, "embeddings": [], "load_duration": proto.ns(load_s)}
        started = time.time()
        tokens = sum(max(1, len(t) // 4) for t in inputs)
        for _ in sim.generate(spec, max(1, tokens // 10), keep_alive):
            pass
        vectors = []
        for text in inputs:
            digest = hashlib.sha256(text.encode()).digest()
            vectors.append([((digest[i % 32] / 255.0) - 0.5) for i in range(EMBED_DIM)])
        return {"model": spec.name, "embeddings": vectors,
                "total_duration": proto.ns(time.time() - started + load_s),
                "load_duration": proto.ns(load_s), "prompt_eval_count": tokens}

    return app
