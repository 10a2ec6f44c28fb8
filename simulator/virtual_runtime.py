"""The GPU simulator's runtime on the wall clock: the models on its virtual GPU, their loads,
their slots and the requests waiting for them, and generation. `simulator.server` puts the
Ollama HTTP API in front of it.

A request enters (`admit`), waits for a slot of its model behind the model's earlier requests
(`wait`; a load without a prompt waits for the model only), generates (`generate`) and gives the
slot back (`release`). The head of a model's queue decides what happens next (`_dispatch`):
load the model, reload it with the context the head needs once its running requests are done,
or take a free slot. One lock guards it all; a clock thread finishes jobs and loads and expires
idle models.
"""
from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Protocol

from model_registry import DESIGN_CATALOG, ModelSpec, canonical_name
from runtime import ollama_protocol as proto
from scheduling.gpu_placement import GpuSplit
from scheduling.model_memory import kv_cache_bytes
from simulator.faults import Faults
from simulator.physics import EnergyMeter, SharedThroughput, SimOutOfMemory, VirtualGpu
from simulator.runtime_slots import ClientGone, ServerBusy, SlotQueues, Waiter, next_arrival

STREAM_TICK_S = 0.25
CLIENT_POLL_S = 0.1          # how often a waiting or stalled request looks for its client


class Client(Protocol):
    """The HTTP client of a request, as far as the runtime needs to know it."""

    def gone(self) -> bool: ...


@dataclass
class _Resident:
    """A model loaded (or loading) on the virtual GPU."""
    spec: ModelSpec
    num_ctx: int
    size_bytes: int                      # weights + KV cache
    slots: int
    keep_alive_s: float | None = proto.DEFAULT_KEEP_ALIVE_S
    loading: bool = True
    expires: float | None = None         # wall time it expires when idle; None = never
    running: int = 0
    unload_asked: int | None = None      # arrival number of an unload request; later requests cancel it

    @property
    def idle(self) -> bool:
        return not self.loading and self.running == 0


