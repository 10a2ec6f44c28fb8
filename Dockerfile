# Model Manager: the API and scheduler, served by gunicorn (gunicorn.conf.py: GUNICORN_WORKERS
# workers elect one scheduler among themselves). docker-compose.yml runs it beside MongoDB and Ollama.
#
#   docker build -t model-manager .
#   docker run -p 8000:8000 -e AUTH_REQUIRED=true -e OLLAMA_URL=http://gpu-box:11434 model-manager
#
# It listens on 0.0.0.0, so it refuses to start without AUTH_REQUIRED=true (or ALLOW_OPEN=true).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HTTP_HOST=0.0.0.0 \
    HTTP_PORT=8000 \
    DATA_DIR=/data \
    LOG_FILE=/data/model_manager.log

WORKDIR /app
# Dependencies first, so that a change to the code does not reinstall them.
COPY requirements.txt .
RUN pip install -r requirements.txt
COPY . .
# the project itself (its dependencies are the pinned ones above): the model-manager command
RUN pip install --no-deps .
RUN useradd --system --home-dir /app --shell /usr/sbin/nologin model-manager \
    && mkdir -p /data && chown model-manager /data
USER model-manager
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/api/health' % os.environ.get('HTTP_PORT', '8000'), timeout=4)"
# The command the test suite serves the app with (tests/conftest.py gunicorn_server).
CMD ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
