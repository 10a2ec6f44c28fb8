"""gunicorn settings for Model Manager: `gunicorn -c gunicorn.conf.py wsgi:app`.

Workers (GUNICORN_WORKERS, default 4) share the job store (SQLite in DATA_DIR, or MongoDB);
one of them wins the scheduler lease and also runs the scheduler, the runtime it starts (the
embedded runtime or simulator, when used) and the engine; if it dies another takes over.
"""
import sys

from config import Config
from routes import http_errors
from telemetry import prometheus_setup

_config = Config()
if _config.exposure_error():
    sys.exit(_config.exposure_error())
bind = f"{_config.HTTP_HOST}:{_config.HTTP_PORT}"
workers = _config.GUNICORN_WORKERS
# gthread, answering its own errors (a request line or headers too large) in the API's JSON
worker_class = http_errors.gunicorn_worker_class(_config.CLIENT_TIMEOUT_S)
# Each waiting request (a long poll, an Ollama or OpenAI request) holds a thread: MAX_WAITERS
# of them at most, below this.
threads = _config.GUNICORN_THREADS or _config.HTTP_THREADS
if threads <= _config.MAX_WAITERS:
    sys.exit(f"GUNICORN_THREADS={threads} must be above MAX_WAITERS={_config.MAX_WAITERS}, or waiting requests "
             "could take every thread and /api/health would stop answering")
timeout = 120
graceful_timeout = 30
# /metrics: every worker's counters and histograms in one folder, added up by whichever worker
# answers a scrape (telemetry/process_metrics.py). Set before any worker imports prometheus-client.
_metrics_dir, _metrics_dir_is_temporary = prometheus_setup.prepare_multiprocess_dir(
    str(_config.PROMETHEUS_MULTIPROC_DIR) if _config.PROMETHEUS_MULTIPROC_DIR else None)


def post_worker_init(worker):
    import wsgi
    wsgi.service.start()


def worker_exit(server, worker):
    import wsgi
    wsgi.service.stop()


def child_exit(server, worker):
    prometheus_setup.worker_gone(worker.pid)


def on_exit(server):
    if _metrics_dir_is_temporary:
        prometheus_setup.remove_temporary_dir(_metrics_dir)
