"""The runtime nodes a scheduler term drives: one per runtime (an Ollama, a simulated node, the
embedded runtime), each with its monitor, resource sampler, execution engine and scheduler core.

The cores share the queue, the registry and the counters; `scheduling.core.cluster_pass` plans
over all of them at once. A node whose runtime has not answered for NODE_DOWN_AFTER_S is down:
its requests in flight are stopped, their jobs re-queued under their run's fence (so each runs
again exactly once, elsewhere), and it takes no work until it answers again.

A node is named by its label (`runtime.node_urls.node_label`: its kind and a digest of its URL) wherever
the name can be seen by tenants (the ledger, the event counters, the activity log, job errors);
its URL is for admins only. A node URL from the store is checked again before it is opened.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import requests

from config import MIB, Config
from execution_engine import ExecutionEngine
from metering.sampler import ResourceSampler, RunnerPids
from model_registry import ModelRegistry
from queue_manager import QueueManager
from resource_monitor import FixedMemory, ResourceMonitor, ResourceState, SimulatorMemory
from runtime.backends import Runtime, checked_node_url, open_ollama, runtime_client
from runtime.client import NODE_DOWN
from runtime.node_urls import NodeUrlError, node_label, shown, split_node_url
from scheduling.core import SchedulerCore
from scheduling.model_settings import ModelSettings
from service.answers import StreamHub
from store.retrying import StoreLike
from telemetry.counters import Counters
from telemetry.logs import get_logger

syslog = get_logger("SYSTEM")


@dataclass
class RuntimeNode:
    runtime: Runtime
    monitor: ResourceMonitor
    sampler: ResourceSampler
    engine: ExecutionEngine
    core: SchedulerCore
    state: ResourceState | None = None
    unanswered_since: float | None = None
    stopped_requests: bool = False       # its requests were stopped when it went down
    removed: bool = False

    @property
    def name(self) -> str:
        return self.core.node

    @property
    def url(self) -> str:
        return self.runtime.url

    def sample(self, now: float) -> ResourceState:
        state = self.monitor.sample()
        self.state = state
        self.sampler.observe(state)
        if state.runtime_ok:
            if self.unanswered_since is not None:
                syslog.info("node %s answers again", self.url)
            self.unanswered_since, self.stopped_requests = None, False
        elif self.unanswered_since is None:
            self.unanswered_since = now
        return state

    def is_down(self, now: float, after_s: float) -> bool:
        return self.removed or (self.unanswered_since is not None and now - self.unanswered_since >= after_s)

    def stop_requests_if_down(self, now: float, after_s: float) -> None:
        """Once down, stop what it was running: the jobs go back to the queue for other nodes."""
        if self.is_down(now, after_s) and not self.stopped_requests:
            self.stopped_requests = True
            syslog.warning("node %s is down (no answer for %.0fs): its running jobs go back to the queue",
                           self.url, now - (self.unanswered_since or now))
            self.engine.interrupt_all(NODE_DOWN)

    def close(self) -> None:
        self.engine.shutdown(wait=False)
        self.sampler.close()
        self.runtime.stop()


@dataclass
class NodeParts:
    """What every node of a term shares."""
    config: Config
    store: StoreLike
    registry: ModelRegistry
    settings: ModelSettings
    counters: Counters
    clock: Callable[[], float]
    post: Callable[[SchedulerCore, object], None]      # an engine's event, for its core
    on_job_done: Callable[[str], None]
    want_reading: Callable[[], None]
    owner: str
    epoch: int
    queue: QueueManager
    answers: StreamHub | None = None


def build_node(runtime: Runtime, parts: NodeParts) -> RuntimeNode:
    name = node_label(runtime.kind, runtime.url)
    runtime.client.name = f"node {name}"
    syslog.info("node %s is %s", name, runtime.url)
    holder: list[RuntimeNode] = []
    monitor = ResourceMonitor(runtime.client, runtime.memory, parts.clock)
    sampler = ResourceSampler(RunnerPids(runtime.client, lambda: holder[0].state if holder else None),
                              runtime.memory.energy_source)
    core: SchedulerCore | None = None

    def post(event: object) -> None:
        assert core is not None         # the engine posts events of its jobs, which the core (made below) starts
        parts.post(core, event)

    engine = ExecutionEngine(runtime.client, parts.store, parts.config, parts.settings, parts.counters, name,
                             post=post, meter=sampler,
                             on_job_done=parts.on_job_done, clock=parts.clock, answers=parts.answers)
    core = SchedulerCore(parts.queue, parts.registry, engine, parts.config, parts.counters, name,
                         want_reading=parts.want_reading, owner=parts.owner, epoch=parts.epoch)
    node = RuntimeNode(runtime, monitor, sampler, engine, core)
    holder.append(node)
    return node


def open_added_node(config: Config, node_url: str) -> Runtime:
    """A node added at run time: an Ollama, or a GPU simulator started on its own (which says
    its memory), told apart by the simulator's own stats route. NodeUrlError when its URL is
    refused."""
    checked_node_url(config, node_url)
    url, vram_gb = split_node_url(node_url)
    client = runtime_client(config, url)
    try:
        answer = requests.get(url + "/api/sim/stats", timeout=2.0, allow_redirects=False)
        answer.close()
        simulated = 200 <= answer.status_code < 300
    except requests.RequestException:
        simulated = False
    if simulated and vram_gb is None:
        return Runtime("sim", url, client, SimulatorMemory(client, config.SIM_ENERGY_COUNTER),
                       num_parallel=config.SIM_NUM_PARALLEL)
    runtime = open_ollama(config, node_url)
    if vram_gb is None and not config.VRAM_TOTAL_MB:
        runtime.memory = FixedMemory(0, "unknown")
    elif vram_gb is None:
        runtime.memory = FixedMemory(config.VRAM_TOTAL_MB * MIB, "config")
    return runtime


ADD_RETRY_S = 30.0


def follow_changes(nodes: list[RuntimeNode], document: dict | None, parts: NodeParts, now: float,
                   failed_adds: dict[str, float]) -> list[RuntimeNode] | None:
    """The term's nodes after the changes asked for at run time (None: no change). Removed
    nodes stop their requests at once (their jobs go back to the queue) and are closed once
    those have ended; the last node is never removed; a node that cannot be added is tried
    again every ADD_RETRY_S."""
    add, remove = node_changes(document, [n.url for n in nodes if not n.removed])
    add = [u for u in add if failed_adds.get(u, 0.0) <= now]
    gone = [n for n in nodes if n.removed and n.engine.wait_idle(0)]   # removed, its requests ended
    if not add and not remove and not gone:
        return None
    for node in gone:
        node.close()
    nodes = [n for n in nodes if n not in gone]
    for url in remove:
        if sum(1 for n in nodes if not n.removed) <= 1:
            syslog.warning("node %s is the last one: it stays", url)
            break
        for node in nodes:
            if node.url == url and not node.removed:
                node.removed = True
                syslog.warning("node %s removed: its running jobs go back to the queue", url)
                node.engine.interrupt_all()
    for url in add:
        try:
            node = build_node(open_added_node(parts.config, url), parts)
        except NodeUrlError as exc:
            failed_adds[url] = float("inf")           # refused for good: not tried (or logged) again
            syslog.error("node %s is refused: %s", shown(url), exc)
            continue
        except Exception as exc:
            failed_adds[url] = now + ADD_RETRY_S
            syslog.warning("cannot add node %s (trying again in %.0f s): %s", url, ADD_RETRY_S, exc)
            continue
        failed_adds.pop(url, None)
        node.sample(now)
        nodes.append(node)
        syslog.info("node %s added", node.url)
    return nodes


def node_changes(document: dict | None, current: Iterable[str]) -> tuple[list[str], list[str]]:
    """(to add, to remove) given the store's document of nodes added and removed at run time."""
    added = [u for u in (document or {}).get("added", []) if isinstance(u, str)]
    removed = set((document or {}).get("removed", []))
    have = set(current)
    return ([u for u in added if _base_url(u) not in have and u not in removed],
            [u for u in have if u in removed])


def _base_url(node_url: str) -> str:
    try:
        return split_node_url(node_url)[0]
    except ValueError:
        return node_url          # opening it says why it is refused
