"""The embedded job store: SQLite from the standard library, in WAL mode (store/sqlite_db.py).

Every transition is one conditional UPDATE, so SQLite's own locking makes it atomic across the
processes sharing the file; a claim also checks the scheduler lease's epoch in the same
statement (fencing). `SqliteStore.in_memory()` keeps everything in one process's memory.

Indexed columns hold what queries filter and sort on; the rest of a job lives in a JSON `doc`
column, patched with SQLite's `json_patch`.
"""
from __future__ import annotations

import functools
import json
import sqlite3
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from jobs.model import FINISHED, WAITING, JobDoc, JobStatus
from store.base import (
    SCHEDULER_LEASE,
    CancelOutcome,
    Fenced,
    Idempotency,
    IdempotencyConflict,
    IdempotentReplay,
    JobStore,
    QueueCounts,
    queue_full,
)
from store.sqlite_access import SqliteAccess
from store.sqlite_answers import SqliteAnswers
from store.sqlite_db import SqliteDB
from store.sqlite_records import SqliteRecords, dumps, insert_metrics
from tenancy.keys import admit

_COLUMNS = ("job_id", "status", "model", "priority", "rank", "submitted_at", "completed_at", "run_id", "tenant")
_SUMMARY_DROP = ("$.prompt", "$.messages", "$.input", "$.images", "$.result", "$.system")
_WAITING = WAITING
_FINISHED = FINISHED
PENDING, QUEUED, RUNNING = JobStatus.PENDING.value, JobStatus.QUEUED.value, JobStatus.RUNNING.value
FAILED, CANCELLED = JobStatus.FAILED.value, JobStatus.CANCELLED.value
_TRANSIENT = ("locked", "busy", "disk i/o", "unable to open")


