"""Store calls retried while the store does not answer, by tenacity.

`RetryingStore(store, patience_s)` stands in for `store`: each method call that fails with an
error the backend calls transient (SQLite locked or busy, MongoDB connection lost or timed out)
is tried again with exponential backoff and jitter, for up to `patience_s` seconds, or until
`should_stop()` says the caller no longer wants it. Every retry is logged; giving up is logged
and raised as `StoreUnavailable`, never swallowed. Retrying is safe because every transition
is idempotent (store/base.py). Anything else (a refused transition, a bug) passes at once.
"""
from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from typing import Any, TypeAlias

from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_delay, wait_exponential_jitter
from tenacity.stop import stop_base

from store.base import JobStore, StoreUnavailable
from telemetry.logs import get_logger

log = get_logger("STORE")


class RetryingStore:
    def __init__(self, store: JobStore, patience_s: float, should_stop: Callable[[], bool] = lambda: False):
        self.store = store
        self.patience_s = patience_s
        self.should_stop = should_stop

    def with_patience(self, patience_s: float, should_stop: Callable[[], bool] | None = None) -> RetryingStore:
        """The same store with another patience (an API call gives up sooner than the scheduler)."""
        return RetryingStore(self.store, patience_s, should_stop or self.should_stop)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.store, name)
        if name.startswith("_") or not inspect.ismethod(attr):
            return attr
        return lambda *args, **kwargs: self.call(name, attr, *args, **kwargs)

    def call(self, name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        store = self.store
        started = time.monotonic()
        try:                     # the common case, without building a retry loop for it
            return fn(*args, **kwargs)
        except Exception as exc:
            if not store.is_transient(exc):
                raise
            left = self.patience_s - (time.monotonic() - started)
            if left <= 0 or self.should_stop():
                log.error("store call %s gave up after %.1f s: %s", name, self.patience_s, exc)
                raise StoreUnavailable(f"the job store does not answer ({type(exc).__name__}: {exc})") from exc
            log.debug("store call %s failed (%s); retrying", name, exc)
        retrying = Retrying(
            retry=retry_if_exception(store.is_transient),
            stop=stop_after_delay(left) | _StopWhen(self.should_stop),
            wait=wait_exponential_jitter(multiplier=0.05, max=2.0, jitter=0.05),
            before_sleep=_log_retry(name), reraise=True)
        try:
            return retrying(fn, *args, **kwargs)
        except Exception as exc:
            if not store.is_transient(exc):
                raise
            log.error("store call %s gave up after %.0f s: %s", name, self.patience_s, exc)
            raise StoreUnavailable(f"the job store does not answer ({type(exc).__name__}: {exc})") from exc


#: A store as its users see it: a backend, or one that retries it (which answers every method of
#: JobStore, through `__getattr__`).
StoreLike: TypeAlias = JobStore | RetryingStore


class _StopWhen(stop_base):
    """Stop retrying once `should_stop()` says so."""

    def __init__(self, should_stop: Callable[[], bool]):
        self.should_stop = should_stop

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.should_stop()


def _log_retry(name: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        level = logging.WARNING if state.attempt_number in (1, 5) or state.attempt_number % 20 == 0 else logging.DEBUG
        log.log(level, "store call %s failed (%s); retrying (attempt %d, %.1f s so far)", name,
                state.outcome.exception() if state.outcome else "?", state.attempt_number, state.seconds_since_start)
    return before_sleep
