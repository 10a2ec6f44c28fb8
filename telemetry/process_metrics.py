"""The Prometheus figures that are events in one process: jobs finished, their wait and run
times, model loads, unloads and evictions, runtime errors, re-queues. `/metrics` adds to them
the gauges that are read from shared state at scrape time (telemetry/collector.py).

How they stay right under gunicorn's several workers, and across a change of leader:

* An event is counted once, by the process where it happens: the leader counts what its
  scheduler and engine did (loads, runs finished, errors), a worker counts what its requests did
  (a cancellation, an answer from the result cache). No figure is counted in two processes.
* Under gunicorn, prometheus-client's multiprocess mode: each process writes its counters and
  histograms to memory-mapped files in PROMETHEUS_MULTIPROC_DIR (set up by gunicorn.conf.py
  before the workers start), and a scrape, whichever worker answers it, adds up every file in
  that folder. So every worker answers with the same totals, and a leader that dies leaves its
  files behind: what it counted stays in the totals while the next leader counts on in its own
  file. gunicorn.conf.py empties the folder when gunicorn starts (figures of an earlier run
  would be added in) and calls `mark_process_dead` for each worker that exits.
* Under `python main.py` (one process) the figures live in this object's own registry.
* Gauges (queue depth, memory, slots, GPU) are not kept here at all: they are read at scrape
  time from the store and from the view the leader publishes there, which every worker and
  every host reads alike (telemetry/collector.py).

Several hosts (one MongoDB): each host's gunicorn adds up its own processes; the totals of the
service are the sum over the hosts' `/metrics` (`sum by (...)` in PromQL), while the gauges,
read from the shared store, are the same on every host.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.metrics_core import Metric

from jobs.model import ErrorKind
from metering.ledger import USAGE_FIELDS
from telemetry.prometheus_setup import multiprocess_dir

NAMESPACE = "model_manager"
WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0)
RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0)


class ProcessMetrics:
    """The counters and histograms of one process (a `telemetry.counters.CountObserver`)."""

    def __init__(self) -> None:
        self.multiprocess = multiprocess_dir() is not None
        # In multiprocess mode the values go to files whatever the registry; a registry of our
        # own (rather than the global one) lets tests run several services in one process.
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.jobs_finished = Counter("jobs_finished", "Jobs that reached a final status, by status (complete, failed, "
                                     "cancelled), counted where it happened", ["status"], namespace=NAMESPACE,
                                     registry=reg)
        self.wait_seconds = Histogram("job_wait_seconds", "Time from submission until the runtime started a job's "
                                      "work (queue_wait_s + load_s of the ledger), of runs that finished",
                                      ["model", "priority"], namespace=NAMESPACE, buckets=WAIT_BUCKETS, registry=reg)
        self.run_seconds = Histogram("job_run_seconds", "The runtime's work on a job (run_s of the ledger), of runs "
                                     "that finished", ["model"], namespace=NAMESPACE, buckets=RUN_BUCKETS,
                                     registry=reg)
        self.loads = Counter("model_loads", "Model loads that succeeded", ["model", "node"], namespace=NAMESPACE,
                             registry=reg)
        self.unloads = Counter("model_unloads", "Model unloads that succeeded", ["model", "node"],
                               namespace=NAMESPACE, registry=reg)
        self.evictions = Counter("model_evictions", "Models the scheduler pushed out to make room for others "
                                 "(unloaded at once, or drained first)", ["model", "node"], namespace=NAMESPACE,
                                 registry=reg)
        self.errors = Counter("runtime_errors", "Runtime failures by kind (oom, runtime, timeout), of loads and jobs",
                              ["kind"], namespace=NAMESPACE, registry=reg)
        self.requeued = Counter("jobs_requeued", "Runs re-queued after a passing failure (out of memory, runtime "
                                "busy, a node gone)", namespace=NAMESPACE, registry=reg)
        self.tenant_jobs = Counter("tenant_jobs", "Jobs that finished, by tenant (\"\" without a key) and status",
                                   ["tenant", "status"], namespace=NAMESPACE, registry=reg)
        self.tenant_usage = Counter("tenant_usage", "What a tenant's finished runs used, by what (prompt_tokens, "
                                    "output_tokens, run_s, cpu_s, gpu_energy_j: the ledger's fields)",
                                    ["tenant", "what"], namespace=NAMESPACE, registry=reg)
        self.preempted = Counter("jobs_preempted", "Runs stopped for more urgent work (PREEMPTION); each goes back "
                                 "in line and resumes", namespace=NAMESPACE, registry=reg)
        self.preempt_waste = Counter("preemption_wasted", "What preemption threw away, of the jobs that then "
                                     "finished: output tokens of runs that started over (what=tokens), and their "
                                     "runtime seconds (what=seconds)", ["what"], namespace=NAMESPACE, registry=reg)
        self._by_kind = {"load": self.loads, "unload": self.unloads, "evict": self.evictions}

    # --- counters.CountObserver ---------------------------------------------------------------------
    def counted(self, name: str, n: int) -> None:
        if name == "requeued":
            self.requeued.inc(n)
        elif name == "preempted":
            self.preempted.inc(n)

    def error(self, kind: ErrorKind, n: int) -> None:
        self.errors.labels(kind.value).inc(n)

    def activity(self, kind: str, model: str, node: str) -> None:
        self._by_kind[kind].labels(model, node).inc()

    def job_finished(self, status: str, job: Mapping[str, Any] | None, metrics: Mapping[str, Any] | None,
                     n: int) -> None:
        self.jobs_finished.labels(status).inc(n)
        if job is None:
            return
        tenant = str(job.get("tenant") or "")
        self.tenant_jobs.labels(tenant, status).inc(n)
        for what in USAGE_FIELDS:
            value = (metrics or {}).get(what)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
                self.tenant_usage.labels(tenant, what).inc(value)
        if metrics and metrics.get("preemptions"):
            self.preempt_waste.labels("tokens").inc(float(metrics.get("wasted_tokens") or 0))
            self.preempt_waste.labels("seconds").inc(float(metrics.get("wasted_s") or 0.0))
        if not metrics or "run_s" not in metrics:
            return
        model = str(job.get("model") or "")
        wait = float(metrics.get("queue_wait_s") or 0.0) + float(metrics.get("load_s") or 0.0)
        self.wait_seconds.labels(model, str(job.get("priority") or "")).observe(wait)
        self.run_seconds.labels(model).observe(float(metrics.get("run_s") or 0.0))

    # --- for the scrape -------------------------------------------------------------------------------
    def collect(self) -> Iterable[Metric]:
        """This process's figures, or, in multiprocess mode, every process's added up."""
        if self.multiprocess:
            from prometheus_client.multiprocess import MultiProcessCollector
            scratch = CollectorRegistry()
            return MultiProcessCollector(scratch, path=multiprocess_dir()).collect()
        return self.registry.collect()
