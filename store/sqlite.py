"""The embedded job store: SQLite from the standard library, in WAL mode.

Safe for several processes (gunicorn workers and the scheduler) on one file: each thread of each
process has its own connection, and every transition is one conditional UPDATE, so SQLite's
own locking makes it atomic. `SqliteStore.in_memory()` keeps everything in one process's memory
(one shared connection behind a lock), for tests and throwaway runs.

Indexed columns hold what queries filter and sort on; the rest of a job lives in a JSON `doc`
column, patched with SQLite's `json_patch`.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from jobs import FINISHED, WAITING, JobDoc, JobStatus
from store.base import CancelOutcome, JobStore, QueueCounts, QueueFull

_COLUMNS = ("job_id", "status", "model", "priority", "rank", "submitted_at", "completed_at", "run_id")
_SUMMARY_DROP = ("$.prompt", "$.messages", "$.input", "$.images", "$.result", "$.system")
_WAITING = tuple(s.value for s in WAITING)
_FINISHED = tuple(s.value for s in FINISHED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    model TEXT NOT NULL,
    priority TEXT NOT NULL,
    rank INTEGER NOT NULL,
    submitted_at REAL NOT NULL,
    completed_at REAL,
    run_id TEXT,
    doc TEXT NOT NULL
);
-- waiting jobs in queue order (position, take_new), and counts by status
CREATE INDEX IF NOT EXISTS jobs_status_order ON jobs(status, rank DESC, submitted_at);
-- /api/jobs?model=&status=
CREATE INDEX IF NOT EXISTS jobs_model_status ON jobs(model, status, submitted_at);
-- /api/jobs newest first
CREATE INDEX IF NOT EXISTS jobs_submitted ON jobs(submitted_at);
-- retention cleanup
CREATE INDEX IF NOT EXISTS jobs_completed ON jobs(completed_at) WHERE completed_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_metrics (
    run_key TEXT PRIMARY KEY,   -- job_id:run_id, so that a run is recorded once
    job_id TEXT NOT NULL,
    model TEXT NOT NULL,
    finished_at REAL NOT NULL,
    doc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS job_metrics_model ON job_metrics(model, finished_at);
CREATE INDEX IF NOT EXISTS job_metrics_finished ON job_metrics(finished_at);
CREATE INDEX IF NOT EXISTS job_metrics_job ON job_metrics(job_id);
CREATE TABLE IF NOT EXISTS tasks (task_id TEXT PRIMARY KEY, suite TEXT, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_suite ON tasks(suite, task_id);
CREATE TABLE IF NOT EXISTS experiment_results (
    id INTEGER PRIMARY KEY AUTOINCREMENT, experiment TEXT, task_id TEXT, recorded_at REAL, doc TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS results_experiment ON experiment_results(experiment, id);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS model_footprints (
    model TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, updated_at REAL NOT NULL);
"""


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _split(job: JobDoc) -> tuple[dict[str, Any], dict[str, Any]]:
    columns = {k: job.get(k) for k in _COLUMNS}
    doc = {k: v for k, v in job.items() if k not in _COLUMNS}
    return columns, doc


