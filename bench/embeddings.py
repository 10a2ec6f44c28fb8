"""Embeddings per second through Model Manager against the embedded runtime straight.

    python bench/embeddings.py [--rounds 5] [--single 40] [--batches 4] [--json]

all-minilm (the numpy BERT encoder, one thread) behind two doors at once: the manager's
`POST /api/embed` (HTTP, queue, scheduler, the runtime) and the same route of an embedded runtime
of its own (HTTP and the runner). Each round sends `--single` requests of one sentence, then
`--batches` requests of 32 sentences, through one door and then the other (which goes first
alternates), so drift on a shared machine hits both alike. embeddings/s = inputs / wall-clock
seconds of the requests, one client at a time. The manager's cost per embed job is the
difference of the mean request times. Target: manager / straight >= 0.9 for batches of 32 (the
manager's fixed cost per job is spread over 32 inputs); for one input a request, the ratio says
what the queue costs an embedding pipeline that does not batch.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import ROOT, Service, emit_json, machine, table
from embedded_runtime.catalog import CATALOG, is_installed
from runtime.launcher import ManagedRuntime

MODEL = "all-minilm"
SENTENCES = [f"Document {i}: the scheduler loads and unloads models within the memory budget, "
             f"and every job's cost goes to the ledger ({i * 7 % 13} of 13)." for i in range(64)]


def timed(url: str, inputs: list[str]) -> float:
    started = time.perf_counter()
    r = requests.post(url + "/api/embed", json={"model": MODEL, "input": inputs}, timeout=300)
    elapsed = time.perf_counter() - started
    if r.status_code != 200 or len(r.json()["embeddings"]) != len(inputs):
        raise RuntimeError(f"{url}: {r.status_code} {r.text[:200]}")
    return elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--single", type=int, default=40, help="one-sentence requests per round and door")
    parser.add_argument("--batches", type=int, default=4, help="32-sentence requests per round and door")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not is_installed(CATALOG[MODEL]):
        print(f"install first: {CATALOG[MODEL].install_command}", file=sys.stderr)
        return 2
    cache = ROOT / ".cache" / "models"
    logs = Path(tempfile.mkdtemp(prefix="mm-bench-embed-"))
    straight = ManagedRuntime("embedded", "embedded_runtime", ["--cache-dir", str(cache), "--log-dir", str(logs),
                                                               "--threads", "1"], logs / "runtime.log")
    seconds = {(door, mode): 0.0 for door in ("manager", "straight") for mode in ("single", "batch32")}
    inputs = {"single": 0, "batch32": 0}
    env = {"EMBEDDED_MODEL_CACHE": str(cache), "EMBEDDED_THREADS": "1"}
    try:
        with Service(["--backend", "embedded"], env) as service:
            doors = {"manager": service.url, "straight": straight.start()}
            for url in doors.values():                       # load the model behind both doors
                timed(url, SENTENCES[:2])
            for round_ in range(args.rounds):
                order = list(doors.items()) if round_ % 2 == 0 else list(doors.items())[::-1]
                for door, url in order:
                    for i in range(args.single):
                        seconds[door, "single"] += timed(url, [SENTENCES[i % len(SENTENCES)]])
                    for i in range(args.batches):
                        seconds[door, "batch32"] += timed(url, SENTENCES[(i % 2) * 32:(i % 2) * 32 + 32])
            inputs = {"single": args.rounds * args.single, "batch32": args.rounds * args.batches * 32}
    finally:
        straight.stop()
    requests_made = {"single": args.rounds * args.single, "batch32": args.rounds * args.batches}
    results, rows = {}, []
    for mode in ("single", "batch32"):
        manager_rate = inputs[mode] / seconds["manager", mode]
        straight_rate = inputs[mode] / seconds["straight", mode]
        added_ms = (seconds["manager", mode] - seconds["straight", mode]) / requests_made[mode] * 1000
        results[mode] = {"manager_embeddings_per_s": round(manager_rate, 1),
                         "straight_embeddings_per_s": round(straight_rate, 1),
                         "ratio": round(manager_rate / straight_rate, 3), "manager_added_ms_per_job": round(added_ms, 2)}
        rows.append([mode, manager_rate, straight_rate, manager_rate / straight_rate, added_ms])
    print(f"all-minilm, one thread, {args.rounds} rounds; one client at a time; "
          f"{requests_made['single']} one-sentence and {requests_made['batch32']} 32-sentence requests per door")
    print(table(rows, ["inputs per request", "manager emb/s", "straight emb/s", "ratio", "manager added ms/job"]))
    print(f"batches of 32: ratio {results['batch32']['ratio']:.3f} (target >= 0.9)")
    emit_json(args.json, {**results, "rounds": args.rounds, "machine": machine()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