def _split(job: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    columns = {k: job.get(k) for k in _COLUMNS}
    columns["tenant"] = columns["tenant"] or ""
    doc = {k: v for k, v in job.items() if k not in _COLUMNS}
    return columns, doc


def _row_to_job(row: sqlite3.Row) -> JobDoc:
    job = json.loads(row["doc"])
    present = row.keys()
    for key in _COLUMNS:
        if key in present:
            job[key] = row[key]
    return job


@dataclass
class _Pending:
    job: JobDoc
    max_waiting: int | None
    idempotency: Idempotency | None
    held_by: int | None
    tenant_max: int | None
    doc_text: str = ""                  # the document, serialized by its own caller before it joins a batch
    result: Any = None
    done: threading.Event = field(default_factory=threading.Event)


def _repairing(method: Callable[..., Any]) -> Callable[..., Any]:
    """Defence in depth: when a document SQLite cannot read (NaN, from a file written before the
    store refused it) fails a statement, repair the file (that job fails, with the reason) and
    try once more, so that one bad row never stops claims, listings or cancels."""
    @functools.wraps(method)
    def wrapper(self: SqliteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.OperationalError as exc:
            if "malformed JSON" not in str(exc) or not self.db.repair():
                raise
            return method(self, *args, **kwargs)
    return wrapper


class SqliteStore(SqliteRecords, SqliteAccess, SqliteAnswers, JobStore):
    transient_errors = (sqlite3.OperationalError,)

    def __init__(self, path: str | Path, *, db: SqliteDB | None = None):
        self.db = db or SqliteDB(path)
        self._enqueue_lock = threading.Lock()
        self._enqueue_queue: list[_Pending] = []
        self.db.on_fork.append(self._reset_after_fork)

    @classmethod
    def in_memory(cls) -> SqliteStore:
        return cls("", db=SqliteDB.in_memory())

    def _reset_after_fork(self) -> None:
        self._enqueue_lock, self._enqueue_queue = threading.Lock(), []

    def is_transient(self, exc: BaseException) -> bool:
        return isinstance(exc, sqlite3.OperationalError) and any(m in str(exc).lower() for m in _TRANSIENT)

    # --- jobs: submission and reading ----------------------------------------------------------
    def enqueue(self, job: JobDoc, max_waiting: int | None = None, idempotency: Idempotency | None = None,
                held_by: int | None = None, tenant_max: int | None = None) -> int:
        """Jobs submitted at the same moment by several threads go in together, in one
        transaction (group commit): under load the per-job cost of SQLite's write lock and commit
        is shared, and alone a job waits for nobody. Each gets its answer only after the commit."""
        self.db._after_fork()
        # serialized here, in the caller's thread: a document that cannot be written fails its own
        # submission, never the batch of other tenants' jobs it would have joined
        entry = _Pending(job, max_waiting, idempotency, held_by, tenant_max, doc_text=dumps(_split(job)[1]))
        with self._enqueue_lock:
            self._enqueue_queue.append(entry)
            leader = len(self._enqueue_queue) == 1
        if leader:
            self._write_batch()
        entry.done.wait()
        if isinstance(entry.result, BaseException):
            raise entry.result
        return entry.result

    def _write_batch(self) -> None:
        # The first caller of a batch writes it, taking with it every job queued meanwhile
        # (they queued while it waited for the write lock). Whatever happens, every job of the
        # batch gets an answer: its position once committed, or the error.
        batch: list[_Pending] = []
        results: list[Any] = []
        try:
            with self.db.write() as conn:
                with self._enqueue_lock:
                    batch.extend(self._enqueue_queue)
                    self._enqueue_queue = []
                results = self._insert_batch(conn, batch)
        except BaseException as exc:
            with self._enqueue_lock:
                if not batch:
                    batch, self._enqueue_queue = self._enqueue_queue, []
            results = [exc] * len(batch)
        for entry, result in zip(batch, results, strict=False):
            entry.result = result
            entry.done.set()

    def _insert_batch(self, conn: sqlite3.Connection, batch: list[_Pending]) -> list[Any]:
        counts = dict(conn.execute("SELECT rank, n FROM waiting_counts").fetchall())
        by_tenant = dict(conn.execute("SELECT tenant, n FROM tenant_waiting WHERE n > 0").fetchall())
        results: list[Any] = []
        for entry in batch:
            columns, doc = _split(entry.job)
            if entry.idempotency is not None:
                earlier = self._idempotent_earlier(conn, entry.idempotency, float(columns["submitted_at"]))
                if earlier is not None:
                    results.append(earlier)
                    continue
            waiting, tenant = sum(counts.values()), columns["tenant"]
            mine = by_tenant.get(tenant, 0)
            refusal = admit(waiting, mine, len(by_tenant) - (1 if mine else 0), entry.max_waiting, entry.tenant_max)
            if refusal is not None and columns["status"] in _WAITING:
                results.append(queue_full(refusal, waiting, tenant, mine))
                continue
            try:
                conn.execute("SAVEPOINT job")
                conn.execute("INSERT INTO jobs (job_id, status, model, priority, rank, submitted_at, completed_at,"
                             " run_id, tenant, doc, held_epoch) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                             (*(columns[k] for k in _COLUMNS), entry.doc_text, entry.held_by))
                if entry.idempotency is not None:
                    key = entry.idempotency
                    conn.execute("INSERT OR REPLACE INTO idempotency (key, job_id, fingerprint, expires_at) "
                                 "VALUES (?, ?, ?, ?)", (key.key, columns["job_id"], key.fingerprint, key.expires_at))
                conn.execute("RELEASE job")
            except sqlite3.IntegrityError as exc:
                conn.execute("ROLLBACK TO job")
                conn.execute("RELEASE job")
                results.append(exc)
                continue
            # A new job is the latest of its priority: everything waiting at its rank or above is ahead.
            results.append(sum(n for rank, n in counts.items() if rank >= columns["rank"]))
            if columns["status"] in _WAITING:
                counts[columns["rank"]] = counts.get(columns["rank"], 0) + 1
                by_tenant[tenant] = mine + 1
        return results

    @staticmethod
    def _idempotent_earlier(conn: sqlite3.Connection, key: Idempotency, now: float) -> BaseException | None:
        row = conn.execute("SELECT job_id, fingerprint, expires_at FROM idempotency WHERE key = ?",
                           (key.key,)).fetchone()
        if row is None or row["expires_at"] <= now:
            return None
        if row["fingerprint"] != key.fingerprint:
            return IdempotencyConflict(row["job_id"])
        return IdempotentReplay(row["job_id"])

    def purge_idempotency(self, now: float) -> int:
        with self.db.write() as conn:
            return conn.execute("DELETE FROM idempotency WHERE expires_at <= ?", (now,)).rowcount

    @_repairing
    def get(self, job_id: str) -> JobDoc | None:
        with self.db.read() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return _row_to_job(row) if row else None

    @_repairing
    def list_jobs(self, status: str | None = None, model: str | None = None, limit: int = 100,
                  before: tuple[float, str] | None = None, tenant: str | None = None) -> list[JobDoc]:
        where: list[str] = []
        args: list[object] = []
        if tenant is not None:
            where.append("tenant = ?")
            args.append(tenant)
        if status:
            where.append("status = ?")
            args.append(status)
        if model:
            where.append("model = ?")
            args.append(model)
        if before is not None:
            where.append("(submitted_at < ? OR (submitted_at = ? AND job_id < ?))")
            args.extend([before[0], before[0], before[1]])
        clause = f"WHERE {' AND '.join(where)}" if where else ""
        drop = ", ".join(f"'{p}'" for p in _SUMMARY_DROP)
        sql = (f"SELECT {', '.join(_COLUMNS)}, json_remove(doc, {drop}) AS doc FROM jobs {clause} "
               "ORDER BY submitted_at DESC, job_id DESC LIMIT ?")
        with self.db.read() as conn:
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [_row_to_job(r) for r in rows]

    def counts(self) -> QueueCounts:
        marks = ", ".join("?" * len(_WAITING))
        with self.db.read() as conn:
            by_status = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
            by_priority = dict(conn.execute(
                f"SELECT priority, COUNT(*) FROM jobs WHERE status IN ({marks}) GROUP BY priority", _WAITING).fetchall())
            by_model = dict(conn.execute(
                f"SELECT model, COUNT(*) FROM jobs WHERE status IN ({marks}) GROUP BY model", _WAITING).fetchall())
            by_tenant = dict(conn.execute("SELECT tenant, n FROM tenant_waiting WHERE n > 0").fetchall())
        return QueueCounts(by_status, by_priority, by_model, by_tenant)

    @_repairing
    def statuses(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self.db.read() as conn:
            return dict(conn.execute(f"SELECT job_id, status FROM jobs WHERE job_id IN ({marks})", ids).fetchall())

    # --- jobs: the scheduler's transitions ---------------------------------------------------------
    @_repairing
    def take_new(self, limit: int = 1000, epoch: int | None = None) -> list[JobDoc]:
        with self.db.read() as conn:      # a read first: most passes find nothing new to take
            if conn.execute("SELECT 1 FROM jobs WHERE status = ? LIMIT 1", (PENDING,)).fetchone() is None:
                return []
        with self.db.write() as conn:
            rows = conn.execute(
                "UPDATE jobs SET status = ?, held_epoch = ? WHERE job_id IN (SELECT job_id FROM jobs "
                "WHERE status = ? ORDER BY submitted_at LIMIT ?) "
                "RETURNING job_id, model, priority, rank, submitted_at, tenant, "
                "CASE WHEN json_valid(doc) THEN json_extract(doc, '$.share') END AS share",
                (QUEUED, epoch, PENDING, limit)).fetchall()
        taken = []
        for row in rows:
            job = dict(row)
            job["share"] = _share(job.get("share"))
            taken.append(cast(JobDoc, job))
        return sorted(taken, key=lambda j: j["submitted_at"])

    def release_taken(self, job_ids: list[str] | None = None, *, held_before: int | None = None) -> int:
        where: list[str] = ["status = ?"]
        args: list[object] = [QUEUED]
        if job_ids is not None:
            where.append(f"job_id IN ({', '.join('?' * len(job_ids))})")
            args.extend(job_ids)
        if held_before is not None:
            where.append("(held_epoch IS NULL OR held_epoch < ?)")
            args.append(held_before)
        with self.db.write() as conn:
            return conn.execute(f"UPDATE jobs SET status = ?, held_epoch = NULL WHERE {' AND '.join(where)}",
                                (PENDING, *args)).rowcount

    @_repairing
    def claim(self, job_id: str, run_id: str, fields: dict[str, Any], epoch: int | None = None) -> JobDoc | None:
        patch = dumps({**fields, **({"epoch": epoch} if epoch is not None else {})})
        fence = "" if epoch is None else " AND ? = (SELECT epoch FROM leases WHERE name = ?)"
        with self.db.write() as conn:
            row = conn.execute(
                "UPDATE jobs SET status = ?, run_id = ?, doc = json_set(json_patch(doc, ?), '$.attempts', "
                "coalesce(json_extract(doc, '$.attempts'), 0) + (status = ?)) "
                f"WHERE job_id = ? AND (status = ? OR (status = ? AND run_id = ?)){fence} RETURNING *",
                (RUNNING, run_id, patch, QUEUED, job_id, QUEUED, RUNNING, run_id,
                 *(() if epoch is None else (epoch, SCHEDULER_LEASE)))).fetchone()
            if row is None and epoch is not None and self.lease_epoch(conn, SCHEDULER_LEASE) != epoch:
                raise Fenced(f"epoch {epoch} is no longer the scheduler lease's")
        return _row_to_job(row) if row else None

    @_repairing
    def finish(self, job_id: str, run_id: str, status: str, fields: dict[str, Any],
               ledger: dict[str, Any] | None = None) -> bool:
        _, doc = _split(fields)
        with self.db.write() as conn:
            done = conn.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status = ? AND run_id = ?",
                (status, fields.get("completed_at"), dumps(doc), job_id, RUNNING, run_id)).rowcount == 1
            if done and ledger is not None:
                insert_metrics(conn, ledger)
            return done or self._already(conn, job_id, "status = ? AND run_id = ?", (status, run_id))

    @_repairing
    def requeue(self, job_id: str, run_id: str, fields: dict[str, Any]) -> bool:
        return self._back_to_waiting(job_id, run_id, fields)

    def _back_to_waiting(self, job_id: str, run_id: str, fields: dict[str, Any]) -> bool:
        with self.db.write() as conn:
            done = conn.execute(
                "UPDATE jobs SET status = ?, run_id = NULL, doc = json_patch(doc, ?) "
                "WHERE job_id = ? AND status = ? AND run_id = ?",
                (PENDING, dumps({**fields, "last_run_id": run_id}), job_id, RUNNING, run_id)).rowcount == 1
            marks = ", ".join("?" * len(_WAITING))
            return done or self._already(conn, job_id, f"status IN ({marks}) AND json_extract(doc, '$.last_run_id') = ?",
                                         (*_WAITING, run_id))

    @staticmethod
    def _already(conn: sqlite3.Connection, job_id: str, condition: str, args: tuple) -> bool:
        """Was the transition applied already (a retry after a lost answer)?"""
        return conn.execute(f"SELECT 1 FROM jobs WHERE job_id = ? AND {condition}", (job_id, *args)).fetchone() is not None

    @_repairing
    def running_runs(self) -> list[JobDoc]:
        with self.db.read() as conn:
            rows = conn.execute(
                "SELECT job_id, model, run_id, tenant, json_extract(doc, '$.epoch') AS epoch, json_extract(doc, '$.owner') AS "
                "owner, json_extract(doc, '$.started_at') AS started_at, json_extract(doc, '$.timeout_s') AS timeout_s, "
                "json_extract(doc, '$.attempts') AS attempts FROM jobs WHERE status = ?", (RUNNING,)).fetchall()
        return [cast(JobDoc, dict(r)) for r in rows]

    def recover_run(self, job_id: str, run_id: str, requeue: bool, fields: dict[str, Any],
                    ledger: dict[str, Any] | None = None) -> bool:
        if requeue:
            return self._back_to_waiting(job_id, run_id, fields)
        return self.finish(job_id, run_id, FAILED, fields, ledger)

    @_repairing
    def fail_waiting(self, job_id: str, fields: dict[str, Any]) -> bool:
        _, doc = _split(fields)
        marks = ", ".join("?" * len(_WAITING))
        with self.db.write() as conn:
            return conn.execute(
                f"UPDATE jobs SET status = ?, completed_at = ?, doc = json_patch(doc, ?) "
                f"WHERE job_id = ? AND status IN ({marks})",
                (FAILED, fields.get("completed_at"), dumps(doc), job_id, *_WAITING)).rowcount == 1

    @_repairing
    def cancel(self, job_id: str, fields: dict[str, Any]) -> CancelOutcome:
        _, doc = _split(fields)
        with self.db.write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
            if row is None:
                return CancelOutcome(found=False)
            previous = row["status"]
            if previous in _FINISHED:
                return CancelOutcome(found=True, previous=previous)
            conn.execute("UPDATE jobs SET status = ?, completed_at = ?, doc = json_patch(doc, ?) WHERE job_id = ?",
                         (CANCELLED, fields.get("completed_at"), dumps(doc), job_id))
        return CancelOutcome(found=True, previous=previous, cancelled=True)

    def purge_finished(self, before: float) -> int:
        marks = ", ".join("?" * len(_FINISHED))
        with self.db.write() as conn:
            return conn.execute(f"DELETE FROM jobs WHERE completed_at < ? AND status IN ({marks})",
                                (before, *_FINISHED)).rowcount

    def close(self) -> None:
        self.db.close()


def _share(text: str | None) -> dict[str, Any]:
    """A job's fair-share fields as stored (none in a job stored before there were any)."""
    try:
        share = json.loads(text) if text else {}
    except ValueError:
        return {}
    return share if isinstance(share, dict) else {}
