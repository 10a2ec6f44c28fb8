"""The Prometheus gauges of `/metrics`, read at scrape time from state every process shares: the
queue from the store, and memory, loaded models, slots, GPUs and the runtime from the view the
leader publishes in the store (scheduling/view.py). Nothing is kept between scrapes, so any
worker, on any host, answers with the same figures, and a new leader's are there as soon as it
publishes. (Counters and histograms of events are in telemetry/process_metrics.py.) A node is labelled by
its name (`runtime.node_urls.node_label`), never its URL: every caller with a key may scrape this."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from jobs.model import JobStatus, Priority
from runtime.node_urls import node_label
from store import QueueCounts

PREFIX = "model_manager_"


@dataclass(frozen=True)
class SharedState:
    counts: QueueCounts
    view: dict[str, Any] | None           # the leader's published view; None before the first
    view_age_s: float | None


def _gauge(name: str, documentation: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, labels=labels)


class SharedStateCollector(Collector):
    def __init__(self, read: Callable[[], SharedState]):
        self.read = read

    def collect(self) -> Iterable[Metric]:
        state = self.read()
        yield from queue_gauges(state.counts)
        yield from view_gauges(state.view, state.view_age_s)


def queue_gauges(counts: QueueCounts) -> Iterable[Metric]:
    by_priority = _gauge("queue_depth", "Jobs waiting (pending or queued), by priority", ["priority"])
    for priority in Priority:
        by_priority.add_metric([priority.value], counts.waiting_by_priority.get(priority.value, 0))
    yield by_priority
    by_model = _gauge("queue_depth_by_model", "Jobs waiting (pending or queued), by model", ["model"])
    for model, n in sorted(counts.waiting_by_model.items()):
        by_model.add_metric([model], n)
    yield by_model
    jobs = _gauge("jobs", "Jobs in the store by status (finished ones until JOB_RETENTION_S removes them)",
                  ["status"])
    for status in JobStatus:
        jobs.add_metric([status.value], counts.by_status.get(status.value, 0))
    yield jobs


def view_gauges(view: dict[str, Any] | None, age_s: float | None) -> Iterable[Metric]:
    published = _gauge("scheduler_reporting", "1 when a scheduler has published its view, else 0")
    published.add_metric([], 0 if view is None else 1)
    yield published
    if view is None:
        return
    age = _gauge("scheduler_view_age_seconds", "Age of the scheduler's published view (0 in the leader)")
    age.add_metric([], age_s or 0.0)
    yield age
    epoch = _gauge("scheduler_epoch", "The scheduler lease's epoch: grows by one at each change of leader")
    epoch.add_metric([], float(view.get("epoch") or 0))
    yield epoch
    scheduler = view.get("scheduler") or {}
    for key, doc in (("slots_in_use", "Slots running a job, over every loaded model"),
                     ("slots_total", "Slots of every loaded model")):
        gauge = _gauge(key, doc)
        gauge.add_metric([], float(scheduler.get(key) or 0))
        yield gauge
    yield from node_gauges(view.get("nodes") or [])


def node_gauges(nodes: list[dict[str, Any]]) -> Iterable[Metric]:
    memory = {key: _gauge(f"memory_{key}_bytes", doc, ["node"]) for key, doc in (
        ("total", "The node's memory (GPU, or the part of host RAM models may use)"),
        ("used", "Memory in use on the node, models and other programs"),
        ("free", "Memory free on the node"),
        ("budget", "Memory the scheduler may plan with: total - VRAM_SAFETY_MARGIN_MB - other programs' use"))}
    up = _gauge("runtime_up", "1 when the node's runtime answers", ["node"])
    loaded = _gauge("models_loaded", "Models loaded (or loading, or unloading) on the node", ["node"])
    model_bytes = _gauge("model_memory_bytes", "A loaded model's memory, as the runtime reports it (as planned "
                         "until it does)", ["model", "node", "phase"])
    slots = _gauge("model_slots", "A loaded model's slots", ["model", "node"])
    slots_used = _gauge("model_slots_in_use", "A loaded model's slots running a job", ["model", "node"])
    gpu_util = _gauge("gpu_utilization_percent", "GPU utilisation, where the GPU reports it", ["node", "gpu"])
    gpu_power = _gauge("gpu_power_watts", "GPU power draw, where the GPU reports it", ["node", "gpu"])
    gpu_used = _gauge("gpu_memory_used_bytes", "GPU memory in use", ["node", "gpu"])
    gpu_total = _gauge("gpu_memory_total_bytes", "GPU memory", ["node", "gpu"])
    for node in nodes:
        name = node_label(str(node.get("kind") or ""), str(node.get("url") or ""))   # as in the event counters
        vram = node.get("vram") or {}
        for key, gauge in memory.items():
            gauge.add_metric([name], float(vram.get(key) or 0))
        up.add_metric([name], 1 if node.get("ok") else 0)
        models = node.get("loaded_models") or []
        loaded.add_metric([name], len(models))
        for m in models:
            size = m.get("size_vram") or m.get("planned_bytes") or 0
            model_bytes.add_metric([m["name"], name, str(m.get("phase") or "")], float(size))
            slots.add_metric([m["name"], name], float(m.get("slots") or 0))
            slots_used.add_metric([m["name"], name], float(m.get("running") or 0))
        for gpu in node.get("gpus") or []:
            labels = [name, str(gpu.get("index"))]
            gpu_used.add_metric(labels, float(gpu.get("memory_used") or 0))
            gpu_total.add_metric(labels, float(gpu.get("memory_total") or 0))
            if gpu.get("utilization_pct") is not None:
                gpu_util.add_metric(labels, float(gpu["utilization_pct"]))
            if gpu.get("power_w") is not None:
                gpu_power.add_metric(labels, float(gpu["power_w"]))
    yield from memory.values()
    yield from (up, loaded, model_bytes, slots, slots_used, gpu_util, gpu_power, gpu_used, gpu_total)
