"""Admission to the MongoDB store's queue: places (one token per place, so that the queue limit
holds atomically across processes and hosts), a tenant's quota and fair share (tenancy.admit),
and Idempotency-Keys. A part of `MongoStore` (store/mongo.py)."""
from __future__ import annotations

import threading

from pymongo.collection import Collection
from pymongo.errors import AutoReconnect, DuplicateKeyError, PyMongoError

from jobs.model import WAITING
from store.base import Idempotency, IdempotencyConflict, IdempotentReplay, queue_full
from tenancy.keys import Refusal, admit

_WAITING = list(WAITING)
FREE = ""                        # a queue token no job holds
MAIN, PAST_LIMIT = "main", "past_limit"     # the QUEUE_MAX_SIZE places; as many for fair shares past it


class MongoAdmission:
    jobs: Collection
    tokens: Collection
    idempotency: Collection
    _tokens_for: int | None
    _tokens_lock: threading.Lock

    # --- the queue limit: one token per place -----------------------------------------------------
    def _ensure_tokens(self, n: int) -> None:
        """Exactly `n` places, and `n` more for tenants below their fair share once those are
        taken (tenancy.admit): made once (by whichever process gets there first; concurrent
        makers may collide, so what is still missing afterwards is made one by one)."""
        if self._tokens_for == n:
            return
        with self._tokens_lock:
            if self._tokens_for == n:
                return
            missing = [i for i in range(2 * n) if i not in {d["_id"] for d in self.tokens.find({}, {"_id": 1})}]
            if missing:
                try:
                    self.tokens.insert_many([{"_id": i, "holder": FREE, "at": 0.0} for i in missing], ordered=False)
                except PyMongoError:
                    have = {d["_id"] for d in self.tokens.find({}, {"_id": 1})}
                    for i in missing:
                        if i not in have:
                            self.tokens.update_one({"_id": i}, {"$setOnInsert": {"holder": FREE, "at": 0.0}},
                                                   upsert=True)
            # Which pool a place is in, as a field: some compatible servers compare `_id` ranges as text.
            self.tokens.update_many({"_id": {"$in": list(range(n))}}, {"$set": {"pool": MAIN}})
            self.tokens.update_many({"_id": {"$in": list(range(n, 2 * n))}}, {"$set": {"pool": PAST_LIMIT}})
            extra = [d["_id"] for d in self.tokens.find({}, {"_id": 1}) if d["_id"] >= 2 * n]
            if extra:                          # QUEUE_MAX_SIZE was lowered: free places beyond it go
                self.tokens.delete_many({"_id": {"$in": extra}, "holder": FREE})
            self._tokens_for = n

    def _take_token(self, job_id: str, tenant: str, now: float, overflow: bool = False) -> bool:
        """A free place (or one of the places past the limit), if there is one, marked with the
        job's tenant. A take that lost a race for the place it picked is tried again while free
        places remain (MongoDB itself retries; some compatible servers don't)."""
        free = {"holder": FREE, "pool": PAST_LIMIT if overflow else MAIN}
        for _ in range(20):
            if self.tokens.find_one_and_update(free, {"$set": {"holder": job_id, "tenant": tenant, "at": now}}):
                return True
            if not self.tokens.count_documents(free, limit=1):
                return False
        return False

    def _admit(self, job_id: str, tenant: str, now: float, max_waiting: int | None, tenant_max: int | None) -> None:
        """A place in the queue for a new job of `tenant`, or QueueFull (tenancy.admit). The
        queue limit, and twice it with the places past it, hold atomically (tokens); who holds
        places is read from the tokens, which are taken before the job is stored, so submissions
        under way count too. A tenant's own limit is counted from its stored jobs, so concurrent
        submissions of one tenant may pass it by as many as are under way at once."""
        if tenant_max is not None:
            mine = self.jobs.count_documents({"tenant": tenant, "status": {"$in": _WAITING}})
            if mine >= tenant_max:
                raise queue_full(Refusal.TENANT_FULL, mine, tenant, mine)
        if max_waiting is None:
            return
        self._ensure_tokens(max_waiting)
        if self._take_token(job_id, tenant, now):
            return
        held = [d.get("tenant") or "" for d in self.tokens.find({"holder": {"$ne": FREE}}, {"tenant": 1})]
        mine = held.count(tenant)
        refusal = admit(len(held), mine, len(set(held) - {tenant}), max_waiting, None)
        if refusal is None and self._take_token(job_id, tenant, now, overflow=True):
            return
        raise queue_full(refusal or Refusal.QUEUE_FULL, len(held), tenant, mine)

    def _give_back_token(self, job_id: str) -> None:
        self.tokens.update_one({"holder": job_id}, {"$set": {"holder": FREE}})

    def _claim_key(self, key: Idempotency, job_id: str, now: float) -> None:
        """Make `key` point at `job_id`, unless a live earlier use of it stands (replay or conflict)."""
        doc = {"_id": key.key, "job_id": job_id, "fingerprint": key.fingerprint, "expires_at": key.expires_at}
        for _ in range(3):
            try:
                self.idempotency.insert_one(doc)
                return
            except DuplicateKeyError:
                earlier = self.idempotency.find_one({"_id": key.key})
            if earlier is None:
                continue
            alive = earlier["expires_at"] > now and self.jobs.count_documents({"_id": earlier["job_id"]}, limit=1)
            if alive:
                if earlier["fingerprint"] != key.fingerprint:
                    raise IdempotencyConflict(earlier["job_id"])
                raise IdempotentReplay(earlier["job_id"])
            # Expired, or left by a submission that died before storing its job: take it over.
            self.idempotency.delete_one({"_id": key.key, "job_id": earlier["job_id"]})
        raise AutoReconnect("the Idempotency-Key kept changing hands; try again")

    def _drop_key(self, key: Idempotency | None, job_id: str) -> None:
        if key is not None:
            self.idempotency.delete_one({"_id": key.key, "job_id": job_id})

    def purge_idempotency(self, now: float) -> int:
        return self.idempotency.delete_many({"expires_at": {"$lte": now}}).deleted_count

