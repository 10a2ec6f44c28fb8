"""The MongoDB store's answers outside the job record: cached results and streamed pieces in
relay. A part of `MongoStore` (store/mongo.py). Both are kept as JSON text, since answers may
hold keys MongoDB refuses."""
from __future__ import annotations

import json
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection

from store import storable


class MongoAnswers:
    cache: Collection
    pieces: Collection

    def _answer_indexes(self) -> None:
        self.cache.create_index([("expires_at", ASCENDING)], name="expiry")
        self.pieces.create_index([("job_id", ASCENDING), ("at", ASCENDING), ("seq", ASCENDING)], name="by_job")
        self.pieces.create_index([("at", ASCENDING)], name="by_age")

    def cache_get(self, key: str, now: float) -> dict[str, Any] | None:
        doc = self.cache.find_one({"_id": key, "expires_at": {"$gt": now}})
        return json.loads(doc["answer"]) if doc else None

    def cache_put(self, key: str, answer: dict[str, Any], expires_at: float) -> None:
        self.cache.update_one({"_id": key}, {"$set": {"answer": storable.dumps(answer), "expires_at": expires_at}},
                              upsert=True)

    def purge_cache(self, now: float) -> int:
        return self.cache.delete_many({"expires_at": {"$lte": now}}).deleted_count

    def append_pieces(self, job_id: str, run_id: str, seq: int, pieces: list[dict[str, Any]], now: float) -> None:
        self.pieces.update_one({"_id": f"{job_id}:{run_id}:{seq}"},
                               {"$setOnInsert": {"job_id": job_id, "run_id": run_id, "seq": seq, "at": now,
                                                 "pieces": storable.dumps(pieces)}}, upsert=True)

    def read_pieces(self, job_id: str, skip: int = 0) -> list[tuple[str, list[dict[str, Any]]]]:
        cursor = self.pieces.find({"job_id": job_id}).sort([("at", ASCENDING), ("seq", ASCENDING)]).skip(skip)
        return [(d["run_id"], json.loads(d["pieces"])) for d in cursor]

    def drop_pieces(self, job_id: str | None = None, before: float | None = None) -> int:
        query = {"job_id": job_id} if job_id is not None else {"at": {"$lt": before or 0.0}}
        return self.pieces.delete_many(query).deleted_count
