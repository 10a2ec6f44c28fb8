"""Who is calling: the API key of a request (`Authorization: Bearer KEY`, what the Ollama and
OpenAI clients send, or `X-API-Key`), looked up by its hash and kept for KEY_CACHE_S.

With AUTH_REQUIRED every route but the probes needs a valid key (401 otherwise). A valid key sent
when it is off still counts: it names the tenant and its limits; one that is not valid then is
ignored (clients send placeholder keys), and a request without a key sees everything.
"""
from __future__ import annotations

import threading
import time

from flask import Flask, g, request

from routes.common import ApiError
from service.facade import Service
from tenancy.keys import ANONYMOUS, ApiKey, Caller, key_hash

OPEN_PATHS = frozenset({"/api/ping", "/api/health", "/", "/dashboard"})
OPEN_PREFIXES = ("/dashboard/static/",)     # the dashboard's files hold no data; the page asks for a key


def is_open(path: str) -> bool:
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


class KeyCache:
    """Key records by hash, for `ttl_s` (a revoked key stops working within it)."""

    def __init__(self, service: Service, ttl_s: float):
        self.service, self.ttl_s = service, ttl_s
        self._lock = threading.Lock()
        self._keys: dict[str, tuple[float, ApiKey | None]] = {}

    def lookup(self, key: str) -> ApiKey | None:
        digest = key_hash(key)
        now = time.monotonic()
        with self._lock:
            hit = self._keys.get(digest)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        record = self.service.key_record(digest)
        found = ApiKey.from_record(record) if record and record.get("revoked_at") is None else None
        with self._lock:
            if len(self._keys) > 10_000:        # presented garbage must not grow it without end
                self._keys.clear()
            self._keys[digest] = (now, found)
        return found


def presented_key() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    key = request.headers.get("X-API-Key", "").strip()
    return key or None


def install(app: Flask, service: Service) -> None:
    keys = KeyCache(service, service.config.KEY_CACHE_S)
    required = service.config.AUTH_REQUIRED

    @app.before_request
    def identify() -> None:
        key = presented_key()
        if key is None:
            if required and not is_open(request.path):
                raise _unauthorized("an API key is required: send Authorization: Bearer KEY (or X-API-Key)")
            g.caller = ANONYMOUS
            return
        found = keys.lookup(key)
        if found is None:
            # Without AUTH_REQUIRED a key that is not ours is no one's: the OpenAI client always
            # sends one ("ollama", say), and OLLAMA_API_KEY may be set for another server.
            if not required or is_open(request.path):
                g.caller = ANONYMOUS
                return
            raise _unauthorized("the API key is not valid (unknown or revoked)")
        g.caller = Caller(found)


def _unauthorized(message: str) -> ApiError:
    err = ApiError(401, message)
    err.headers["WWW-Authenticate"] = 'Bearer realm="model-manager"'
    return err


def caller() -> Caller:
    return g.get("caller", ANONYMOUS)


def visible(job_tenant: str | None) -> bool:
    return caller().sees(job_tenant)


def tenant_filter() -> str | None:
    """Whose jobs a listing shows: the caller's tenant, or everyone's for an admin."""
    who = caller()
    return None if who.admin else who.tenant
