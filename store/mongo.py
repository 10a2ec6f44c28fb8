"""The MongoDB job store (pymongo), for production and for sharing the ledger.

Same contract as the SQLite store: every transition is one conditional update of one document
(`find_one_and_update` / `update_one` with the expected status and run in the filter), so API
workers and the scheduler in other processes or on other hosts never claim a job twice, and a
stale run cannot overwrite a job it no longer owns. Where SQLite makes two writes one
transaction, here each is made safe on its own:

* the queue limit: one token per place in the queue (`queue_tokens`); a submission takes a free
  one atomically before its job is stored, and gives it back when the job leaves the queue, so
  concurrent submissions never overshoot QUEUE_MAX_SIZE;
* a finished job's ledger entry: the job is finished with the entry on it (`ledger_pending`, one
  atomic update), the entry is upserted into `job_metrics` keyed by its run, then removed from the
  job; `repair()` completes any that a crash interrupted, so no finished job lacks its entry;
* a claim checks the lease's epoch just before claiming (fencing; MongoDB cannot check another
  collection in the same write without transactions).

Times are stored as Unix seconds (floats), so that range queries work everywhere. Only
`expire_at`, for the TTL index that enforces JOB_RETENTION_S, is a BSON date. Fields whose keys
MongoDB may refuse (`format`, `tools`: JSON schemas start keys with `$`) are stored as JSON text.
Free queue tokens hold an empty string rather than null (a peer used in tests, nx-27017, cannot
count nulls).
"""
from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, cast, overload

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.errors import AutoReconnect, ConnectionFailure, OperationFailure, PyMongoError

from config import Config
from jobs.model import FINISHED, WAITING, JobDoc, JobStatus
from store import storable
from store.base import SCHEDULER_LEASE, CancelOutcome, Fenced, Idempotency, JobStore, QueueCounts, QueueFull
from store.mongo_access import MongoAccess
from store.mongo_admission import FREE, MongoAdmission
from store.mongo_answers import MongoAnswers
from store.mongo_records import MongoRecords, run_key

_WAITING = list(WAITING)
_FINISHED = list(FINISHED)
PENDING, QUEUED, RUNNING = JobStatus.PENDING.value, JobStatus.QUEUED.value, JobStatus.RUNNING.value
FAILED, CANCELLED = JobStatus.FAILED.value, JobStatus.CANCELLED.value
_ACTIVE = _WAITING + [RUNNING]
_JSON_FIELDS = ("format", "tools")
_SUMMARY_EXCLUDE = {"prompt": 0, "messages": 0, "input": 0, "images": 0, "result": 0, "system": 0,
                    "format": 0, "tools": 0, "expire_at": 0, "ledger_pending": 0, "held_epoch": 0}
COLLECTIONS = ("jobs", "job_metrics", "state", "leases", "epochs", "model_footprints", "tasks",
               "experiment_results", "queue_tokens", "idempotency", "api_keys", "rate_limits", "counters",
               "result_cache", "answer_pieces")
TOKEN_GRACE_S = 60.0             # a token older than this whose job is not waiting is freed by repair()


def _to_mongo(job: Mapping[str, Any]) -> dict[str, Any]:
    doc = {k: (storable.dumps(v) if k in _JSON_FIELDS and v is not None else v) for k, v in job.items()}
    if "job_id" in doc:
        doc["_id"] = doc["job_id"]
    return doc


@overload
def _from_mongo(doc: dict[str, Any]) -> JobDoc: ...
@overload
def _from_mongo(doc: dict[str, Any] | None) -> JobDoc | None: ...
def _from_mongo(doc: dict[str, Any] | None) -> JobDoc | None:
    if doc is None:
        return None
    doc = dict(doc)
    for key in ("_id", "expire_at", "ledger_pending", "held_epoch"):
        doc.pop(key, None)
    for key in _JSON_FIELDS:
        if isinstance(doc.get(key), str):
            doc[key] = json.loads(doc[key])
    return cast(JobDoc, doc)      # the fields a job document has (JobDoc)


