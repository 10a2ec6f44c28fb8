"""The MongoDB store's tenancy records: API keys (hashed), per-key rates, shared counters. A part
of `MongoStore` (store/mongo.py)."""
from __future__ import annotations

from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.errors import AutoReconnect, DuplicateKeyError

from tenancy.keys import rate_take


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_id"}


class MongoAccess:
    keys: Collection
    rates: Collection
    counters: Collection

    def _access_indexes(self) -> None:
        self.keys.create_index([("key_hash", ASCENDING)], name="by_hash", unique=True)

    def put_key(self, record: dict[str, Any]) -> None:
        self.keys.insert_one({**record, "_id": record["key_id"]})

    def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        doc = self.keys.find_one({"key_hash": key_hash})
        return _plain(doc) if doc else None

    def list_keys(self) -> list[dict[str, Any]]:
        return [_plain(d) for d in self.keys.find({}).sort([("created_at", ASCENDING), ("_id", ASCENDING)])]

    def revoke_key(self, key_id: str, now: float) -> bool:
        doc = self.keys.find_one({"_id": key_id})
        if doc is None or doc.get("revoked_at") is not None:
            return False
        return self.keys.update_one({"_id": key_id, "revoked_at": doc.get("revoked_at")},
                                    {"$set": {"revoked_at": now}}).modified_count == 1

    def take_rate(self, key_id: str, now: float, per_min: float) -> float:
        """Compare-and-set on the key's theoretical arrival time, so that workers on several
        hosts count against one allowance."""
        for _ in range(20):
            doc = self.rates.find_one({"_id": key_id})
            tat = doc["tat"] if doc else None
            allowed, new_tat, wait = rate_take(tat, now, per_min)
            if not allowed:
                return wait
            if doc is None:
                try:
                    self.rates.insert_one({"_id": key_id, "tat": new_tat})
                    return 0.0
                except DuplicateKeyError:
                    continue
            if self.rates.update_one({"_id": key_id, "tat": tat}, {"$set": {"tat": new_tat}}).modified_count:
                return 0.0
        raise AutoReconnect(f"the rate of key {key_id} kept changing under this request; try again")

    def bump(self, name: str, by: int = 1) -> None:
        self.counters.update_one({"_id": name}, {"$inc": {"n": by}}, upsert=True)

    def read_counters(self, prefix: str = "") -> dict[str, int]:
        return {d["_id"]: int(d["n"]) for d in self.counters.find({}) if str(d["_id"]).startswith(prefix)}
