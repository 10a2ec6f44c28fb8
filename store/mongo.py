"""The MongoDB job store (pymongo), for production and for sharing the ledger.

Same contract as the SQLite store: every transition is one conditional update
(`find_one_and_update` / `update_one` with the expected status in the filter), so API workers
and the scheduler in other processes or on other hosts never claim a job twice.

Times are stored as Unix seconds (floats), so that range queries work everywhere. Only
`expire_at`, for the TTL index that enforces JOB_RETENTION_S, is a BSON date. Fields whose keys
MongoDB may refuse (`format`, `tools`: JSON schemas start keys with `$`) are stored as JSON text.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.errors import DuplicateKeyError, OperationFailure

from config import Config
from jobs import FINISHED, WAITING, JobDoc
from store.base import CancelOutcome, JobStore, QueueCounts, QueueFull

_WAITING = [s.value for s in WAITING]
_FINISHED = [s.value for s in FINISHED]
_ACTIVE = _WAITING + ["running"]
_JSON_FIELDS = ("format", "tools")
_SUMMARY_EXCLUDE = {"prompt": 0, "messages": 0, "input": 0, "images": 0, "result": 0, "system": 0,
                    "format": 0, "tools": 0, "expire_at": 0}
COLLECTIONS = ("jobs", "job_metrics", "state", "leases", "model_footprints", "tasks", "experiment_results")


def _to_mongo(job: dict[str, Any]) -> dict[str, Any]:
    doc = {k: (json.dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in job.items()}
    if "job_id" in doc:
        doc["_id"] = doc["job_id"]
    return doc


def _from_mongo(doc: dict[str, Any] | None) -> JobDoc | None:
    if doc is None:
        return None
    doc = dict(doc)
    doc.pop("_id", None)
    doc.pop("expire_at", None)
    for key in _JSON_FIELDS:
        if isinstance(doc.get(key), str):
            doc[key] = json.loads(doc[key])
    return doc


class MongoStore(JobStore):
    def __init__(self, client: MongoClient, db_name: str, prefix: str = "", retention_s: float | None = None):
        self.client = client
        self.db = client[db_name]
        self.retention_s = retention_s
        names = {name: self.db[f"{prefix}{name}"] for name in COLLECTIONS}
        self.jobs = names["jobs"]
        self.metrics = names["job_metrics"]
        self.state = names["state"]
        self.leases = names["leases"]
        self.footprints_coll = names["model_footprints"]
        self.tasks = names["tasks"]
        self.results = names["experiment_results"]
        self._ensure_indexes()

    @classmethod
    def from_config(cls, config: Config) -> MongoStore:
        if not config.MONGODB_URI:
            raise ValueError("STORE=mongodb needs MONGODB_URI")
        client = MongoClient(config.MONGODB_URI, serverSelectionTimeoutMS=5000, tz_aware=True)
        return cls(client, config.MONGODB_DB, config.MONGODB_COLLECTION_PREFIX, config.JOB_RETENTION_S)

    def _ensure_indexes(self) -> None:
        # One index per query the service makes:
        self.jobs.create_index([("status", ASCENDING), ("rank", DESCENDING), ("submitted_at", ASCENDING)],
                               name="waiting_order")          # position, take_new, counts, queue-full check
        self.jobs.create_index([("model", ASCENDING), ("status", ASCENDING), ("submitted_at", DESCENDING)],
                               name="by_model")                # /api/jobs?model=&status=
        self.jobs.create_index([("submitted_at", DESCENDING)], name="newest")   # /api/jobs
        self.jobs.create_index([("status", ASCENDING), ("completed_at", ASCENDING)], name="finished")  # purge
        try:
            self.jobs.create_index("expire_at", expireAfterSeconds=0, name="retention_ttl")
        except OperationFailure:
            pass                                             # a server without TTL support: purge still runs
        self.metrics.create_index([("model", ASCENDING), ("finished_at", DESCENDING)], name="by_model")
        self.metrics.create_index([("finished_at", DESCENDING)], name="newest")
        self.metrics.create_index([("job_id", ASCENDING)], name="by_job")
        self.metrics.create_index([("tags.experiment", ASCENDING), ("tags.strategy", ASCENDING)], name="by_experiment")
        self.results.create_index([("experiment", ASCENDING)], name="by_experiment")
        self.tasks.create_index([("suite", ASCENDING)], name="by_suite")

    # --- jobs: submission and reading -----------------------------------------------------------
    def enqueue(self, job: JobDoc, max_waiting: int | None = None) -> int:
        if max_waiting is not None:
            waiting = self.jobs.count_documents({"status": {"$in": _WAITING}})
            if waiting >= max_waiting:
                raise QueueFull(waiting)
        rank, submitted = job["rank"], job["submitted_at"]
        ahead = self.jobs.count_documents({"status": {"$in": _WAITING}, "$or": [
            {"rank": {"$gt": rank}}, {"rank": rank, "submitted_at": {"$lte": submitted}}]})
        self.jobs.insert_one(_to_mongo(job))
        return ahead

    def get(self, job_id: str) -> JobDoc | None:
        return _from_mongo(self.jobs.find_one({"_id": job_id}))

    def list_jobs(self, status: str | None = None, model: str | None = None, limit: int = 100) -> list[JobDoc]:
        query: dict[str, Any] = {}
        if status:
            query["status"] = status
        if model:
            query["model"] = model
        cursor = self.jobs.find(query, _SUMMARY_EXCLUDE).sort("submitted_at", DESCENDING).limit(limit)
        return [_from_mongo(d) for d in cursor]

    def counts(self) -> QueueCounts:
        by_status = {d["_id"]: d["n"] for d in self.jobs.aggregate(
            [{"$group": {"_id": "$status", "n": {"$sum": 1}}}])}
        waiting = [{"$match": {"status": {"$in": _WAITING}}}]
        by_priority = {d["_id"]: d["n"] for d in self.jobs.aggregate(
            waiting + [{"$group": {"_id": "$priority", "n": {"$sum": 1}}}])}
        by_model = {d["_id"]: d["n"] for d in self.jobs.aggregate(
            waiting + [{"$group": {"_id": "$model", "n": {"$sum": 1}}}])}
        return QueueCounts(by_status, by_priority, by_model)

    def statuses(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        if not ids:
            return {}
        return {d["_id"]: d["status"] for d in self.jobs.find({"_id": {"$in": ids}}, {"status": 1})}

    # --- jobs: transitions ----------------------------------------------------------------------
    def take_new(self, limit: int = 1000) -> list[JobDoc]:
        fields = {"model": 1, "priority": 1, "rank": 1, "submitted_at": 1, "job_id": 1}
        found = list(self.jobs.find({"status": "pending"}, fields).sort("submitted_at", ASCENDING).limit(limit))
        if not found:
            return []
        self.jobs.update_many({"_id": {"$in": [d["_id"] for d in found]}, "status": "pending"},
                              {"$set": {"status": "queued"}})
        return [_from_mongo(d) for d in found]

    def release_taken(self) -> int:
        return self.jobs.update_many({"status": "queued"}, {"$set": {"status": "pending"}}).modified_count

    def claim(self, job_id: str, run_id: str, fields: dict[str, Any]) -> JobDoc | None:
        doc = self.jobs.find_one_and_update(
            {"_id": job_id, "status": "queued"},
            {"$set": {**_to_mongo(fields), "status": "running", "run_id": run_id}},
            return_document=ReturnDocument.AFTER)
        return _from_mongo(doc)

    def _expiry(self, fields: dict[str, Any]) -> dict[str, Any]:
        done = fields.get("completed_at")
        if self.retention_s is None or done is None:
            return {}
        return {"expire_at": datetime.fromtimestamp(done + self.retention_s, tz=timezone.utc)}

    def finish(self, job_id: str, run_id: str, status: str, fields: dict[str, Any],
               ledger: dict[str, Any] | None = None) -> bool:
        update = {**_to_mongo(fields), **self._expiry(fields), "status": status}
        done = self.jobs.update_one({"_id": job_id, "status": "running", "run_id": run_id},
                                    {"$set": update}).modified_count == 1
        if done and ledger is not None:
            self.record_metrics(ledger)
        return done

    def requeue(self, job_id: str, run_id: str, fields: dict[str, Any]) -> bool:
        return self.jobs.update_one({"_id": job_id, "status": "running", "run_id": run_id},
                                    {"$set": {**_to_mongo(fields), "status": "pending", "run_id": None}}
                                    ).modified_count == 1

    def fail_waiting(self, job_id: str, fields: dict[str, Any]) -> bool:
        return self.jobs.update_one({"_id": job_id, "status": {"$in": _WAITING}},
                                    {"$set": {**_to_mongo(fields), **self._expiry(fields), "status": "failed"}}
                                    ).modified_count == 1

    def cancel(self, job_id: str, fields: dict[str, Any]) -> CancelOutcome:
        before = self.jobs.find_one_and_update(
            {"_id": job_id, "status": {"$in": _ACTIVE}},
            {"$set": {**_to_mongo(fields), **self._expiry(fields), "status": "cancelled"}},
            projection={"status": 1}, return_document=ReturnDocument.BEFORE)
        if before is not None:
            return CancelOutcome(found=True, previous=before["status"], cancelled=True)
        current = self.jobs.find_one({"_id": job_id}, {"status": 1})
        if current is None:
            return CancelOutcome(found=False)
        return CancelOutcome(found=True, previous=current["status"])

    def recover_running(self, requeue: bool, fields: dict[str, Any]) -> list[str]:
        ids = [d["_id"] for d in self.jobs.find({"status": "running"}, {"_id": 1})]
        if not ids:
            return []
        if requeue:
            update = {**_to_mongo(fields), "status": "pending", "run_id": None}
        else:
            update = {**_to_mongo(fields), **self._expiry(fields), "status": "failed"}
        self.jobs.update_many({"_id": {"$in": ids}, "status": "running"}, {"$set": update})
        return ids

    def purge_finished(self, before: float) -> int:
        return self.jobs.delete_many({"status": {"$in": _FINISHED}, "completed_at": {"$lt": before}}).deleted_count

    # --- ledger, tasks and experiment results ---------------------------------------------------
    def record_metrics(self, doc: dict[str, Any]) -> None:
        try:
            self.metrics.insert_one({**doc, "_id": f"{doc['job_id']}:{doc.get('run_id')}"})
        except DuplicateKeyError:
            pass

    def list_metrics(self, model: str | None = None, limit: int = 100,
                     job_id: str | None = None) -> list[dict[str, Any]]:
        query = {"job_id": job_id} if job_id else {"model": model} if model else {}
        return [{k: v for k, v in d.items() if k != "_id"}
                for d in self.metrics.find(query).sort("finished_at", DESCENDING).limit(limit)]

    def put_task(self, task: dict[str, Any]) -> None:
        self.tasks.replace_one({"_id": task["task_id"]}, {**task, "_id": task["task_id"]}, upsert=True)

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        doc = self.tasks.find_one({"_id": task_id})
        return {k: v for k, v in doc.items() if k != "_id"} if doc else None

    def list_tasks(self, suite: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = {"suite": suite} if suite else {}
        return [{k: v for k, v in d.items() if k != "_id"}
                for d in self.tasks.find(query).sort("_id", ASCENDING).limit(limit)]

    def record_result(self, result: dict[str, Any]) -> None:
        self.results.insert_one(dict(result))        # _id: an ObjectId, increasing in insertion order

    def list_results(self, experiment: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        query = {"experiment": experiment} if experiment else {}
        return [{k: v for k, v in d.items() if k != "_id"}
                for d in self.results.find(query).sort("_id", ASCENDING).limit(limit)]

    # --- shared state ---------------------------------------------------------------------------
    def put_state(self, key: str, value: dict[str, Any], now: float) -> None:
        # As JSON text: model names and counters may hold characters MongoDB refuses in keys.
        self.state.update_one({"_id": key}, {"$set": {"value": json.dumps(value), "updated_at": now}}, upsert=True)

    def get_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        doc = self.state.find_one({"_id": key})
        return (json.loads(doc["value"]), doc["updated_at"]) if doc else None

    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        try:
            self.leases.insert_one({"_id": name, "owner": owner, "expires_at": now + ttl_s})
            return True
        except DuplicateKeyError:        # it exists: take it only if ours or expired
            return self.leases.update_one(
                {"_id": name, "$or": [{"owner": owner}, {"expires_at": {"$lt": now}}]},
                {"$set": {"owner": owner, "expires_at": now + ttl_s}}).matched_count == 1

    def release_lease(self, name: str, owner: str) -> None:
        self.leases.delete_one({"_id": name, "owner": owner})

    def save_footprint(self, model: str, size_bytes: int, now: float) -> None:
        self.footprints_coll.update_one({"_id": model}, {"$set": {"size_bytes": int(size_bytes), "updated_at": now}},
                                        upsert=True)

    def footprints(self) -> dict[str, int]:
        return {d["_id"]: d["size_bytes"] for d in self.footprints_coll.find({})}

    def close(self) -> None:
        self.client.close()
