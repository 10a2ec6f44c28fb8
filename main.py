"""Start Model Manager: the API and the scheduler in one process.

    python main.py                          # Ollama if one answers, else the embedded runtime
    python main.py --backend sim            # the GPU simulator (SIM_VRAM_GB, ...)
    python main.py --http-port 5001
    python main.py keys create --tenant NAME   # an API key (see tenancy/keys_cli.py); keys list, keys revoke

For several API workers, serve `wsgi:app` with gunicorn instead (see gunicorn.conf.py); the
workers elect one scheduler among themselves.
"""
from __future__ import annotations

import argparse
import signal
import threading

from pydantic import ValidationError
from waitress.server import create_server

from api import MAX_WAIT_S, create_app
from config import Config
from routes import http_errors
from service.facade import Service
from telemetry.logs import get_logger, setup_logging
from tenancy import keys_cli

log = get_logger("SYSTEM")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Model Manager: a fair, OOM-free scheduler in front of Ollama.")
    parser.add_argument("--http-port", type=int, help="API port (HTTP_PORT, default 5001)")
    parser.add_argument("--host", help="API address (HTTP_HOST, default 127.0.0.1)")
    parser.add_argument("--backend", choices=["auto", "ollama", "embedded", "sim"],
                        help="runtime (BACKEND, default auto)")
    parser.add_argument("--ollama-url", help="Ollama base URL (OLLAMA_URL)")
    parser.add_argument("--data-dir", help="where the SQLite store and logs go (DATA_DIR)")
    parser.add_argument("--no-scheduler", action="store_true",
                        help="serve the API only; another process runs the scheduler")
    keys_cli.add_parser(parser.add_subparsers(dest="command", metavar="{keys}"))
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {"HTTP_PORT": args.http_port, "HTTP_HOST": args.host, "BACKEND": args.backend,
                 "OLLAMA_URL": args.ollama_url, "DATA_DIR": args.data_dir}
    return Config(**{k: v for k, v in overrides.items() if v is not None})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from_args(args)
    except ValidationError as exc:
        print(f"invalid configuration:\n{exc}")
        return 2
    if args.command == "keys":
        return keys_cli.run(args, config)
    refusal = config.exposure_error()
    if refusal:
        print(refusal)
        return 2
    setup_logging(config.LOG_FILE, config.LOG_LEVEL, max_bytes=config.LOG_MAX_BYTES, backups=config.LOG_BACKUPS)
    service = Service(config)
    app = create_app(config, service)
    # waitress: a production WSGI server in this one process (keep-alive, a thread pool);
    # long polls (?wait=) hold a thread each, hence HTTP_THREADS.
    # waitress reads a whole body before the app sees it: its own limit (well above
    # MAX_PROMPT_BYTES, so that the app answers an ordinary oversized body itself, once the
    # client is done sending) stops a huge one, chunked too, while it is read, with 413. Reading ahead on a connection is what lets
    # it tell a request that its client went away (an Ollama or OpenAI request then cancels its job).
    server = create_server(app, host=config.HTTP_HOST, port=config.HTTP_PORT, threads=config.HTTP_THREADS,
                           connection_limit=max(100, config.HTTP_THREADS * 4), channel_timeout=MAX_WAIT_S + 60,
                           max_request_body_size=config.MAX_PROMPT_BYTES * http_errors.SERVER_BODY_FACTOR,
                           max_request_header_size=http_errors.SERVER_HEADER_BYTES, ident="model-manager",
                           channel_request_lookahead=5)
    http_errors.install_waitress(server)        # its own 413 and 431 in the API's JSON
    if not args.no_scheduler:
        service.start()
    log.info("Model Manager listening on http://%s:%s (store: %s)", config.HTTP_HOST,
             server.effective_port, config.store_kind)

    stopping = threading.Event()

    def shutdown(signum, frame) -> None:
        log.info("shutting down (signal %d)", signum)
        stopping.set()

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)
    # The server runs in a daemon thread: on a signal the service stops cleanly (requests in
    # flight are stopped and their jobs re-queued for the next leader) and the process exits.
    threading.Thread(target=server.run, name="http", daemon=True).start()
    try:
        stopping.wait()
    finally:
        service.stop()
        service.raw_store.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
