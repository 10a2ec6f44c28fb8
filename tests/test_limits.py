"""Limits that hold under abuse: a body over MAX_PROMPT_BYTES is refused before it is read, under
`main.py` (waitress) and under gunicorn, chunked or not; long polls are capped per process so that
the service always answers; listings page with a cursor and bound their size; a retried
submission with the same Idempotency-Key makes no second job; the log file rotates."""
import json
import logging
import socket
import threading
import time

import pytest
import requests

from helpers import gunicorn_server, wait_until
from telemetry.logs import get_logger, setup_logging

MODEL = "qwen2.5:0.5b"


def send_chunked_until_answered(port: int, total: int = 5_000_000) -> tuple[int, bytes]:
    """POST a chunked body of up to `total` bytes; stop as soon as the server answers.
    Returns (bytes sent, the answer's first bytes)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(b"POST /api/submit HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n")
    sock.settimeout(0.05)
    sent = 0
    try:
        while sent < total:
            chunk = b"a" * 65536
            try:
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            except OSError:
                break
            sent += len(chunk)
            try:
                answer = sock.recv(4096)
                if answer:
                    return sent, answer
            except TimeoutError:
                pass
        sock.settimeout(5)
        return sent, sock.recv(4096)
    finally:
        sock.close()


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read_under_main(main_process):
    proc = main_process(MAX_PROMPT_BYTES=1000)
    sent, answer = send_chunked_until_answered(proc.port)
    assert answer.startswith(b"HTTP/1.1 413") and sent < 1_000_000
    big = requests.post(proc.url + "/api/submit", data=b"x" * 5000, headers={"Content-Type": "application/json"},
                        timeout=10)
    assert big.status_code == 413


@pytest.mark.slow
def test_a_chunked_body_over_the_limit_is_refused_before_it_is_read_under_gunicorn(tmp_path):
    with gunicorn_server(tmp_path, {"BACKEND": "sim", "MAX_PROMPT_BYTES": "1000"}) as (url, _):
        sent, answer = send_chunked_until_answered(int(url.rsplit(":", 1)[1]))
        assert answer.startswith(b"HTTP/1.1 413") and sent < 1_000_000
        assert b"MAX_PROMPT_BYTES" in answer or b"application/json" in answer


def test_long_polls_are_capped_so_the_service_keeps_answering(running_service):
    service, client = running_service(MAX_WAITERS=2)
    service.stop()                                        # nothing will run the job: polls wait in full
    r = client.post("/api/submit", data=json.dumps({"model": MODEL, "prompt": "wait"}), content_type="application/json")
    job_id = r.get_json()["job_id"]
    waited = []

    def poll():
        started = time.monotonic()
        client.get(f"/api/job/{job_id}?wait=3")
        waited.append(time.monotonic() - started)
    holders = [threading.Thread(target=poll) for _ in range(2)]
    for t in holders:
        t.start()
    wait_until(lambda: service.completions.waiting == 2, message="two long polls to hold")
    started = time.monotonic()
    third = client.get(f"/api/job/{job_id}?wait=3")
    assert third.status_code == 200 and third.get_json()["status"] in ("pending", "queued")
    assert time.monotonic() - started < 1.0               # over MAX_WAITERS: the job as it is, at once
    assert client.get("/api/ping").status_code == 200
    assert client.get("/api/stats").get_json()["api"] == {"long_polls": 2, "max_waiters": 2}
    for t in holders:
        t.join()
    assert min(waited) > 2.5


def test_listings_page_with_a_cursor_and_stay_small(running_service):
    service, client = running_service(MAX_PAGE_BYTES=20_000)
    service.stop()
    big = {"notes": "x" * 10_000}                         # more than a listing shows
    ids = []
    for i in range(25):
        r = client.post("/api/submit", data=json.dumps({"model": MODEL, "prompt": f"p{i}", "metadata": big}),
                        content_type="application/json")
        ids.append(r.get_json()["job_id"])
    first = client.get("/api/jobs?limit=10").get_json()
    assert first["count"] == 10 and first["next_cursor"]
    assert first["jobs"][0]["metadata"] == {"truncated": True, "bytes": len(json.dumps(big))}
    seen, cursor = [j["job_id"] for j in first["jobs"]], first["next_cursor"]
    while cursor:
        page = client.get(f"/api/jobs?limit=10&cursor={cursor}").get_json()
        assert len(json.dumps(page)) < 25_000
        seen += [j["job_id"] for j in page["jobs"]]
        cursor = page["next_cursor"]
    assert sorted(seen) == sorted(ids) and len(seen) == 25
    assert client.get(f"/api/job/{ids[0]}").get_json()["metadata"] == big      # whole on the job itself
    assert client.get("/api/jobs?cursor=not-a-cursor").status_code == 400


def test_the_same_idempotency_key_returns_the_same_job(running_service):
    service, client = running_service()
    service.stop()
    body = json.dumps({"model": MODEL, "prompt": "once"})
    first = client.post("/api/submit", data=body, content_type="application/json", headers={"Idempotency-Key": "k1"})
    again = client.post("/api/submit", data=body, content_type="application/json", headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202
    assert again.get_json()["job_id"] == first.get_json()["job_id"] and again.get_json()["idempotent_replay"]
    other = client.post("/api/submit", data=json.dumps({"model": MODEL, "prompt": "another"}),
                        content_type="application/json", headers={"Idempotency-Key": "k1"})
    assert other.status_code == 422 and other.get_json()["field"] == "Idempotency-Key"
    assert client.post("/api/submit", data=body, content_type="application/json",
                       headers={"Idempotency-Key": " "}).status_code == 400
    assert client.get("/api/stats").get_json()["queue"]["total_jobs"] == 1


def test_the_log_file_rotates(tmp_path):
    log_file = tmp_path / "mm.log"
    setup_logging(log_file, "INFO", stderr=False, max_bytes=2000, backups=2)
    try:
        log = get_logger("SYSTEM")
        for i in range(200):
            log.info("line %d %s", i, "x" * 40)
        files = sorted(p.name for p in tmp_path.iterdir())
        assert files == ["mm.log", "mm.log.1", "mm.log.2"]
        assert all(p.stat().st_size <= 2100 for p in tmp_path.iterdir())
    finally:
        root = logging.getLogger("model_manager")
        for handler in list(root.handlers):
            root.removeHandler(handler)
            handler.close()


def test_store_connections_of_threads_that_ended_are_closed(tmp_path):
    """Every scheduler term and job thread pool brings new threads; their SQLite connections
    (file handles and up to 2 MB of page cache each) must not outlive them. (Counted as
    connections, not file handles: SQLite's unix VFS may keep a closed connection's handle open
    for reuse while another connection of the process holds a lock on the file.)"""
    import sqlite3

    from store.sqlite_db import SqliteDB
    db = SqliteDB(tmp_path / "db.sqlite")
    used: list[sqlite3.Connection] = []

    def read_once():
        with db.read() as conn:
            conn.execute("SELECT COUNT(*) FROM jobs").fetchone()
            used.append(conn)

    read_once()
    for _ in range(3):
        threads = [threading.Thread(target=read_once) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    ended = used[1:]
    sweeper = threading.Thread(target=read_once)     # a new reader sweeps up the ended ones
    sweeper.start()
    sweeper.join()
    assert len({id(c) for c in ended}) == 30
    for conn in ended:
        with pytest.raises(sqlite3.ProgrammingError):    # closed
            conn.execute("SELECT 1")
    used[0].execute("SELECT 1")                          # the living thread's is not
    assert len(db._readers) <= 2
    db.close()
