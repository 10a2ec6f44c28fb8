"""The MongoDB store's records beside the jobs: the ledger, tasks and experiment results, the
scheduler's published state, leases with their epochs, and measured model footprints. A part of
`MongoStore` (store/mongo.py), working on its collections."""
from __future__ import annotations

import json
from typing import Any

import pymongo
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from metering.ledger import USAGE_FIELDS
from store import storable


def run_key(doc: dict[str, Any]) -> str:
    return f"{doc['job_id']}:{doc.get('run_id')}"


def _plain(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_id"}


class MongoRecords:
    metrics: Collection
    tasks: Collection
    results: Collection
    state: Collection
    leases: Collection
    epochs: Collection
    footprints_coll: Collection

    # --- the ledger ---------------------------------------------------------------------------
    def record_metrics(self, doc: dict[str, Any]) -> None:
        """Once per run: an upsert keyed by `job_id:run_id`, so writing it again changes nothing."""
        key = run_key(doc)
        self.metrics.update_one({"_id": key}, {"$setOnInsert": {**doc, "run_key": key}}, upsert=True)

    def list_metrics(self, model: str | None = None, limit: int = 100, job_id: str | None = None,
                     before: tuple[float, str] | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"job_id": job_id} if job_id else {"model": model} if model else {}
        if tenant is not None:
            query["tenant"] = tenant if tenant else {"$in": ["", None]}
        if before is not None:
            query["$or"] = [{"finished_at": {"$lt": before[0]}},
                            {"finished_at": before[0], "_id": {"$lt": before[1]}}]
        cursor = self.metrics.find(query).sort([("finished_at", DESCENDING), ("_id", DESCENDING)]).limit(limit)
        return [_plain(d) for d in cursor]

    def usage_by_tenant(self, since: float) -> dict[str, dict[str, float]]:
        group: dict[str, Any] = {"_id": "$tenant", "jobs": {"$sum": 1}, **{f: {"$sum": f"${f}"} for f in USAGE_FIELDS}}
        usage: dict[str, dict[str, float]] = {}
        for d in self.metrics.aggregate([{"$match": {"finished_at": {"$gte": since}}}, {"$group": group}]):
            mine = usage.setdefault(d["_id"] or "", dict.fromkeys(("jobs", *USAGE_FIELDS), 0))   # null and "" are one
            for key in mine:
                mine[key] += d.get(key) or 0
        return usage

    def purge_metrics(self, before: float) -> int:
        return self.metrics.delete_many({"finished_at": {"$lt": before}}).deleted_count

    # --- tasks and experiment results ---------------------------------------------------------
    def put_task(self, task: dict[str, Any]) -> None:
        self.tasks.replace_one({"_id": task["task_id"]}, {**task, "_id": task["task_id"]}, upsert=True)

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        doc = self.tasks.find_one({"_id": task_id})
        return _plain(doc) if doc else None

    def list_tasks(self, suite: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = {"suite": suite} if suite else {}
        return [_plain(d) for d in self.tasks.find(query).sort("_id", ASCENDING).limit(limit)]

    def record_result(self, result: dict[str, Any]) -> None:
        self.results.insert_one(dict(result))        # _id: an ObjectId, increasing in insertion order

    def list_results(self, experiment: str | None = None, limit: int = 1000,
                     tenant: str | None = None, strategy: str | None = None) -> list[dict[str, Any]]:
        query: dict[str, Any] = {"experiment": experiment} if experiment else {}
        if strategy is not None:
            query["strategy"] = strategy
        if tenant is not None:
            query["tenant"] = tenant
        return [_plain(d) for d in self.results.find(query).sort("_id", ASCENDING).limit(limit)]

    # --- shared state -------------------------------------------------------------------------
    def put_state(self, key: str, value: dict[str, Any], now: float) -> None:
        # As JSON text: model names and counters may hold characters MongoDB refuses in keys.
        self.state.update_one({"_id": key}, {"$set": {"value": storable.dumps(value), "updated_at": now}}, upsert=True)

    def get_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        doc = self.state.find_one({"_id": key})
        return (json.loads(doc["value"]), doc["updated_at"]) if doc else None

    # --- leases and epochs --------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float, timeout_s: float | None = None) -> int | None:
        """Renew a live lease (same epoch), take one that expired or was released (epoch + 1),
        or create it (epoch 1); within `timeout_s` when given."""
        if timeout_s is not None:
            with pymongo.timeout(timeout_s):
                return self.acquire_lease(name, owner, ttl_s, now)
        held = self.leases.find_one_and_update(
            {"_id": name, "owner": owner, "expires_at": {"$gte": now}}, {"$set": {"expires_at": now + ttl_s}},
            return_document=ReturnDocument.AFTER)
        if held is None:
            held = self.leases.find_one_and_update(
                {"_id": name, "expires_at": {"$lt": now}}, {"$set": {"owner": owner, "expires_at": now + ttl_s},
                                                            "$inc": {"epoch": 1}},
                return_document=ReturnDocument.AFTER)
        if held is None:
            try:
                self.leases.insert_one({"_id": name, "owner": owner, "expires_at": now + ttl_s, "epoch": 1})
                return 1
            except DuplicateKeyError:
                return None
        return int(held["epoch"])

    def release_lease(self, name: str, owner: str) -> None:
        self.leases.update_one({"_id": name, "owner": owner}, {"$set": {"expires_at": 0.0}})

    def lease_epoch(self, name: str) -> int | None:
        doc = self.leases.find_one({"_id": name}, {"epoch": 1})
        return int(doc["epoch"]) if doc else None

    def retire_epoch(self, name: str, epoch: int, now: float) -> None:
        self.epochs.update_one({"_id": f"{name}:{epoch}"}, {"$set": {"name": name, "epoch": epoch, "retired_at": now}},
                               upsert=True)

    def retired_epochs(self, name: str) -> set[int]:
        return {int(d["epoch"]) for d in self.epochs.find({"name": name}, {"epoch": 1})}

    # --- measured footprints ------------------------------------------------------------------
    def save_footprint(self, model: str, size_bytes: int, now: float) -> None:
        self.footprints_coll.update_one({"_id": model}, {"$set": {"size_bytes": int(size_bytes), "updated_at": now}},
                                        upsert=True)

    def footprints(self) -> dict[str, int]:
        return {d["_id"]: d["size_bytes"] for d in self.footprints_coll.find({})}
