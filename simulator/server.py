"""The GPU simulator: an Ollama-compatible HTTP server with a virtual GPU, for scale tests and
capacity planning without a GPU. It answers the Ollama API that Model Manager uses, with
simulated timings and placeholder text: it is a simulator, not a model.

It behaves like Ollama where a scheduler in front of Ollama must respect it:

* Slots: each loaded model serves at most `num_parallel` requests at once (embedding-only models
  one); the others wait inside the simulator, first come, first served, per model
  (`runtime_slots`). Beyond `max_queue` waiting requests it answers 503 as Ollama does.
* Memory: a load reserves the weights plus the KV cache of the model's slots at its context
  (`scheduling.model_memory.kv_cache_bytes`) and takes that size / load bandwidth; a load that does not fit
  fails with Ollama's out-of-memory error. A request whose `options.num_ctx` differs from the
  loaded model's waits for the model's running requests, then reloads it with that context.
* Time: the jobs running at once share the GPU's throughput (`physics.SharedThroughput`); idle
  models expire after their keep_alive; a client that closes its connection cancels its request.

The runtime itself (models, loads, slots, generation) is `simulator.virtual_runtime`; this module
is its HTTP API: the backend (`SimBackend`) behind the Ollama routes of `runtime.ollama_server`.

`GET /api/sim/stats` says what happened (loads, memory, slots, the order requests got their
slots, simulated energy); `POST /api/sim/faults` injects faults for tests (`simulator.faults`).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from flask import Flask, request

from model_registry import ModelSpec
from runtime import ollama_protocol as proto
from runtime.ollama_server import Answer, Kind, Route, Stream, Tag, create_ollama_app
from scheduling.model_memory import model_info_of
from simulator.faults import Fault
from simulator.physics import SimOutOfMemory
from simulator.runtime_slots import ClientGone, ServerBusy, Waiter
from simulator.virtual_runtime import Simulator, details_of, digest_of

__all__ = ["Simulator", "create_sim_app"]

VERSION = "0.0.0-sim"
PROMPT_EVAL_S = 0.0001
EMBED_DIM = 384
_WORDS = ("the", "model", "answers", "with", "simulated", "tokens", "from", "a", "virtual", "GPU",
          "while", "the", "scheduler", "keeps", "memory", "within", "its", "budget", "and", "jobs",
          "share", "throughput", "fairly", "between", "priorities")


class ClientProbe:
    """Whether a request's HTTP client has closed its connection, read from the server's socket
    (werkzeug's `werkzeug.socket`); without a socket, the client never seems gone."""

    def __init__(self, sock: socket.socket | None):
        self.sock = sock

    def gone(self) -> bool:
        if self.sock is None:
            return False
        try:
            poller = select.poll()
            poller.register(self.sock, select.POLLIN)
            if not poller.poll(0):
                return False
            return self.sock.recv(1, socket.MSG_PEEK) == b""   # the request was read: only EOF is left
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def cut(self) -> None:
        """Fault injection: close the connection mid-answer."""
        if self.sock is not None:
            with contextlib.suppress(OSError):
                self.sock.shutdown(socket.SHUT_RDWR)


def _words(seed: str, start: int, count: int) -> str:
    base = int(hashlib.md5(seed.encode()).hexdigest()[:8], 16)
    return "".join(" " + _WORDS[(base + i) % len(_WORDS)] for i in range(start, start + count))


def _continued(body: dict[str, Any]) -> tuple[str, int]:
    """What an answer's words are drawn from, and where they start: a chat whose last message is
    the assistant's continues that message (as Ollama does), from the word after its last."""
    messages = body.get("messages")
    if isinstance(messages, list) and messages and isinstance(messages[-1], dict) \
            and messages[-1].get("role") == "assistant":
        return str(messages[:-1]), len(str(messages[-1].get("content") or "").split())
    return str(body.get("prompt") or messages), 0


def _prompt_tokens(body: dict[str, Any]) -> int:
    text = str(body.get("prompt") or "") + "".join(
        str(m.get("content") or "") for m in body.get("messages") or [] if isinstance(m, dict))
    return max(1, len(text) // 4)


def _prompt_of(kind: str, body: dict[str, Any]) -> str | None:
    """The prompt of a generate/chat request (the last message's content for chat); None for a
    request without one, which only loads (or unloads) the model."""
    if kind == "chat":
        messages = body.get("messages")
        if not messages:
            return None
        last = messages[-1]
        return str(last.get("content") or "") if isinstance(last, dict) else str(last)
    prompt = body.get("prompt")
    return str(prompt) if prompt else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class _Options:
    num_ctx: int | None                  # None: the model's context (the default when loading)
    num_predict: int | None


def _options(body: dict[str, Any]) -> _Options:
    options = body.get("options")
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise proto.BadRequest("options must be an object")
    num_ctx = options.get("num_ctx")
    if num_ctx is not None and (not _is_int(num_ctx) or num_ctx < 1):
        raise proto.BadRequest("options.num_ctx must be a positive integer")
    num_predict = options.get("num_predict")
    if num_predict is not None and not _is_int(num_predict):
        raise proto.BadRequest("options.num_predict must be an integer")
    return _Options(num_ctx, num_predict)


def _not_found(name: str) -> proto.Refused:
    return proto.Refused(404, f"model {json.dumps(name)} not found, try pulling it first")


@dataclass
class _Run:
    """A generate/chat request that holds its slot: generates, answers, gives the slot back."""
    sim: Simulator
    kind: str
    spec: ModelSpec
    waiter: Waiter
    client: ClientProbe
    tokens: int
    length_limited: bool
    seed: str
    prompt_tokens: int
    load_s: float
    fault: Fault | None
    start: int = 0                  # words already in a final assistant message it continues

    def __post_init__(self) -> None:
        self.started = self.sim.clock()

    def final(self, text: str) -> dict[str, Any]:
        elapsed = max(self.sim.clock() - self.started, 2 * PROMPT_EVAL_S)
        return proto.final_answer(
            self.kind, self.spec.name, text, done_reason="length" if self.length_limited else "stop",
            total_s=self.load_s + elapsed, load_s=self.load_s, prompt_tokens=self.prompt_tokens,
            prompt_s=PROMPT_EVAL_S, output_tokens=self.tokens, output_s=elapsed - PROMPT_EVAL_S)

    def whole(self) -> dict[str, Any]:
        """The answer in one object (`"stream": false`)."""
        try:
            if self.fault is not None and self.fault.kind == "stall":
                self.sim.hold_until_gone(self.client)
                raise ClientGone()
            produced = sum(self.sim.generate(self.tokens, self.client))
            self.sim.answered(self.waiter)
            return self.final(_words(self.seed, self.start, produced))
        except ClientGone:
            self.sim.release(self.waiter, cancelled=True)
            raise proto.Refused(499, "client disconnected") from None
        finally:
            self.sim.release(self.waiter)

    def lines(self) -> Iterator[str]:
        """The answer as newline-delimited JSON; a fault shows after the first chunk."""
        try:
            produced = 0
            with contextlib.closing(self.sim.generate(self.tokens, self.client)) as job:
                for new in job:
                    # one token a chunk, as Ollama streams (what a preempted job resumes from counts
                    # them); a fault shows after the first
                    shown = 1 if self.fault is not None else new
                    yield "".join(json.dumps(proto.answer(self.kind, self.spec.name,
                                                          _words(self.seed, self.start + produced + i, 1))) + "\n"
                                  for i in range(shown))
                    produced += new
                    if self.fault is not None:
                        break
            if self.fault is None:
                yield json.dumps(self.final("")) + "\n"
                self.sim.answered(self.waiter)
            elif self.fault.kind == "garbage":
                yield "llama_decode: garbled output <<<\n"
            elif self.fault.kind == "drop":
                self.client.cut()
            else:                                # stall
                self.sim.hold_until_gone(self.client)
                self.sim.release(self.waiter, cancelled=True)
        except (ClientGone, GeneratorExit):       # GeneratorExit: the server closed the stream early
            self.sim.release(self.waiter, cancelled=True)
        finally:
            self.sim.release(self.waiter)

    def streamed(self) -> Stream:
        return Stream(self.lines(), lambda: self.sim.release(self.waiter))    # released even if never iterated


def _client() -> ClientProbe:
    return ClientProbe(request.environ.get("werkzeug.socket"))


class SimBackend:
    """The simulator as an Ollama backend (`runtime.ollama_server`), with its own routes:
    `GET /api/sim/stats`, `GET` and `POST /api/sim/faults`."""

    errors: tuple[type[Exception], ...] = ()

    def __init__(self, sim: Simulator):
        self.sim = sim

    def version(self) -> str:
        return VERSION

    def tags(self) -> list[Tag]:
        return [Tag(s.name, s.size_bytes, digest_of(s.name), details_of(s)) for s in self.sim.catalog.values()]

    def ps(self) -> list[dict[str, Any]]:
        return self.sim.ps()

    def show(self, model: str) -> dict[str, Any]:
        spec = self.sim.spec(model)
        if spec is None:
            raise proto.Refused(404, f"model '{model}' not found")
        info: dict[str, Any] = {"general.architecture": spec.family, "general.parameter_count": 0}
        if spec.arch is not None:
            info.update(model_info_of(spec.arch, spec.family))
        return {"details": details_of(spec), "parameters": f"num_ctx {self.sim.num_ctx}", "template": "{{ .Prompt }}",
                "model_info": info, "capabilities": list(spec.capabilities)}

    def routes(self) -> list[Route]:
        return [Route("GET", "/api/sim/stats", lambda _: self.sim.stats()),
                Route("GET", "/api/sim/faults", lambda _: self.sim.faults.pending()),
                Route("POST", "/api/sim/faults", self.sim.faults.configure)]

    def enter(self, spec: ModelSpec, num_ctx: int | None, prompt: str | None,
              keep_alive: float | None) -> tuple[Waiter, float]:
        """Admit a request and wait for its slot (its model, without a prompt): (waiter, seconds
        waited); raises proto.Refused."""
        try:
            waiter = self.sim.admit(spec, num_ctx, prompt is not None, prompt or "", keep_alive)
            return waiter, self.sim.wait(waiter, _client())
        except ServerBusy as exc:
            raise proto.Refused(503, str(exc)) from None
        except SimOutOfMemory as exc:
            raise proto.Refused(500, str(exc)) from None
        except ClientGone:
            raise proto.Refused(499, "client disconnected") from None

    def generate(self, kind: Kind, model: str, body: dict[str, Any]) -> Answer:
        sim = self.sim
        spec = sim.spec(model)
        if spec is None:
            raise _not_found(model)
        keep_alive = proto.parse_keep_alive(body.get("keep_alive"))
        prompt = _prompt_of(kind, body)
        if prompt is None and keep_alive == 0:
            sim.unload(spec.name)
            return proto.answer(kind, spec.name, "", done=True, done_reason="unload")
        if "completion" not in spec.capabilities:
            raise proto.Refused(400, f'"{spec.name}" does not support {kind}')
        options = _options(body)
        streaming = proto.wants_stream(body)
        fault = sim.faults.take(kind, streaming) if prompt is not None else None
        if fault is not None and fault.kind == "error":
            raise proto.Refused(fault.status, fault.message)
        waiter, load_s = self.enter(spec, options.num_ctx, prompt, keep_alive)
        if prompt is None:
            return proto.answer(kind, spec.name, "", done=True, done_reason="load",
                                load_duration=proto.ns(load_s))
        tokens = options.num_predict if options.num_predict and options.num_predict > 0 else sim.default_tokens
        seed, start = _continued(body)
        run = _Run(sim, kind, spec, waiter, _client(), tokens, bool(options.num_predict), seed, _prompt_tokens(body),
                   load_s, fault, start)
        return run.streamed() if streaming else run.whole()

    def embed(self, model: str, body: dict[str, Any]) -> dict[str, Any]:
        spec = self.sim.spec(model)
        if spec is None:
            raise _not_found(model)
        inputs = body.get("input")
        inputs = [inputs] if isinstance(inputs, str) else list(inputs or [])
        if not all(isinstance(i, str) for i in inputs):
            raise proto.Refused(400, "input must be a string or a list of strings")
        keep_alive = proto.parse_keep_alive(body.get("keep_alive"))
        if "embedding" not in spec.capabilities:
            raise proto.Refused(400, f'"{spec.name}" does not support embeddings')
        options = _options(body)
        fault = self.sim.faults.take("embed", False) if inputs else None
        if fault is not None:
            raise proto.Refused(fault.status, fault.message)
        waiter, load_s = self.enter(spec, options.num_ctx, inputs[0] if inputs else None, keep_alive)
        if not inputs:   # Ollama loads the model and answers with no embeddings
            return {"model": spec.name, "embeddings": [], "load_duration": proto.ns(load_s)}
        return _embed_answer(self.sim, spec, waiter, _client(), inputs, load_s)


def create_sim_app(sim: Simulator) -> Flask:
    return create_ollama_app(SimBackend(sim), "simulator")


def _embed_answer(sim: Simulator, spec: ModelSpec, waiter: Waiter, client: ClientProbe, inputs: list[str],
                  load_s: float) -> dict[str, Any]:
    started = sim.clock()
    tokens = sum(max(1, len(t) // 4) for t in inputs)
    try:
        for _ in sim.generate(max(1, tokens // 10), client):
            pass
    except ClientGone:
        sim.release(waiter, cancelled=True)
        raise proto.Refused(499, "client disconnected") from None
    finally:
        sim.release(waiter)
    vectors = []
    for text in inputs:
        digest = hashlib.sha256(text.encode()).digest()
        vectors.append([((digest[i % 32] / 255.0) - 0.5) for i in range(EMBED_DIM)])
    return {"model": spec.name, "embeddings": vectors,
            "total_duration": proto.ns(sim.clock() - started + load_s),
            "load_duration": proto.ns(load_s), "prompt_eval_count": tokens}