class Simulator:
    """The virtual runtime: `num_parallel` slots per model (1 for embedding-only models), at most
    `max_queue` requests waiting in all, models loaded with `num_ctx` unless a request asks for
    another context, and an energy counter at `idle_watts` / `busy_watts`."""

    def __init__(self, catalog: tuple[ModelSpec, ...] = DESIGN_CATALOG, vram_gb: float = 24.0,
                 load_gbps: float = 2.0, tokens_per_s: float = 400.0, batch_gain: float = 0.25,
                 default_tokens: int = 64, clock=time.time, num_parallel: int = 1, max_queue: int = 512,
                 num_ctx: int = 4096, idle_watts: float = 60.0, busy_watts: float = 300.0, gpus: int = 1,
                 gpu_split: GpuSplit = GpuSplit.OLLAMA):
        if num_parallel < 1 or max_queue < 1 or num_ctx < 1:
            raise ValueError("num_parallel, max_queue and num_ctx must be at least 1")
        self.catalog = {s.name: s for s in catalog}
        self.gpu = VirtualGpu(int(vram_gb * 1e9), load_gbps * 1e9, gpus, gpu_split)
        self.throughput: SharedThroughput[int] = SharedThroughput(tokens_per_s, batch_gain)
        # loads in flight share it, each named ("load", model, a number of its own)
        self.bandwidth: SharedThroughput[tuple[str, str, int]] = SharedThroughput(load_gbps * 1e9, 0.0)
        self.default_tokens = default_tokens
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.num_ctx = num_ctx
        self.clock = clock
        self.energy = EnergyMeter(idle_watts, busy_watts, clock())
        self.faults = Faults()
        self.queues = SlotQueues()
        self.models: dict[str, _Resident] = {}
        self.completed = 0
        self.cancelled = 0
        self.rejected_busy = 0
        self._events: dict[int, threading.Event] = {}     # generation job -> set when done
        self._ids = itertools.count()
        self._lock = threading.Condition()
        self._stop = False
        self._ticker = threading.Thread(target=self._tick, name="sim-ticker", daemon=True)
        self._ticker.start()

    # --- the clock: finishes jobs and loads, expires idle models (lock held) ---------------------
    def _tick(self) -> None:
        with self._lock:
            while not self._stop:
                now = self.clock()
                self._advance(now)
                self._expire(now)
                wakes = [t for t in (self.throughput.next_finish(), self.bandwidth.next_finish()) if t is not None]
                wakes += [r.expires for r in self.models.values() if r.expires is not None and r.idle]
                timeout = max(min(wakes) - now, 0.0005) if wakes else 1.0
                self._lock.wait(min(timeout, 1.0))

    def _advance(self, now: float) -> None:
        self._jobs_done(self.throughput.advance(now))
        for key in self.bandwidth.advance(now):
            self._loaded(key[1], now)
        self.energy.update(now, busy=len(self.throughput) > 0)

    def _jobs_done(self, keys: list[int]) -> None:
        for key in keys:
            self._events.pop(key).set()

    def _expire(self, now: float) -> None:
        for name, r in list(self.models.items()):
            if r.idle and not self.queues.has_waiters(name) and (
                    r.unload_asked is not None or (r.expires is not None and r.expires <= now)):
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

    def footprint(self, spec: ModelSpec, num_ctx: int) -> tuple[int, int]:
        """(slots, bytes) of `spec` loaded with `num_ctx`: weights + KV cache of its slots."""
        slots = 1 if spec.embedding_only else self.num_parallel
        return slots, spec.size_bytes + kv_cache_bytes(spec.arch, num_ctx, slots, spec.size_bytes)

    def _touch(self, r: _Resident, keep_alive_s: float | None) -> None:
        r.keep_alive_s = keep_alive_s
        r.expires = None if keep_alive_s is None else self.clock() + keep_alive_s

    def _start_load(self, w: Waiter, now: float) -> bool:
        """Load `w`'s model with the context it needs; False when it does not fit (`w` fails)."""
        spec = self.catalog[w.model]
        num_ctx = w.num_ctx or self.num_ctx
        slots, size = self.footprint(spec, num_ctx)
        try:
            self.gpu.begin_load(spec.name, size)
        except SimOutOfMemory as exc:
            self.queues.finish_unslotted(w, exc)
            return False
        self.models[spec.name] = _Resident(spec, num_ctx, size, slots, w.keep_alive_s)
        for key in self.bandwidth.add(("load", spec.name, next(self._ids)), size, now):
            self._loaded(key[1], now)
        return True

    def _loaded(self, name: str, now: float) -> None:
        r = self.models[name]
        r.loading = False
        self._touch(r, r.keep_alive_s)
        self._dispatch(name, now)
        self._lock.notify_all()

    def _dispatch(self, name: str, now: float) -> None:
        """Serve the head of `name`'s queue as far as the model allows (lock held): load the model,
        reload it with the context the head needs once its running requests are done, or give
        the head a slot; strictly in arrival order."""
        while (w := self.queues.head(name)) is not None:
            r = self.models.get(name)
            if r is None:
                if self._start_load(w, now):
                    return
                continue
            if r.loading:
                return
            if w.num_ctx is not None and w.num_ctx != r.num_ctx:
                if r.running:
                    return                       # reload once the running requests are done
                self._drop(name)
                continue
            if r.unload_asked is not None and w.seq > r.unload_asked:
                r.unload_asked = None
            if not w.wants_slot:
                self._touch(r, w.keep_alive_s)
                self.queues.finish_unslotted(w)
                continue
            if r.running >= r.slots:
                return
            r.running += 1
            self.queues.grant(w, now)

    def unload(self, name: str) -> None:
        """Unload `name` once it is idle (once loaded, if it is loading), as Ollama does for
        `keep_alive: 0`: the requests that arrived before still run, a later one cancels it."""
        with self._lock:
            self._lock.wait_for(lambda: name not in self.models or not self.models[name].loading)
            r = self.models.get(name)
            if r is None:
                return
            r.unload_asked = next_arrival()
            self._expire(self.clock())

    # --- requests: enter, wait for a slot, run, leave ----------------------------------------------
    def admit(self, spec: ModelSpec, num_ctx: int | None, wants_slot: bool, prompt: str,
              keep_alive_s: float | None) -> Waiter:
        """A request for `spec` enters: it waits for a slot (a load without a prompt: for the model
        loaded with its context) behind the model's earlier requests. Raises ServerBusy when
        `max_queue` requests are waiting already."""
        with self._lock:
            now = self.clock()
            self._advance(now)
            w = Waiter(spec.name, num_ctx, wants_slot, prompt, keep_alive_s, now)
            r = self.models.get(spec.name)
            if not wants_slot and r is not None and not r.loading and num_ctx in (None, r.num_ctx):
                r.unload_asked = None                # loaded as asked: nothing to wait for
                self._touch(r, keep_alive_s)
                w.done.set()
                return w
            if self.queues.waiting >= self.max_queue:
                self.rejected_busy += 1
                raise ServerBusy()
            self.queues.enqueue(w)
            self._dispatch(spec.name, now)
            self._lock.notify_all()
            return w

    def wait(self, w: Waiter, client: Client) -> float:
        """Block until `w` has its slot (or its model); returns the seconds it waited. Raises the
        load's SimOutOfMemory, or ClientGone when the client left first (`w` never gets a slot)."""
        while not w.done.wait(CLIENT_POLL_S):
            if client.gone():
                with self._lock:
                    if self.queues.cancel(w):
                        self.cancelled += 1
                        self._dispatch(w.model, self.clock())     # the head may have changed
                        raise ClientGone()
        if w.error is not None:
            raise w.error
        return (w.slot_at if w.slot_at is not None else self.clock()) - w.arrived

    def generate(self, tokens: int, client: Client) -> Generator[int, None, None]:
        """Run a job of `tokens` tokens for a request that holds its slot; yields the count of new
        tokens as they are produced, every STREAM_TICK_S, until done. Raises ClientGone."""
        with self._lock:
            now = self.clock()
            self._advance(now)
            key = next(self._ids)
            event = self._events[key] = threading.Event()
            self._jobs_done(self.throughput.add(key, tokens, now))
            self.energy.update(now, busy=True)
            self._lock.notify_all()
        sent = 0
        try:
            while not event.wait(STREAM_TICK_S):
                if client.gone():
                    raise ClientGone()
                with self._lock:
                    self._advance(self.clock())
                    produced = int(self.throughput.produced(key))
                if produced > sent:
                    yield produced - sent
                    sent = produced
            if tokens > sent:
                yield tokens - sent
        finally:
            with self._lock:
                now = self.clock()
                self._advance(now)
                if self._events.pop(key, None) is not None:      # stopped before done
                    self._jobs_done(self.throughput.remove(key, now))
                    self.energy.update(now, busy=len(self.throughput) > 0)
                self._lock.notify_all()

    def hold_until_gone(self, client: Client) -> None:
        """Fault injection (stall): keep the slot and do nothing until the client goes away."""
        while not client.gone() and not self._stop:
            time.sleep(CLIENT_POLL_S)

    def answered(self, w: Waiter) -> None:
        """`w`'s whole answer went out (its last object was handed to the server)."""
        with self._lock:
            self.queues.answered_once_more(w, self.clock())

    def release(self, w: Waiter, cancelled: bool = False) -> None:
        """`w` is done with its slot (idempotent): the next waiter may have it."""
        with self._lock:
            now = self.clock()
            self._advance(now)
            if not self.queues.release(w):
                return
            r = self.models[w.model]
            r.running -= 1
            self._touch(r, w.keep_alive_s)
            if cancelled:
                self.cancelled += 1
            else:
                self.completed += 1
            self._dispatch(w.model, now)
            self._expire(now)
            self._lock.notify_all()

    # --- views -----------------------------------------------------------------------------------
    def ps(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{
                "name": name, "model": name, "size": r.size_bytes, "size_vram": r.size_bytes,
                "digest": digest_of(name), "details": details_of(r.spec),
                "expires_at": proto.rfc3339(r.expires) if r.expires is not None else proto.expires_at(None, 0),
                "context_length": r.num_ctx,
            } for name, r in sorted(self.models.items()) if not r.loading]

    def stats(self) -> dict[str, Any]:
        with self._lock:
            self._advance(self.clock())
            return {
                "loads": self.gpu.loads, "unloads": self.gpu.unloads, "oom_errors": self.gpu.oom_errors,
                "peak_vram_bytes": self.gpu.peak_bytes, "vram_total_bytes": self.gpu.total_bytes,
                "vram_used_bytes": self.gpu.used_bytes, "running": sum(self.queues.running.values()),
                "gpus": [{"index": i, "total_bytes": t, "used_bytes": u}
                         for i, (t, u) in enumerate(zip(self.gpu.gpu_totals, self.gpu.gpu_used, strict=False))],
                "completed": self.completed,
                "utilization_pct": 100.0 if len(self.throughput) else 0.0,
                "num_parallel": self.num_parallel, "max_queue": self.max_queue, "num_ctx": self.num_ctx,
                "waiting": self.queues.waiting, "rejected_busy": self.rejected_busy, "cancelled": self.cancelled,
                "max_in_flight": dict(self.queues.max_in_flight), "max_running": dict(self.queues.max_running),
                "served": list(self.queues.served), "answered": list(self.queues.answered),
                "repeats": self.queues.repeats(),
                "energy_j": self.energy.joules, "power_w": self.energy.watts,
            }


def digest_of(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def details_of(spec: ModelSpec) -> dict[str, Any]:
    return {"format": "gguf", "family": spec.family, "families": [spec.family],
            "parameter_size": spec.parameter_size, "quantization_level": "Q4_K_M"}