class MongoStore(MongoAdmission, MongoRecords, MongoAccess, MongoAnswers, JobStore):
    transient_errors = (AutoReconnect, ConnectionFailure)

    def __init__(self, client: MongoClient, db_name: str, prefix: str = "", retention_s: float | None = None,
                 queue_limit: int | None = None):
        self.client = client
        self.queue_limit = queue_limit       # places in the queue (QUEUE_MAX_SIZE), for re-queued jobs
        self.db = client[db_name]
        self.retention_s = retention_s
        names = {name: self.db[f"{prefix}{name}"] for name in COLLECTIONS}
        self.jobs = names["jobs"]
        self.metrics = names["job_metrics"]
        self.state = names["state"]
        self.leases = names["leases"]
        self.epochs = names["epochs"]
        self.footprints_coll = names["model_footprints"]
        self.tasks = names["tasks"]
        self.results = names["experiment_results"]
        self.tokens = names["queue_tokens"]
        self.idempotency = names["idempotency"]
        self.keys, self.rates, self.counters = names["api_keys"], names["rate_limits"], names["counters"]
        self.cache, self.pieces = names["result_cache"], names["answer_pieces"]
        self._tokens_for: int | None = None
        self._tokens_lock = threading.Lock()
        self._ensure_indexes()

    @classmethod
    def from_config(cls, config: Config) -> MongoStore:
        if not config.MONGODB_URI:
            raise ValueError("STORE=mongodb needs MONGODB_URI")
        client: MongoClient[dict[str, Any]] = MongoClient(config.MONGODB_URI, serverSelectionTimeoutMS=5000, tz_aware=True)
        return cls(client, config.MONGODB_DB, config.MONGODB_COLLECTION_PREFIX, config.JOB_RETENTION_S,
                   config.QUEUE_MAX_SIZE)

    def _ensure_indexes(self) -> None:
        # One index per query the service makes:
        self.jobs.create_index([("status", ASCENDING), ("rank", DESCENDING), ("submitted_at", ASCENDING)],
                               name="waiting_order")          # position, take_new, counts, running runs
        self.jobs.create_index([("model", ASCENDING), ("status", ASCENDING), ("submitted_at", DESCENDING)],
                               name="by_model")                # /api/jobs?model=&status=
        self.jobs.create_index([("submitted_at", DESCENDING)], name="newest")   # /api/jobs pages
        self.jobs.create_index([("tenant", ASCENDING), ("status", ASCENDING)], name="by_tenant")  # quotas, counts
        self.jobs.create_index([("tenant", ASCENDING), ("submitted_at", DESCENDING)], name="tenant_newest")
        self.metrics.create_index([("tenant", ASCENDING), ("finished_at", DESCENDING)], name="tenant_newest")
        self.jobs.create_index([("status", ASCENDING), ("completed_at", ASCENDING)], name="finished")  # purge
        self.jobs.create_index([("ledger_pending.job_id", ASCENDING)], name="ledger_pending", sparse=True)
        try:
            self.jobs.create_index("expire_at", expireAfterSeconds=0, name="retention_ttl")
        except OperationFailure:
            pass                                             # a server without TTL support: purge still runs
        self.metrics.create_index([("model", ASCENDING), ("finished_at", DESCENDING)], name="by_model")
        self.metrics.create_index([("finished_at", DESCENDING)], name="newest")
        self.metrics.create_index([("job_id", ASCENDING)], name="by_job")
        self.metrics.create_index([("tags.experiment", ASCENDING), ("tags.strategy", ASCENDING)], name="by_experiment")
        self.tokens.create_index([("holder", ASCENDING)], name="by_holder")
        self.idempotency.create_index([("expires_at", ASCENDING)], name="expiry")
        self.epochs.create_index([("name", ASCENDING)], name="by_lease")
        self.results.create_index([("experiment", ASCENDING)], name="by_experiment")
        self.tasks.create_index([("suite", ASCENDING)], name="by_suite")
        self._access_indexes()
        self._answer_indexes()

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, self.transient_errors) or (
            isinstance(exc, PyMongoError) and getattr(exc, "timeout", False))

    # --- jobs: submission and reading -----------------------------------------------------------
    def enqueue(self, job: JobDoc, max_waiting: int | None = None, idempotency: Idempotency | None = None,
                held_by: int | None = None, tenant_max: int | None = None) -> int:
        job_id, now, tenant = job["job_id"], float(job["submitted_at"]), job.get("tenant") or ""
        if idempotency is not None:
            self._claim_key(idempotency, job_id, now)
        if job.get("status", PENDING) in _WAITING:
            try:
                self._admit(job_id, tenant, now, max_waiting, tenant_max)
            except QueueFull:
                self._drop_key(idempotency, job_id)
                raise
        try:
            self.jobs.insert_one({**_to_mongo(job), "tenant": tenant,
                                  **({"held_epoch": held_by} if held_by is not None else {})})
        except BaseException:
            self._give_back_token(job_id)
            self._drop_key(idempotency, job_id)
            raise
        rank = job["rank"]
        return self.jobs.count_documents({"status": {"$in": _WAITING}, "_id": {"$ne": job_id}, "$or": [
            {"rank": {"$gt": rank}}, {"rank": rank, "submitted_at": {"$lte": now}}]})

    def get(self, job_id: str) -> JobDoc | None:
        return _from_mongo(self.jobs.find_one({"_id": job_id}))

    def list_jobs(self, status: str | None = None, model: str | None = None, limit: int = 100,
                  before: tuple[float, str] | None = None, tenant: str | None = None) -> list[JobDoc]:
        query: dict[str, Any] = {} if tenant is None else {"tenant": tenant}
        if status:
            query["status"] = status
        if model:
            query["model"] = model
        if before is not None:
            query["$or"] = [{"submitted_at": {"$lt": before[0]}}, {"submitted_at": before[0], "_id": {"$lt": before[1]}}]
        cursor = self.jobs.find(query, _SUMMARY_EXCLUDE).sort([("submitted_at", DESCENDING), ("_id", DESCENDING)])
        return [_from_mongo(d) for d in cursor.limit(limit)]

    def counts(self) -> QueueCounts:
        by_status = {d["_id"]: d["n"] for d in self.jobs.aggregate([{"$group": {"_id": "$status", "n": {"$sum": 1}}}])}
        waiting = [{"$match": {"status": {"$in": _WAITING}}}]
        by_priority = {d["_id"]: d["n"] for d in self.jobs.aggregate(
            waiting + [{"$group": {"_id": "$priority", "n": {"$sum": 1}}}])}
        by_model = {d["_id"]: d["n"] for d in self.jobs.aggregate(
            waiting + [{"$group": {"_id": "$model", "n": {"$sum": 1}}}])}
        by_tenant: dict[str, int] = {}
        for d in self.jobs.aggregate(waiting + [{"$group": {"_id": "$tenant", "n": {"$sum": 1}}}]):
            by_tenant[d["_id"] or ""] = by_tenant.get(d["_id"] or "", 0) + d["n"]
        return QueueCounts(by_status, by_priority, by_model, by_tenant)

    def statuses(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        if not ids:
            return {}
        return {d["_id"]: d["status"] for d in self.jobs.find({"_id": {"$in": ids}}, {"status": 1})}

    # --- jobs: the scheduler's transitions ----------------------------------------------------------
    def take_new(self, limit: int = 1000, epoch: int | None = None) -> list[JobDoc]:
        fields = {"model": 1, "priority": 1, "rank": 1, "submitted_at": 1, "job_id": 1, "tenant": 1, "share": 1}
        found = list(self.jobs.find({"status": PENDING}, fields).sort("submitted_at", ASCENDING).limit(limit))
        if not found:
            return []
        held = {"held_epoch": epoch} if epoch is not None else {}
        self.jobs.update_many({"_id": {"$in": [d["_id"] for d in found]}, "status": PENDING},
                              {"$set": {"status": QUEUED, **held}})
        return [_from_mongo(d) for d in found]

    def release_taken(self, job_ids: list[str] | None = None, *, held_before: int | None = None) -> int:
        query: dict[str, Any] = {"status": QUEUED}
        if job_ids is not None:
            query["_id"] = {"$in": job_ids}
        if held_before is not None:
            query["$or"] = [{"held_epoch": {"$lt": held_before}}, {"held_epoch": {"$exists": False}}]
        return self.jobs.update_many(query, {"$set": {"status": PENDING}, "$unset": {"held_epoch": ""}}).modified_count

    def claim(self, job_id: str, run_id: str, fields: dict[str, Any], epoch: int | None = None) -> JobDoc | None:
        if epoch is not None and self.lease_epoch(SCHEDULER_LEASE) != epoch:
            raise Fenced(f"epoch {epoch} is no longer the scheduler lease's")
        stamp = {**_to_mongo(fields), "status": RUNNING, "run_id": run_id}
        if epoch is not None:
            stamp["epoch"] = epoch
        doc = self.jobs.find_one_and_update({"_id": job_id, "status": QUEUED}, {"$set": stamp, "$inc": {"attempts": 1}},
                                            return_document=ReturnDocument.AFTER)
        if doc is None:                      # a retry of a claim that was applied: the same run holds it
            doc = self.jobs.find_one({"_id": job_id, "status": RUNNING, "run_id": run_id})
        if doc is not None:
            self._give_back_token(job_id)
        return _from_mongo(doc)

    def _expiry(self, fields: dict[str, Any]) -> dict[str, Any]:
        done = fields.get("completed_at")
        if self.retention_s is None or done is None:
            return {}
        return {"expire_at": datetime.fromtimestamp(done + self.retention_s, tz=UTC)}

    def finish(self, job_id: str, run_id: str, status: str, fields: dict[str, Any],
               ledger: dict[str, Any] | None = None) -> bool:
        update = {**_to_mongo(fields), **self._expiry(fields), "status": status}
        if ledger is not None:
            update["ledger_pending"] = ledger
        done = self.jobs.update_one({"_id": job_id, "status": RUNNING, "run_id": run_id},
                                    {"$set": update}).modified_count == 1
        done = done or self.jobs.count_documents({"_id": job_id, "status": status, "run_id": run_id}, limit=1) == 1
        if done and ledger is not None:
            self._write_ledger(job_id, ledger)
        return done

    def _write_ledger(self, job_id: str, ledger: dict[str, Any]) -> None:
        self.record_metrics(ledger)
        self.jobs.update_one({"_id": job_id, "ledger_pending.run_id": ledger.get("run_id")},
                             {"$unset": {"ledger_pending": ""}})

    def requeue(self, job_id: str, run_id: str, fields: dict[str, Any]) -> bool:
        done = self.jobs.update_one(
            {"_id": job_id, "status": RUNNING, "run_id": run_id},
            {"$set": {**_to_mongo(fields), "status": PENDING, "run_id": None, "last_run_id": run_id}}).modified_count == 1
        limit = self.queue_limit or self._tokens_for
        if done and limit:
            # Back in the queue: it takes a place if one is free (an acknowledged job is never
            # refused, so with none free the queue is over its limit until one leaves).
            self._ensure_tokens(limit)
            owner = self.jobs.find_one({"_id": job_id}, {"tenant": 1}) or {}
            self._take_token(job_id, owner.get("tenant") or "", float(fields.get("requeued_at") or 0.0))
        return done or self.jobs.count_documents(
            {"_id": job_id, "status": {"$in": _WAITING}, "last_run_id": run_id}, limit=1) == 1

    def running_runs(self) -> list[JobDoc]:
        fields = {"job_id": 1, "model": 1, "run_id": 1, "epoch": 1, "owner": 1, "started_at": 1, "timeout_s": 1,
                  "attempts": 1, "tenant": 1}
        return [_from_mongo(d) for d in self.jobs.find({"status": RUNNING}, fields)]

    def recover_run(self, job_id: str, run_id: str, requeue: bool, fields: dict[str, Any],
                    ledger: dict[str, Any] | None = None) -> bool:
        if requeue:
            return self.requeue(job_id, run_id, fields)
        return self.finish(job_id, run_id, FAILED, fields, ledger)

    def fail_waiting(self, job_id: str, fields: dict[str, Any]) -> bool:
        done = self.jobs.update_one({"_id": job_id, "status": {"$in": _WAITING}},
                                    {"$set": {**_to_mongo(fields), **self._expiry(fields), "status": FAILED}}
                                    ).modified_count == 1
        if done:
            self._give_back_token(job_id)
        return done

    def cancel(self, job_id: str, fields: dict[str, Any]) -> CancelOutcome:
        before = self.jobs.find_one_and_update(
            {"_id": job_id, "status": {"$in": _ACTIVE}},
            {"$set": {**_to_mongo(fields), **self._expiry(fields), "status": CANCELLED}},
            projection={"status": 1}, return_document=ReturnDocument.BEFORE)
        if before is not None:
            if before["status"] in _WAITING:
                self._give_back_token(job_id)
            return CancelOutcome(found=True, previous=before["status"], cancelled=True)
        current = self.jobs.find_one({"_id": job_id}, {"status": 1})
        if current is None:
            return CancelOutcome(found=False)
        return CancelOutcome(found=True, previous=current["status"])

    def purge_finished(self, before: float) -> int:
        return self.jobs.delete_many({"status": {"$in": _FINISHED}, "completed_at": {"$lt": before}}).deleted_count

    def repair(self, now: float) -> int:
        """Ledger entries a crash left on their jobs, and tokens held by jobs no longer waiting."""
        mended = 0
        for doc in self.jobs.find({"ledger_pending": {"$exists": True}}, {"ledger_pending": 1}):
            self._write_ledger(doc["_id"], doc["ledger_pending"])
            mended += 1
        held = {d["holder"]: d["_id"] for d in self.tokens.find({"holder": {"$ne": FREE}, "at": {"$lt": now - TOKEN_GRACE_S}})}
        if held:
            waiting = {d["_id"] for d in self.jobs.find({"_id": {"$in": list(held)}, "status": {"$in": _WAITING}}, {"_id": 1})}
            for job_id, token in held.items():
                if job_id not in waiting:
                    mended += self.tokens.update_one({"_id": token, "holder": job_id},
                                                     {"$set": {"holder": FREE}}).modified_count
        return mended

    def close(self) -> None:
        self.client.close()


__all__ = ["MongoStore", "COLLECTIONS", "run_key"]
