"""`GET /metrics`: Prometheus figures, in the text format (or OpenMetrics when the scraper asks
for it). Events counted in processes (telemetry/process_metrics.py: added up over every gunicorn worker)
and gauges read at scrape time from the store and the leader's published view
(telemetry/collector.py), so whichever worker answers, the figures are the same. Like every route
but the probes it needs a key where AUTH_REQUIRED (Prometheus: `authorization: {credentials: KEY}`)."""
from __future__ import annotations

from collections.abc import Iterable

from flask import Blueprint, Response, current_app, request
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, choose_encoder, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from routes.common import service
from routes.system import views
from telemetry.collector import SharedState, SharedStateCollector
from telemetry.process_metrics import ProcessMetrics

metrics_bp = Blueprint("metrics", __name__)
REGISTRY_KEY = "model_manager_metrics_registry"


class _ProcessFigures(Collector):
    def __init__(self, metrics: ProcessMetrics):
        self.metrics = metrics

    def collect(self) -> Iterable[Metric]:
        return self.metrics.collect()


def _read_shared_state() -> SharedState:
    view, age = views().scheduler()
    return SharedState(service().counts(), view, age)


def _registry() -> CollectorRegistry:
    registry = current_app.extensions.get(REGISTRY_KEY)
    if registry is None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_ProcessFigures(service().metrics))
        registry.register(SharedStateCollector(_read_shared_state))
        current_app.extensions[REGISTRY_KEY] = registry
    return registry


@metrics_bp.get("/metrics")
def metrics() -> Response:
    try:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    except (TypeError, ValueError):        # a version it cannot read ("version=abc"): the classic format
        encode, content_type = generate_latest, CONTENT_TYPE_PLAIN_0_0_4
    return Response(encode(_registry()), status=200, headers={"Content-Type": content_type,
                                                              "Cache-Control": "no-store"})
