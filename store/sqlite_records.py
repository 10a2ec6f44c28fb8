"""The embedded store's records beside the jobs: the ledger, tasks and experiment results, the
scheduler's published state, leases with their epochs, and measured model footprints. A part
of `SqliteStore` (store/sqlite.py), working on its `SqliteDB`."""
from __future__ import annotations

import json
import sqlite3
from typing import Any

from metering.ledger import USAGE_FIELDS
from store import storable
from store.sqlite_db import BUSY_TIMEOUT_S, SqliteDB


def dumps(value: Any) -> str:
    # never NaN or Infinity: SQLite's JSON functions refuse a document with them, and one such
    # row would fail every query that reads it (claims, listings)
    return storable.dumps(value, separators=(",", ":"))


def insert_metrics(conn: sqlite3.Connection, doc: dict[str, Any]) -> None:
    conn.execute(
        "INSERT OR IGNORE INTO job_metrics (run_key, job_id, model, finished_at, doc, tenant) VALUES (?, ?, ?, ?, ?, ?)",
        (run_key(doc), doc["job_id"], doc["model"], doc["finished_at"], dumps(doc), doc.get("tenant") or ""))


def run_key(doc: dict[str, Any]) -> str:
    return f"{doc['job_id']}:{doc.get('run_id')}"


