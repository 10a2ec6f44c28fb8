"""The embedded store's answers outside the job record: cached results and streamed pieces in
relay. A part of `SqliteStore` (store/sqlite.py)."""
from __future__ import annotations

import json
from typing import Any

from store.sqlite_db import SqliteDB
from store.sqlite_records import dumps


class SqliteAnswers:
    db: SqliteDB

    def cache_get(self, key: str, now: float) -> dict[str, Any] | None:
        with self.db.read() as conn:
            row = conn.execute("SELECT doc FROM result_cache WHERE key = ? AND expires_at > ?", (key, now)).fetchone()
        return json.loads(row["doc"]) if row else None

    def cache_put(self, key: str, answer: dict[str, Any], expires_at: float) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT INTO result_cache (key, expires_at, doc) VALUES (?, ?, ?) ON CONFLICT(key) "
                         "DO UPDATE SET expires_at = excluded.expires_at, doc = excluded.doc",
                         (key, expires_at, dumps(answer)))

    def purge_cache(self, now: float) -> int:
        with self.db.write() as conn:
            return conn.execute("DELETE FROM result_cache WHERE expires_at <= ?", (now,)).rowcount

    def append_pieces(self, job_id: str, run_id: str, seq: int, pieces: list[dict[str, Any]], now: float) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO answer_pieces (job_id, run_id, seq, at, doc) VALUES (?, ?, ?, ?, ?)",
                         (job_id, run_id, seq, now, dumps(pieces)))

    def read_pieces(self, job_id: str, skip: int = 0) -> list[tuple[str, list[dict[str, Any]]]]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT run_id, doc FROM answer_pieces WHERE job_id = ? ORDER BY rowid "
                                "LIMIT -1 OFFSET ?", (job_id, skip)).fetchall()
        return [(r["run_id"], json.loads(r["doc"])) for r in rows]

    def drop_pieces(self, job_id: str | None = None, before: float | None = None) -> int:
        with self.db.write() as conn:
            if job_id is not None:
                return conn.execute("DELETE FROM answer_pieces WHERE job_id = ?", (job_id,)).rowcount
            return conn.execute("DELETE FROM answer_pieces WHERE at < ?", (before or 0.0,)).rowcount
