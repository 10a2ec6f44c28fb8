"""Tenants, API keys and quotas: what a key is, who a caller is, and the pure rules that admit a
submission (a tenant's own limits, its fair share of the queue, its request rate).

A key is `mm-<key_id>-<secret>`: `key_id` names it in listings and revocation; the store keeps
only the SHA-256 of the whole key (the secret is 32 random bytes, so a fast hash is enough:
there is nothing to guess), which is what a presented key is looked up by.
"""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from jobs.model import Priority

KEY_PREFIX = "mm-"


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    tenant: str
    max_priority: Priority = Priority.HIGH
    max_waiting: int | None = None          # the tenant's waiting jobs, at most
    rate_per_min: float | None = None       # submissions per minute, at most (bursts up to a minute's worth)
    admin: bool = False
    created_at: float = 0.0
    revoked_at: float | None = None
    weight: float = 1.0                     # the tenant's fair share against others' (scheduling/fair_share.py)

    def record(self, key_hash: str) -> dict[str, Any]:
        """The stored form (never the key itself)."""
        return {"key_id": self.key_id, "key_hash": key_hash, "tenant": self.tenant,
                "max_priority": self.max_priority.value, "max_waiting": self.max_waiting,
                "rate_per_min": self.rate_per_min, "admin": bool(self.admin), "created_at": self.created_at,
                "revoked_at": self.revoked_at, "weight": self.weight}

    @classmethod
    def from_record(cls, doc: dict[str, Any]) -> ApiKey:
        return cls(doc["key_id"], doc["tenant"], Priority(doc.get("max_priority") or Priority.HIGH.value),
                   doc.get("max_waiting"), doc.get("rate_per_min"), bool(doc.get("admin")),
                   float(doc.get("created_at") or 0.0), doc.get("revoked_at"), float(doc.get("weight") or 1.0))

    def public(self) -> dict[str, Any]:
        return {k: v for k, v in self.record("").items() if k != "key_hash"}


def new_key() -> tuple[str, str]:
    """(key_id, key): a fresh key, shown once."""
    key_id = secrets.token_hex(4)
    return key_id, f"{KEY_PREFIX}{key_id}-{secrets.token_urlsafe(32)}"


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key_or_id: str) -> str:
    """The key id named by a whole key or by the id itself."""
    if key_or_id.startswith(KEY_PREFIX):
        return key_or_id[len(KEY_PREFIX):].split("-", 1)[0]
    return key_or_id


@dataclass(frozen=True)
class Caller:
    """Who sent a request: a key's tenant, or nobody in particular (no key, AUTH_REQUIRED off)."""
    key: ApiKey | None = None

    @property
    def tenant(self) -> str:
        return self.key.tenant if self.key else ""

    @property
    def admin(self) -> bool:
        return self.key is None or self.key.admin

    def sees(self, job_tenant: str | None) -> bool:
        """Whether this caller may see, poll or cancel a job of `job_tenant`."""
        return self.admin or (job_tenant or "") == self.tenant


ANONYMOUS = Caller()


def priority_allowed(caller: Caller, priority: Priority) -> bool:
    return caller.key is None or priority.rank <= caller.key.max_priority.rank


class Refusal(StrEnum):
    TENANT_FULL = "tenant_full"      # the key's own max_waiting
    QUEUE_FULL = "queue_full"        # QUEUE_MAX_SIZE, and the tenant has its fair share already


def admit(total_waiting: int, tenant_waiting: int, other_active_tenants: int, queue_max: int | None,
          tenant_max: int | None) -> Refusal | None:
    """Whether one more job of a tenant may wait (None) or why not.

    Up to `queue_max` jobs wait, whoever sent them. Past it, a tenant still below its fair share
    (`queue_max` divided among the tenants with jobs waiting, itself included) is let in, so one
    tenant that filled the queue cannot lock the others out; the queue then holds at most twice
    `queue_max`, and the tenant over its share gets nothing more until it is back under it."""
    if tenant_max is not None and tenant_waiting >= tenant_max:
        return Refusal.TENANT_FULL
    if queue_max is None or total_waiting < queue_max:
        return None
    fair_share = queue_max / (other_active_tenants + 1)
    if tenant_waiting < fair_share and total_waiting < 2 * queue_max:
        return None
    return Refusal.QUEUE_FULL


def rate_take(tat: float | None, now: float, per_min: float, burst: float | None = None
              ) -> tuple[bool, float, float]:
    """The generic cell rate algorithm: (allowed, new theoretical arrival time, seconds to wait).

    One request costs 60 / per_min seconds of the key's allowance; up to `burst` requests (a
    minute's worth by default) may come at once after a quiet spell."""
    interval = 60.0 / per_min
    burst = per_min if burst is None else burst
    tat = max(tat or now, now)
    allowed_at = tat - interval * burst + interval
    if now < allowed_at:
        return False, tat, allowed_at - now
    return True, tat + interval, 0.0
