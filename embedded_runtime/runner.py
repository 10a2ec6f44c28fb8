"""One runner process per loaded model, as Ollama runs its runners.

    python -m embedded_runtime.runner --model-path M.gguf --socket /run/x.sock --parent-pid N

The runner loads the model, prints one line `READY` on stdout, and answers requests on a Unix
socket (multiprocessing.connection, authenticated by a key passed in the environment). Each
connection carries one request; pieces of text go back as they are generated, then a final
message. At most `--parallel` requests run at once, the others wait their turn in arrival order
(as in Ollama); a request whose client has gone away is dropped while it waits, and stops
generating as soon as a piece cannot be delivered.

Messages out: {"type": "piece", "text": ...}, {"type": "done", "answer": {...}},
{"type": "error", "status": int, "message": str}.
"""
from __future__ import annotations

import argparse
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict
from multiprocessing.connection import Connection, Listener

from embedded_runtime.binding import BindingError, LoadedModel, load
from runtime.launcher import exit_with_parent

AUTHKEY_ENV = "MM_RUNNER_AUTHKEY"
WAIT_POLL_S = 0.25


def _client_gone(conn: Connection) -> bool:
    """A client that closed its end makes the connection readable (EOF)."""
    try:
        return conn.poll(0)
    except (OSError, EOFError):
        return True


class SlotGate:
    """`slots` requests at a time, the waiting ones let in first come, first served.

    threading.Semaphore wakes any waiter, and one that polls with a timeout to notice a client
    gone goes to the back at every poll; Ollama serves waiting requests in arrival order, and a
    scheduler in front of it counts on that."""

    def __init__(self, slots: int):
        self._free = slots
        self._waiting: deque[object] = deque()
        self._cond = threading.Condition()

    def enter(self, client_gone: Callable[[], bool]) -> bool:
        """Wait for a slot in turn; False (and no slot) when `client_gone()` while waiting."""
        ticket = object()
        with self._cond:
            self._waiting.append(ticket)
            try:
                while self._free == 0 or self._waiting[0] is not ticket:
                    if client_gone():
                        return False
                    self._cond.wait(WAIT_POLL_S)
                self._free -= 1
                return True
            finally:
                self._waiting.remove(ticket)
                self._cond.notify_all()          # the next in line may go now, or be first in line

    def leave(self) -> None:
        with self._cond:
            self._free += 1
            self._cond.notify_all()


def serve_one(conn: Connection, model: LoadedModel, slots: SlotGate) -> None:
    try:
        request = conn.recv()
    except (EOFError, OSError):
        conn.close()
        return
    try:
        if not slots.enter(lambda: _client_gone(conn)):
            return
        try:
            def send_piece(text: str) -> bool:
                try:
                    conn.send({"type": "piece", "text": text})
                    return False
                except (OSError, EOFError, ValueError):
                    return True             # client gone: stop generating

            if request["op"] == "embed":
                conn.send({"type": "done", "answer": asdict(model.embed(request["request"]))})
                return
            on_piece = send_piece if request.get("stream") else None
            op = model.chat if request["op"] == "chat" else model.complete
            answer = op(request["request"], on_piece)
            conn.send({"type": "done", "answer": asdict(answer)})
        except BindingError as exc:
            conn.send({"type": "error", "status": exc.status, "message": str(exc)})
        except (ValueError, TypeError, KeyError) as exc:
            conn.send({"type": "error", "status": 400, "message": str(exc)})
        finally:
            slots.leave()
    except (OSError, EOFError):
        pass
    finally:
        conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embedded_runtime.runner")
    parser.add_argument("--model-path", required=True)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--binding", default="xllamacpp")
    parser.add_argument("--prompt-cache-mib", type=int, default=0)
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    exit_with_parent(args.parent_pid)
    authkey = os.environ.get(AUTHKEY_ENV, "").encode()
    try:
        model = load(args.model_path, args.ctx, args.threads, args.parallel, args.binding, args.prompt_cache_mib)
    except Exception as exc:
        print(f"FAILED {exc}", flush=True)
        return 1
    listener = Listener(args.socket, family="AF_UNIX", authkey=authkey)
    slots = SlotGate(args.parallel)
    print("READY", flush=True)
    while True:
        try:
            conn = listener.accept()
        except Exception as exc:   # a client that failed the handshake: refuse it, keep serving
            print(f"refused a connection: {exc}", file=sys.stderr, flush=True)
            continue
        threading.Thread(target=serve_one, args=(conn, model, slots), daemon=True).start()


if __name__ == "__main__":
    raise SystemExit(main())
