"""Setting up prometheus-client's multiprocess mode for gunicorn (telemetry/process_metrics.py says why),
without importing prometheus-client: gunicorn.conf.py runs this in the master before it forks the
workers, and a prometheus-client imported there before PROMETHEUS_MULTIPROC_DIR is set would be
inherited by every worker in single-process mode."""
from __future__ import annotations

import os


def multiprocess_dir() -> str | None:
    """The folder of multiprocess mode, when this process writes its figures there.
    prometheus-client decides it from this environment variable when it is imported, so the
    variable, not Config, says which mode this process is in (gunicorn.conf.py sets both)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def prepare_multiprocess_dir(configured: str | None) -> tuple[str, bool]:
    """gunicorn's master, before any worker starts: the folder for the workers' figures, emptied
    (an earlier run's figures would be added in), and announced to the workers through the
    environment; and whether it is a temporary one made here (removed by `remove_temporary_dir`
    when gunicorn stops; not with atexit, which forked workers would run too)."""
    import tempfile
    if configured:
        os.makedirs(configured, exist_ok=True)
        for name in os.listdir(configured):
            if name.endswith(".db"):
                os.remove(os.path.join(configured, name))
        path, temporary = configured, False
    else:
        path, temporary = tempfile.mkdtemp(prefix="model-manager-metrics-"), True
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, temporary


def remove_temporary_dir(path: str) -> None:
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def worker_gone(pid: int) -> None:
    """gunicorn's master, when a worker exits: drop what of it must not outlive it (live gauges;
    its counters and histograms stay in the totals)."""
    from prometheus_client import multiprocess
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)
