"""One leadership term of the scheduler: the runtime, the monitor, the engine and the scheduler
core, the pass loop, and the housekeeping beside it.

A term starts when this process wins the lease (scheduling/leadership.py) and ends when it loses it or
shuts down:

* the loop runs a scheduler pass on every wake-up and every SCHEDULER_LOOP_INTERVAL;
* housekeeping, on a thread of its own, reads the runtime and the GPU, restarts a managed
  runtime that died, refreshes the runtime's model list, publishes the scheduler's view for
  the API workers, purges what is past retention, mends what a crash left (store.repair), and
  sweeps for runs left behind (scheduling_policy.left_run_verdict);
* ending a term stops claiming at once. A term that lost the lease lets its requests in flight
  finish and records them (it still owns those runs; the new leader leaves them alone until
  this term retires its epoch), then retires its epoch; a term that shuts down cancels its
  requests, re-queues their jobs and retires its epoch.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from config import Config
from execution_engine import ExecutionEngine
from jobs.model import ErrorKind, JobStatus
from metering.sampler import ResourceSampler
from model_registry import DESIGN_CATALOG, ModelRegistry
from queue_manager import QueueManager
from resource_monitor import ResourceMonitor, ResourceState
from runtime.backends import Runtime, open_runtimes
from runtime.client import RuntimeFailure
from runtime.nodes import NodeParts, RuntimeNode, build_node, follow_changes
from scheduling.core import SchedulerCore, cluster_pass
from scheduling.leadership import LEASE_TTL_S, owner_alive
from scheduling.model_settings import ModelSettings, canonical_name
from scheduling.outlook import OUTLOOK_KEY
from scheduling.policy import LeftRun, RunAction, left_run_verdict
from scheduling.view import NODES_KEY, REGISTRY_KEY, STATE_KEY, outlook_view, registry_document, scheduler_view
from service.answers import StreamHub
from store.base import SCHEDULER_LEASE, Fenced
from store.retrying import RetryingStore
from telemetry.counters import Counters
from telemetry.logs import get_logger

log = get_logger("SCHEDULER")
syslog = get_logger("SYSTEM")
PUBLISH_EVERY_S = 0.5
TAGS_EVERY_S = 30.0
PURGE_EVERY_S = 60.0
SWEEP_EVERY_S = 5.0
SHUTDOWN_WAIT_S = 10.0


@dataclass
class TermContext:
    """What a term needs from the service that outlives it."""
    config: Config
    store: RetryingStore                # the scheduler's (retrying) store
    queue: QueueManager
    counters: Counters
    owner: str
    on_job_done: Callable[[str], None]
    on_fenced: Callable[[str], None]    # a claim was refused: the lease moved on
    clock: Callable[[], float] = time.time
    answers: StreamHub | None = None    # where streamed pieces go for the requests that follow them


class SchedulerTerm:
    def __init__(self, ctx: TermContext, epoch: int):
        self.ctx = ctx
        self.epoch = epoch
        self.config = ctx.config
        self.clock = ctx.clock
        self.ready = threading.Event()          # components built, first reading taken
        self.registry: ModelRegistry | None = None
        self.nodes: list[RuntimeNode] = []      # replaced whole when nodes come and go (readers take a copy)
        self._parts: NodeParts | None = None
        self.last_pass_ms = 0.0
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._sample_now = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"scheduler-{epoch}", daemon=True)
        self._readers = ThreadPoolExecutor(8, thread_name_prefix=f"node-reader-{epoch}")
        self._failed_adds: dict[str, float] = {}    # node URL -> when its add may be tried again

    # --- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, shutting_down: bool) -> None:
        """End the term: stop claiming now; then see its runs in flight out (see the module doc)."""
        self._stopping.set()
        self._wake.set()
        self._sample_now.set()
        if threading.current_thread() is not self._thread:
            self._thread.join(30)
        self.ctx.queue.stop()
        if not self.nodes:
            self._readers.shutdown(wait=False)
            syslog.info("scheduler term %d ended", self.epoch)
            return
        if shutting_down:
            for node in self.nodes:
                node.engine.interrupt_all()
            self._finish_term(SHUTDOWN_WAIT_S)
        else:
            threading.Thread(target=self._finish_term, args=(None,), name=f"term-{self.epoch}-end",
                             daemon=True).start()

    def _finish_term(self, wait_s: float | None) -> None:
        """Wait for the term's requests to end, then say so (retire the epoch) and let go. A
        shutdown waits `wait_s` at most, for the requests and for the store alike."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        idle = all(node.engine.wait_idle(None if deadline is None else max(deadline - time.monotonic(), 0.0))
                   for node in self.nodes)
        if idle:
            store = self.ctx.store if wait_s is None else self.ctx.store.with_patience(wait_s)
            try:
                store.retire_epoch(SCHEDULER_LEASE, self.epoch, self.clock())
                syslog.info("epoch %d retired: none of its requests is in flight", self.epoch)
            except Exception as exc:
                syslog.warning("could not retire epoch %d (%s); its runs are recovered by their deadline",
                               self.epoch, exc)
        for node in self.nodes:
            node.close()
        self._readers.shutdown(wait=False)
        syslog.info("scheduler term %d ended", self.epoch)

    # --- the first node's parts (one node is the common case; tools and tests read these) --------
    @property
    def runtime(self) -> Runtime | None:
        return self.nodes[0].runtime if self.nodes else None

    @property
    def core(self) -> SchedulerCore | None:
        return self.nodes[0].core if self.nodes else None

    @property
    def engine(self) -> ExecutionEngine | None:
        return self.nodes[0].engine if self.nodes else None

    @property
    def monitor(self) -> ResourceMonitor | None:
        return self.nodes[0].monitor if self.nodes else None

    @property
    def sampler(self) -> ResourceSampler | None:
        return self.nodes[0].sampler if self.nodes else None

    @property
    def state(self) -> ResourceState | None:
        return self.nodes[0].state if self.nodes else None

    # --- the term's own thread: set up, then the pass loop ------------------------------------------
    def _run(self) -> None:
        try:
            self._set_up()
        except Exception:
            syslog.exception("the scheduler could not start; it steps down")
            self.ctx.on_fenced("start failed")
            return
        housekeeping = threading.Thread(target=self._housekeeping, name=f"housekeeping-{self.epoch}", daemon=True)
        housekeeping.start()
        self.ready.set()
        try:
            while not self._stopping.is_set():
                try:
                    started = time.perf_counter()
                    self._pass()
                    self.last_pass_ms = (time.perf_counter() - started) * 1000
                except Fenced as exc:
                    syslog.warning("a claim was refused: %s", exc)
                    self.ctx.on_fenced(str(exc))
                    break
                except Exception:   # one bad pass (a store hiccup, say) must not stop scheduling
                    log.exception("scheduler pass failed; trying again")
                    self._stopping.wait(0.5)
                self._wake.wait(self.config.SCHEDULER_LOOP_INTERVAL)
                self._wake.clear()
        finally:
            self._sample_now.set()
            housekeeping.join(30)

    def _set_up(self) -> None:
        ctx, config = self.ctx, self.config
        syslog.info("scheduler %s taking over (epoch %d)", ctx.owner, self.epoch)
        runtimes = open_runtimes(config)
        first = runtimes[0]
        settings = ModelSettings.from_config(config, first.num_parallel)
        self.registry = ModelRegistry(config.VRAM_ESTIMATION_MULTIPLIER, ctx.store,
                                      DESIGN_CATALOG + first.catalog, settings)
        self._parts = NodeParts(config, ctx.store, self.registry, settings, ctx.counters, self.clock,
                                post=self._post, on_job_done=ctx.on_job_done, want_reading=self._sample_now.set,
                                owner=ctx.owner, epoch=self.epoch, queue=ctx.queue, answers=ctx.answers)
        self.nodes = [build_node(runtime, self._parts) for runtime in runtimes]
        if len(self.nodes) > 1:
            syslog.info("scheduling %d nodes: %s", len(self.nodes), ", ".join(n.url for n in self.nodes))
        ctx.queue.start(self.epoch)
        self.sweep()
        self._follow_node_changes()
        self._refresh_tags()
        unknown = sorted(m for m in settings.pinned if self.registry.get(m) is None)
        if unknown:
            syslog.warning("PINNED_MODELS names models no node has; they are not loaded: %s", ", ".join(unknown))
        self._sample()
        self.publish()                  # other workers see the new scheduler at once

    def _post(self, core: SchedulerCore, event) -> None:
        core.post(event)
        self._wake.set()

    def _pass(self) -> None:
        now, nodes = self.clock(), self.nodes
        after = self.config.NODE_DOWN_AFTER_S
        for node in nodes:
            node.stop_requests_if_down(now, after)
        live = [n for n in nodes if not n.removed]
        if live:
            cluster_pass([n.core for n in live], {n.name: n.state for n in live}, now,
                         frozenset(n.name for n in live if n.is_down(now, after)))

    # --- housekeeping ---------------------------------------------------------------------------
    def _sample(self) -> None:
        """Read each node's loaded models, memory and the host (all at once: one node that hangs
        must not hold up the readings of the others); the next pass reconciles."""
        now = self.clock()
        self._on_each_node(lambda node: node.sample(now))
        self._wake.set()

    def _on_each_node(self, action) -> list:
        nodes = self.nodes
        if len(nodes) == 1:
            return [action(nodes[0])]
        return list(self._readers.map(action, nodes))

    def _refresh_tags(self) -> None:
        """The models of every node (what each can load), and the architecture of any whose KV
        cache cannot be sized yet."""
        def tags(node: RuntimeNode) -> list[dict] | None:
            try:
                return node.runtime.client.tags()
            except Exception as exc:   # a runtime that is down must not stop the scheduler
                log.warning("cannot list the models of %s: %s", node.url, exc)
                return None

        listed: dict[str, dict] = {}
        answered = 0
        for node, entries in zip(self.nodes, self._on_each_node(tags), strict=False):
            if entries is None:
                continue
            answered += 1
            node.core.installed = frozenset(canonical_name(str(e.get("name") or e.get("model"))) for e in entries)
            for entry in entries:
                listed.setdefault(str(entry.get("name") or entry.get("model")), entry)
        if not answered:
            return
        if len(self.nodes) == 1:
            self.nodes[0].core.installed = None       # one node: its load says what it lacks
        registry = self._set_up_registry()
        registry.update_from_runtime(listed.values())
        client = next((n.runtime.client for n in self.nodes if n.state is None or n.state.runtime_ok), None)
        if client is None:
            return
        for name in registry.names():
            entry = registry.get(name)
            if entry is None or entry.on_runtime is not True or entry.spec.arch is not None:
                continue
            try:
                registry.learn_architecture(name, client.show(name).get("model_info") or {})
            except RuntimeFailure as exc:
                log.debug("cannot describe %s: %s", name, exc)

    def _housekeeping(self) -> None:
        config = self.config
        last = dict.fromkeys(("publish", "tags", "purge", "sweep"), self.clock())
        published_registry = -1
        while not self._stopping.is_set():
            self._sample_now.wait(min(config.RUNTIME_POLL_INTERVAL, PUBLISH_EVERY_S))
            sample_now = self._sample_now.is_set()
            self._sample_now.clear()
            if self._stopping.is_set():
                return
            now = self.clock()
            try:
                for node in self.nodes:
                    if node.runtime.restart_if_dead():
                        sample_now, last["tags"] = True, 0.0
                oldest = min((n.state.taken_at for n in self.nodes if n.state is not None), default=0.0)
                if sample_now or now - oldest >= config.RUNTIME_POLL_INTERVAL:
                    self._sample()
                if now - last["tags"] >= TAGS_EVERY_S:
                    self._refresh_tags()
                    last["tags"] = now
                if now - last["sweep"] >= SWEEP_EVERY_S:
                    self.sweep()
                    last["sweep"] = now
                if now - last["purge"] >= PURGE_EVERY_S:
                    self._purge(now)
                    last["purge"] = now
                if now - last["publish"] >= PUBLISH_EVERY_S or self._set_up_registry().version != published_registry:
                    self._follow_node_changes()
                    published_registry = self.publish()
                    last["publish"] = now
            except Exception:
                log.exception("housekeeping failed; trying again")
                self._stopping.wait(0.5)

    def _purge(self, now: float) -> None:
        store, config = self.ctx.store, self.config
        jobs = store.purge_finished(now - config.JOB_RETENTION_S)
        ledger = store.purge_metrics(now - config.LEDGER_RETENTION_S)
        keys = store.purge_idempotency(now)
        cached = store.purge_cache(now)
        # pieces are dropped when their job ends; these are what a crash left
        pieces = store.drop_pieces(before=now - config.MAX_JOB_TIMEOUT_S - PURGE_EVERY_S)
        mended = store.repair(now)
        if jobs or ledger or keys or cached or pieces or mended:
            log.info("purged %d finished jobs, %d ledger entries, %d idempotency keys, %d cached answers and %d "
                     "streamed batches past retention; mended %d records", jobs, ledger, keys, cached, pieces, mended)

    def sweep(self) -> int:
        """Take back the runs left behind (see scheduling_policy.left_run_verdict), and jobs an
        earlier term left queued."""
        store, config, now = self.ctx.store, self.config, self.clock()
        if self.ctx.queue.take_back_stale():
            self._wake.set()
        retired = store.retired_epochs(SCHEDULER_LEASE)
        mine = {job_id for node in self.nodes for job_id in node.core.running_ids()}
        taken = 0
        for run in store.running_runs():
            epoch = run.get("epoch")
            left = LeftRun(epoch, run["job_id"] in mine, epoch in retired,
                           True if epoch == self.epoch else owner_alive(run.get("owner")),
                           float(run.get("started_at") or 0.0),
                           float(run.get("timeout_s") or config.JOB_TIMEOUT_S), int(run.get("attempts") or 0))
            action, why = left_run_verdict(left, self.epoch, now, LEASE_TTL_S, config.MAX_ATTEMPTS,
                                           config.RECOVER_RUNNING == "requeue")
            if action is RunAction.KEEP:
                continue
            taken += self._take_back(run, action, why, now)
        return taken

    def _take_back(self, run: dict, action: RunAction, why: str, now: float) -> int:
        store, job_id, run_id = self.ctx.store, run["job_id"], run["run_id"]
        if action is RunAction.REQUEUE:
            done = store.recover_run(job_id, run_id, True, {"recovered": True, "last_error": why})
        else:
            fields = {"error": f"not run again: {why}", "error_kind": ErrorKind.RUNTIME.value, "completed_at": now,
                      "recovered": True}
            ledger = {"job_id": job_id, "run_id": run_id, "model": run["model"], "tenant": run.get("tenant") or "",
                      "status": JobStatus.FAILED.value,
                      "success": False, "error": fields["error"], "error_kind": fields["error_kind"],
                      "finished_at": now, "attempts": run.get("attempts")}
            done = store.recover_run(job_id, run_id, False, fields, ledger)
        if done:
            syslog.warning("job %s %s: %s", job_id, "re-queued" if action is RunAction.REQUEUE else "failed", why)
            if action is RunAction.FAIL:
                self.ctx.counters.job_finished(JobStatus.FAILED.value, run)
                self.ctx.on_job_done(job_id)
        return int(done)

    def _follow_node_changes(self) -> None:
        """Nodes added or removed at run time (/api/admin/nodes, kept in the store)."""
        parts = self._parts
        assert parts is not None, "the term is not set up"      # _set_up made them before anything calls this
        published = self.ctx.store.get_state(NODES_KEY)
        nodes = follow_changes(self.nodes, published[0] if published else None, parts, self.clock(),
                               self._failed_adds)
        if nodes is not None:
            self.nodes = nodes
            self._wake.set()

    # --- what the API workers read --------------------------------------------------------------
    def view(self) -> dict:
        return scheduler_view(self)

    def publish(self) -> int:
        """Put the scheduler's view and the registry where every API worker can read them."""
        now, store = self.clock(), self.ctx.store
        store.put_state(STATE_KEY, self.view(), now)
        store.put_state(REGISTRY_KEY, registry_document(self), now)
        store.put_state(OUTLOOK_KEY, outlook_view(self, now), now)
        return self._set_up_registry().version

    def _set_up_registry(self) -> ModelRegistry:
        """The registry, which `_set_up` made before anything that reads it runs."""
        registry = self.registry
        assert registry is not None, "the term is not set up"
        return registry
