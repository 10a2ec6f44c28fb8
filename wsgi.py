"""The WSGI entry point for gunicorn: `gunicorn -c gunicorn.conf.py wsgi:app`.

Each worker process builds its own app and Service on the shared store; gunicorn.conf.py starts
every worker's Service after the fork, and the workers elect one scheduler among themselves
(the store's `scheduler` lease), so exactly one scheduler runs however many workers serve.
"""
from api import create_app
from config import Config
from service.facade import Service
from telemetry.logs import setup_logging

config = Config()
setup_logging(config.LOG_FILE, config.LOG_LEVEL, max_bytes=config.LOG_MAX_BYTES, backups=config.LOG_BACKUPS)
service = Service(config)
app = create_app(config, service)