class SqliteRecords:
    db: SqliteDB

    # --- the ledger ---------------------------------------------------------------------------
    def record_metrics(self, doc: dict[str, Any]) -> None:
        with self.db.write() as conn:
            insert_metrics(conn, doc)

    def list_metrics(self, model: str | None = None, limit: int = 100, job_id: str | None = None,
                     before: tuple[float, str] | None = None, tenant: str | None = None) -> list[dict[str, Any]]:
        where: list[str] = []
        args: list[object] = []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if job_id:
            where.append("job_id = ?")
            args.append(job_id)
        elif model:
            where.append("model = ?")
            args.append(model)
        if before is not None:
            where.append("(finished_at < ? OR (finished_at = ? AND run_key < ?))")
            args.extend([before[0], before[0], before[1]])
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        sql = f"SELECT doc FROM job_metrics{clause} ORDER BY finished_at DESC, run_key DESC LIMIT ?"
        with self.db.read() as conn:
            return [json.loads(r["doc"]) for r in conn.execute(sql, (*args, limit)).fetchall()]

    def usage_by_tenant(self, since: float) -> dict[str, dict[str, float]]:
        sums = ", ".join(f"TOTAL(json_extract(doc, '$.{f}')) AS {f}" for f in USAGE_FIELDS)
        with self.db.read() as conn:
            rows = conn.execute(f"SELECT tenant, COUNT(*) AS jobs, {sums} FROM job_metrics WHERE finished_at >= ? "
                                "AND json_valid(doc) GROUP BY tenant", (since,)).fetchall()
        return {r["tenant"]: {"jobs": r["jobs"], **{f: r[f] for f in USAGE_FIELDS}} for r in rows}

    def purge_metrics(self, before: float) -> int:
        with self.db.write() as conn:
            return conn.execute("DELETE FROM job_metrics WHERE finished_at < ?", (before,)).rowcount

    # --- tasks and experiment results ---------------------------------------------------------
    def put_task(self, task: dict[str, Any]) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT INTO tasks (task_id, suite, doc) VALUES (?, ?, ?) ON CONFLICT(task_id) "
                         "DO UPDATE SET suite = excluded.suite, doc = excluded.doc",
                         (task["task_id"], task.get("suite"), dumps(task)))

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self.db.read() as conn:
            row = conn.execute("SELECT doc FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return json.loads(row["doc"]) if row else None

    def list_tasks(self, suite: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM tasks", []
        if suite:
            sql += " WHERE suite = ?"
            args.append(suite)
        with self.db.read() as conn:
            rows = conn.execute(sql + " ORDER BY task_id LIMIT ?", (*args, limit)).fetchall()
        return [json.loads(r["doc"]) for r in rows]

    def record_result(self, result: dict[str, Any]) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT INTO experiment_results (experiment, task_id, recorded_at, doc) VALUES (?, ?, ?, ?)",
                         (result.get("experiment"), result.get("task_id"), result.get("recorded_at"), dumps(result)))

    def list_results(self, experiment: str | None = None, limit: int = 1000,
                     tenant: str | None = None, strategy: str | None = None) -> list[dict[str, Any]]:
        where, args = [], []
        if experiment:
            where.append("experiment = ?")
            args.append(experiment)
        if strategy is not None:
            where.append("json_extract(doc, '$.strategy') = ?")
            args.append(strategy)
        if tenant is not None:
            where.append("coalesce(json_extract(doc, '$.tenant'), '') = ?")
            args.append(tenant)
        sql = "SELECT doc FROM experiment_results" + (" WHERE " + " AND ".join(where) if where else "")
        with self.db.read() as conn:
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [json.loads(r["doc"]) for r in rows]

    # --- shared state -------------------------------------------------------------------------
    def put_state(self, key: str, value: dict[str, Any], now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) "
                "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, dumps(value), now))

    def get_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        with self.db.read() as conn:
            row = conn.execute("SELECT value, updated_at FROM state WHERE key = ?", (key,)).fetchone()
        return (json.loads(row["value"]), row["updated_at"]) if row else None

    # --- leases and epochs --------------------------------------------------------------------
    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float, timeout_s: float | None = None) -> int | None:
        # Renewing a live lease keeps its epoch; taking one that expired or was released (even
        # back from oneself) starts a new one.
        with self.db.write(timeout_s or BUSY_TIMEOUT_S) as conn:
            row = conn.execute(
                "UPDATE leases SET epoch = CASE WHEN owner = ? AND expires_at >= ? THEN epoch ELSE epoch + 1 END, "
                "owner = ?, expires_at = ? WHERE name = ? AND (owner = ? OR expires_at < ?) RETURNING epoch",
                (owner, now, owner, now + ttl_s, name, owner, now)).fetchone()
            if row is not None:
                return int(row["epoch"])
            row = conn.execute("INSERT INTO leases (name, owner, expires_at, epoch) VALUES (?, ?, ?, 1) "
                               "ON CONFLICT(name) DO NOTHING RETURNING epoch", (name, owner, now + ttl_s)).fetchone()
            return int(row["epoch"]) if row is not None else None

    def release_lease(self, name: str, owner: str) -> None:
        with self.db.write() as conn:
            conn.execute("UPDATE leases SET expires_at = 0 WHERE name = ? AND owner = ?", (name, owner))

    def lease_epoch(self, conn: sqlite3.Connection, name: str) -> int | None:
        row = conn.execute("SELECT epoch FROM leases WHERE name = ?", (name,)).fetchone()
        return int(row["epoch"]) if row is not None else None

    def retire_epoch(self, name: str, epoch: int, now: float) -> None:
        with self.db.write() as conn:
            conn.execute("INSERT OR IGNORE INTO retired_epochs (name, epoch, retired_at) VALUES (?, ?, ?)",
                         (name, epoch, now))

    def retired_epochs(self, name: str) -> set[int]:
        with self.db.read() as conn:
            return {int(r["epoch"]) for r in conn.execute("SELECT epoch FROM retired_epochs WHERE name = ?", (name,))}

    # --- measured footprints ------------------------------------------------------------------
    def save_footprint(self, model: str, size_bytes: int, now: float) -> None:
        with self.db.write() as conn:
            conn.execute(
                "INSERT INTO model_footprints (model, size_bytes, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(model) DO UPDATE SET size_bytes = excluded.size_bytes, "
                "updated_at = excluded.updated_at", (model, int(size_bytes), now))

    def footprints(self) -> dict[str, int]:
        with self.db.read() as conn:
            return dict(conn.execute("SELECT model, size_bytes FROM model_footprints").fetchall())