class SqliteStore(JobStore):
    def __init__(self, path: str | Path, *, _memory_uri: str | None = None):
        self._target = _memory_uri or str(path)
        self._memory = _memory_uri is not None
        if not self._memory:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._pid = os.getpid()
        self._shared: sqlite3.Connection | None = None
        with self._conn() as conn:
            conn.executescript(_SCHEMA)

    @classmethod
    def in_memory(cls) -> SqliteStore:
        return cls("", _memory_uri=f"file:mm-{id(object())}-{os.getpid()}?mode=memory&cache=shared")

    # --- connections ---------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._target, timeout=30.0, isolation_level=None,
                               check_same_thread=False, uri=self._memory)
        conn.row_factory = sqlite3.Row
        if not self._memory:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=30000")
        self._connections.append(conn)
        return conn

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        if os.getpid() != self._pid:   # forked (gunicorn): never share a connection across processes
            self._pid, self._connections, self._shared = os.getpid(), [], None
            self._local = threading.local()
        if self._memory:
            with self._lock:
                if self._shared is None:
                    self._shared = self._open()
                yield self._shared
            return
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self._lock:
                conn = self._local.conn = self._open()
        yield conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # One writer per process at a time: threads queue on a Python lock rather than in SQLite's
        # busy handler, whose sleeps (up to 100 ms each) would show as latency spikes.
        with self._write_lock, self._conn() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @staticmethod
    def _row_to_job(row: sqlite3.Row) -> JobDoc:
        job = json.loads(row["doc"])
        for key in _COLUMNS:
            if key in row.keys():
                job[key] = row[key]
        return job

    # --- jobs: submission and reading ----------------------------------------------------------
    def enqueue(self, job: JobDoc, max_waiting: int | None = None) -> int:
        columns, doc = _split(job)
        with self._write() as conn:
            if max_waiting is not None:
                waiting = conn.execute(
                    "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)", _WAITING).fetchone()[0]
                if waiting >= max_waiting:
                    raise QueueFull(waiting)
            ahead = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?) AND "
                "(rank > ? OR (rank = ? AND submitted_at <= ?))",
                (*_WAITING, columns["rank"], columns["rank"], columns["submitted_at"])).fetchone()[0]
            conn.execute(
                "INSERT INTO jobs (job_id, status, model, priority, rank, submitted_at, completed_at,"
                " run_id, doc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*(columns[k] for k in _COLUMNS), _dumps(doc)))
        return ahead

    def get(self, job_id: str) -> JobDoc | None:
        with self._conn() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return self._row_to_job(row) if row else None

    def list_jobs(self, status: str | None = None, model: str | None = None,
                  limit: int = 100) -> list[JobDoc]:
        where, args = [], []
        if status:
            where.append("status = ?")
            args.append(status)
        if model:
            where.append("model = ?")
            args.append(model)
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        drop = ", ".join(f"'{p}'" for p in _SUMMARY_DROP)
        sql = (f"SELECT {', '.join(_COLUMNS)}, json_remove(doc, {drop}) AS doc FROM jobs {clause} "
               "ORDER BY submitted_at DESC LIMIT ?")
        with self._conn() as conn:
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [self._row_to_job(r) for r in rows]

    def counts(self) -> QueueCounts:
        with self._conn() as conn:
            by_status = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            by_priority = dict(conn.execute(
                "SELECT priority, COUNT(*) FROM jobs WHERE status IN (?, ?) GROUP BY priority",
                _WAITING).fetchall())
            by_model = dict(conn.execute(
                "SELECT model, COUNT(*) FROM jobs WHERE status IN (?, ?) GROUP BY model",
                _WAITING).fetchall())
        return QueueCounts(by_status, by_priority, by_model)

    def statuses(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._conn() as conn:
            rows = conn.execute(f"SELECT job_id, status FROM jobs WHERE job_id IN ({marks})", ids)
            return dict(rows.fetchall())

    # --- jobs: transitions ---------------------------------------------------------------------
    def take_new(self, limit: int = 1000) -> list[JobDoc]:
        with self._write() as conn:
            rows = conn.execute(
                "UPDATE jobs SET status = 'queued' WHERE job_id IN (SELECT job_id FROM jobs "
                "WHERE status = 'pending' ORDER BY submitted_at LIMIT ?) "
                "RETURNING job_id, model, priority, rank, submitted_at", (limit,)).fetchall()
        taken = [dict(r) for r in rows]
        taken.sort(key=lambda j: j["submitted_at"])
        return taken

    def release_taken(self) -> int:
        with self._write() as conn:
            return conn.execute("UPDATE jobs SET status = 'pending' WHERE status = 'queued'").rowcount

    def claim(self, job_id: str, run_id: str, fields: dict[str, Any]) -> JobDoc | None:
        with self._write() as conn:
            row = conn.execute(
                "UPDATE jobs SET status = 'running', run_id = ?, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status = 'queued' RETURNING *",
                (run_id, _dumps(fields), job_id)).fetchone()
        return self._row_to_job(row) if row else None

    def finish(self, job_id: str, run_id: str, status: str, fields: dict[str, Any]) -> bool:
        _, doc = _split(fields)
        with self._write() as conn:
            return conn.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status = 'running' AND run_id = ?",
                (status, fields.get("completed_at"), _dumps(doc), job_id, run_id)).rowcount == 1

    def requeue(self, job_id: str, run_id: str, fields: dict[str, Any]) -> bool:
        with self._write() as conn:
            return conn.execute(
                "UPDATE jobs SET status = 'pending', run_id = NULL, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status = 'running' AND run_id = ?",
                (_dumps(fields), job_id, run_id)).rowcount == 1

    def fail_waiting(self, job_id: str, fields: dict[str, Any]) -> bool:
        _, doc = _split(fields)
        with self._write() as conn:
            return conn.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status IN (?, ?)",
                (fields.get("completed_at"), _dumps(doc), job_id, *_WAITING)).rowcount == 1

    def cancel(self, job_id: str, fields: dict[str, Any]) -> CancelOutcome:
        _, doc = _split(fields)
        with self._write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return CancelOutcome(found=False)
            previous = row["status"]
            if previous in _FINISHED:
                return CancelOutcome(found=True, previous=previous)
            conn.execute(
                "UPDATE jobs SET status = 'cancelled', completed_at = ?, doc = json_patch(doc, ?) "
                "WHERE job_id = ?", (fields.get("completed_at"), _dumps(doc), job_id))
        return CancelOutcome(found=True, previous=previous, cancelled=True)

    def recover_running(self, requeue: bool, fields: dict[str, Any]) -> list[str]:
        _, doc = _split(fields)
        with self._write() as conn:
            if requeue:
                rows = conn.execute(
                    "UPDATE jobs SET status = 'pending', run_id = NULL, doc = json_patch(doc, ?) "
                    "WHERE status = 'running' RETURNING job_id", (_dumps(doc),)).fetchall()
            else:
                rows = conn.execute(
                    "UPDATE jobs SET status = 'failed', completed_at = ?, doc = json_patch(doc, ?) "
                    "WHERE status = 'running' RETURNING job_id",
                    (fields.get("completed_at"), _dumps(doc))).fetchall()
        return [r["job_id"] for r in rows]

    def purge_finished(self, before: float) -> int:
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM jobs WHERE completed_at < ? AND status IN (?, ?, ?)",
                (before, *_FINISHED)).rowcount

    # --- ledger --------------------------------------------------------------------------------
    def record_metrics(self, doc: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO job_metrics (run_key, job_id, model, finished_at, doc) VALUES (?, ?, ?, ?, ?)",
                (f"{doc['job_id']}:{doc.get('run_id')}", doc["job_id"], doc["model"], doc["finished_at"], _dumps(doc)))

    def list_metrics(self, model: str | None = None, limit: int = 100,
                     job_id: str | None = None) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM job_metrics", []
        if job_id:
            sql += " WHERE job_id = ?"
            args.append(job_id)
        elif model:
            sql += " WHERE model = ?"
            args.append(model)
        sql += " ORDER BY finished_at DESC LIMIT ?"
        with self._conn() as conn:
            return [json.loads(r["doc"]) for r in conn.execute(sql, (*args, limit)).fetchall()]

    # --- tasks and experiment results -------------------------------------------------------
    def put_task(self, task: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO tasks (task_id, suite, doc) VALUES (?, ?, ?) ON CONFLICT(task_id) "
                         "DO UPDATE SET suite = excluded.suite, doc = excluded.doc",
                         (task["task_id"], task.get("suite"), _dumps(task)))

    def get_task(self, task_id: str) -> dict[str, Any] | None:
        with self._conn() as conn:
            row = conn.execute("SELECT doc FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return json.loads(row["doc"]) if row else None

    def list_tasks(self, suite: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM tasks", []
        if suite:
            sql += " WHERE suite = ?"
            args.append(suite)
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY task_id LIMIT ?", (*args, limit)).fetchall()
        return [json.loads(r["doc"]) for r in rows]

    def record_result(self, result: dict[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("INSERT INTO experiment_results (experiment, task_id, recorded_at, doc) VALUES (?, ?, ?, ?)",
                         (result.get("experiment"), result.get("task_id"), result.get("recorded_at"), _dumps(result)))

    def list_results(self, experiment: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        sql, args = "SELECT doc FROM experiment_results", []
        if experiment:
            sql += " WHERE experiment = ?"
            args.append(experiment)
        with self._conn() as conn:
            rows = conn.execute(sql + " ORDER BY id LIMIT ?", (*args, limit)).fetchall()
        return [json.loads(r["doc"]) for r in rows]

    # --- shared state --------------------------------------------------------------------------
    def put_state(self, key: str, value: dict[str, Any], now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO state (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT(key) "
                "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (key, _dumps(value), now))

    def get_state(self, key: str) -> tuple[dict[str, Any], float] | None:
        with self._conn() as conn:
            row = conn.execute("SELECT value, updated_at FROM state WHERE key = ?", (key,)).fetchone()
        return (json.loads(row["value"]), row["updated_at"]) if row else None

    def acquire_lease(self, name: str, owner: str, ttl_s: float, now: float) -> bool:
        with self._write() as conn:
            return conn.execute(
                "INSERT INTO leases (name, owner, expires_at) VALUES (?, ?, ?) ON CONFLICT(name) "
                "DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at "
                "WHERE leases.owner = excluded.owner OR leases.expires_at < ?",
                (name, owner, now + ttl_s, now)).rowcount == 1

    def release_lease(self, name: str, owner: str) -> None:
        with self._write() as conn:
            conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))

    def save_footprint(self, model: str, size_bytes: int, now: float) -> None:
        with self._write() as conn:
            conn.execute(
                "INSERT INTO model_footprints (model, size_bytes, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(model) DO UPDATE SET size_bytes = excluded.size_bytes, "
                "updated_at = excluded.updated_at", (model, int(size_bytes), now))

    def footprints(self) -> dict[str, int]:
        with self._conn() as conn:
            return dict(conn.execute("SELECT model, size_bytes FROM model_footprints").fetchall())

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
            self._shared = None
            self._local = threading.local()
