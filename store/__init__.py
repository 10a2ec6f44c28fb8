"""Job stores: SQLite (embedded default, or in memory) and MongoDB, behind one interface."""
from __future__ import annotations

from typing import TYPE_CHECKING

from store.base import (
    SCHEDULER_LEASE,
    CancelOutcome,
    Fenced,
    Idempotency,
    IdempotencyConflict,
    IdempotentReplay,
    JobStore,
    QueueCounts,
    QueueFull,
    StoreUnavailable,
    TenantQueueFull,
)

if TYPE_CHECKING:        # types only: the package imports no settings (its pure parts, storable.py, stay pure)
    from config import Config

__all__ = ["SCHEDULER_LEASE", "CancelOutcome", "Fenced", "Idempotency", "IdempotencyConflict", "IdempotentReplay",
           "JobStore", "QueueCounts", "QueueFull", "StoreUnavailable", "TenantQueueFull", "open_store"]


def open_store(config: Config) -> JobStore:
    kind = config.store_kind
    if kind == "memory":
        from store.sqlite import SqliteStore
        return SqliteStore.in_memory()
    if kind == "mongodb":
        from store.mongo import MongoStore
        return MongoStore.from_config(config)
    from store.sqlite import SqliteStore
    return SqliteStore(config.DATA_DIR / "model_manager.db")
