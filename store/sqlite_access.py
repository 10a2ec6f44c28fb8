"""The embedded store's tenancy records: API keys (hashed), per-key rates, shared counters. A
part of `SqliteStore` (store/sqlite.py)."""
from __future__ import annotations

import json
from typing import Any

from store.sqlite_db import SqliteDB
from store.sqlite_records import dumps
from tenancy.keys import rate_take


class SqliteAccess:
    db: SqliteDB

    def put_key(self, record: dict[str, Any]) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT INTO api_keys (key_id, key_hash, created_at, doc) VALUES (?, ?, ?, ?)",
                         (record["key_id"], record["key_hash"], record["created_at"], dumps(record)))

    def key_by_hash(self, key_hash: str) -> dict[str, Any] | None:
        with self.db.read() as conn:
            row = conn.execute("SELECT doc FROM api_keys WHERE key_hash = ?", (key_hash,)).fetchone()
        return json.loads(row["doc"]) if row else None

    def list_keys(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            return [json.loads(r["doc"]) for r in conn.execute("SELECT doc FROM api_keys ORDER BY created_at, key_id")]

    def revoke_key(self, key_id: str, now: float) -> bool:
        with self.db.write() as conn:
            return conn.execute("UPDATE api_keys SET doc = json_set(doc, '$.revoked_at', ?) "
                                "WHERE key_id = ? AND json_extract(doc, '$.revoked_at') IS NULL",
                                (now, key_id)).rowcount == 1

    def take_rate(self, key_id: str, now: float, per_min: float) -> float:
        with self.db.write() as conn:
            row = conn.execute("SELECT tat FROM rate_limits WHERE key_id = ?", (key_id,)).fetchone()
            allowed, tat, wait = rate_take(row["tat"] if row else None, now, per_min)
            if allowed:
                conn.execute("INSERT INTO rate_limits (key_id, tat) VALUES (?, ?) "
                             "ON CONFLICT(key_id) DO UPDATE SET tat = excluded.tat", (key_id, tat))
            return wait

    def bump(self, name: str, by: int = 1) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT INTO counters (name, n) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET n = n + ?",
                         (name, by, by))

    def read_counters(self, prefix: str = "") -> dict[str, int]:
        with self.db.read() as conn:
            rows = conn.execute("SELECT name, n FROM counters WHERE substr(name, 1, ?) = ?",
                                (len(prefix), prefix)).fetchall()
        return {r["name"]: r["n"] for r in rows}
