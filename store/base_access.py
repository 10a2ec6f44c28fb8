"""The store's part for tenancy: API keys (kept hashed), per-key request rates, and counters that
every process adds to (cache hits, say), so that figures are the same whichever worker answers."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any


class AccessStore(ABC):
    @abstractmethod
    def put_key(self, record: dict[str, Any]) -> None:
        """Store a new API key record (`key_id`, `key_hash`, `tenant`, limits; never the key)."""

    @abstractmethod
    def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        """The record of the key with this hash, revoked or not."""

    @abstractmethod
    def list_keys(self) -> list[dict[str, Any]]:
        """Every key record, oldest first."""

    @abstractmethod
    def revoke_key(self, key_id: str, now: float) -> bool:
        """Mark a key revoked; False when there is no such key or it was revoked already."""

    @abstractmethod
    def take_rate(self, key_id: str, now: float, per_min: float) -> float:
        """Count one request against `key_id`'s rate (tenancy.rate_take, atomically across
        processes): 0 when allowed, else the seconds to wait (and nothing is counted)."""

    @abstractmethod
    def bump(self, name: str, by: int = 1) -> None:
        """Add to a shared counter."""

    @abstractmethod
    def read_counters(self, prefix: str = "") -> dict[str, int]:
        """The shared counters whose names start with `prefix`."""
