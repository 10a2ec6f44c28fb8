"""What Model Manager adds to a request: the same requests through the manager and straight to
the runtime, measured side by side in one run.

    python bench/overhead.py [--requests 300] [--json]

1. The GPU simulator with zero-time inference (so that only the path is measured): latency of
   one request at a time, alternating paths (added p50/p99 = manager - direct), then throughput
   with several clients at once (manager / direct).
2. The embedded runtime with smollm2:135m (real inference, 16 tokens): the same, fewer requests.

Through the manager a request is `POST /api/submit?wait=30` (accept, store, schedule, run,
record, answer in one call), or through its front door for Ollama's clients, the manager's own
`POST /api/generate` with `"stream": false` (`front_door_added_*`); straight to the runtime it
is `POST /api/generate` with `"stream": false`. Prompts differ between the paths ("request m<i>",
"request f<i>", "request d<i>") so that none reuses another's prompt cache in llama.cpp.
Targets (simulator): p50 added <= 2 ms, throughput ratio >= 0.95.
"""
from __future__ import annotations

import argparse
import sys
import threading
import time

import requests

from bench.common import ROOT, Service, emit_json, machine, percentile, table  # noqa: E402
from embedded_runtime.catalog import CATALOG, is_installed  # noqa: E402


class Paths:
    def __init__(self, manager_url: str, runtime_url: str, model: str, tokens: int):
        self.manager_url = manager_url
        self.runtime_url = runtime_url
        self.model = model
        self.options = {"num_predict": tokens, "temperature": 0}
        self._local = threading.local()

    def session(self) -> requests.Session:
        s = getattr(self._local, "s", None)
        if s is None:
            s = self._local.s = requests.Session()
            s.trust_env = False
        return s

    def manager(self, i: int) -> float:
        t0 = time.perf_counter()
        r = self.session().post(self.manager_url + "/api/submit", params={"wait": 30},
                                json={"model": self.model, "prompt": f"request m{i}", "options": self.options})
        elapsed = time.perf_counter() - t0
        if r.status_code != 200 or r.json()["status"] != "complete":
            raise RuntimeError(f"manager request failed: {r.status_code} {r.text[:200]}")
        return elapsed

    def front_door(self, i: int) -> float:
        t0 = time.perf_counter()
        r = self.session().post(self.manager_url + "/api/generate",
                                json={"model": self.model, "prompt": f"request f{i}", "options": self.options,
                                      "stream": False})
        elapsed = time.perf_counter() - t0
        if r.status_code != 200 or not r.json().get("done"):
            raise RuntimeError(f"front door request failed: {r.status_code} {r.text[:200]}")
        return elapsed

    def direct(self, i: int) -> float:
        t0 = time.perf_counter()
        r = self.session().post(self.runtime_url + "/api/generate",
                                json={"model": self.model, "prompt": f"request d{i}", "options": self.options,
                                      "stream": False})
        elapsed = time.perf_counter() - t0
        if r.status_code != 200 or not r.json().get("done"):
            raise RuntimeError(f"direct request failed: {r.status_code} {r.text[:200]}")
        return elapsed


def latency(paths: Paths, n: int) -> dict:
    manager, front, direct = [], [], []
    for i in range(n):                          # alternate, so that drift hits every path alike
        manager.append(paths.manager(i) * 1000)
        front.append(paths.front_door(i) * 1000)
        direct.append(paths.direct(i) * 1000)
    out = {}
    for q, name in ((0.5, "p50"), (0.99, "p99")):
        out[f"manager_{name}_ms"] = round(percentile(manager, q), 3)
        out[f"front_door_{name}_ms"] = round(percentile(front, q), 3)
        out[f"direct_{name}_ms"] = round(percentile(direct, q), 3)
        out[f"added_{name}_ms"] = round(percentile(manager, q) - percentile(direct, q), 3)
        out[f"front_door_added_{name}_ms"] = round(percentile(front, q) - percentile(direct, q), 3)
    return out


def throughput(call, n: int, clients: int) -> float:
    counter = iter(range(n))
    lock = threading.Lock()

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            call(i)
    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return n / (time.perf_counter() - t0)


def measure(paths: Paths, requests_n: int, clients: int) -> dict:
    for i in range(5):                          # warm up: load the model, fill connection pools
        paths.manager(i)
        paths.front_door(i)
        paths.direct(i)
    out = latency(paths, requests_n)
    m_tput = throughput(paths.manager, requests_n, clients)
    d_tput = throughput(paths.direct, requests_n, clients)
    out.update(manager_per_s=round(m_tput, 2), direct_per_s=round(d_tput, 2),
               throughput_ratio=round(m_tput / d_tput, 4), clients=clients, requests=requests_n)
    return out


def runtime_url(manager_url: str) -> str:
    return requests.get(manager_url + "/api/stats", timeout=5).json()["runtime"]["url"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300, help="simulator requests per path")
    parser.add_argument("--embedded-requests", type=int, default=30, help="0 leaves the embedded runtime out")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    results = {}
    # Both paths meet the same runtime: as many slots per model as there are clients, so that the
    # manager may keep as many requests in flight as the clients send straight to it.
    # The simulator's energy counter is an HTTP request to it (NVML's is a library call): read at
    # every job's start and end it would add two simulator round trips to the manager's path.
    sim_env = {"SIM_TOKENS_PER_S": "1e12", "SIM_LOAD_GBPS": "1000", "SIM_DEFAULT_TOKENS": "1",
               "SIM_NUM_PARALLEL": str(args.clients), "SIM_ENERGY_COUNTER": "false"}
    with Service(["--backend", "sim"], sim_env) as service:
        results["sim"] = measure(Paths(service.url, runtime_url(service.url), "qwen2.5:0.5b", 1),
                                 args.requests, args.clients)
    if args.embedded_requests <= 0:
        pass
    elif is_installed(CATALOG["smollm2:135m"]):
        env = {"EMBEDDED_MODEL_CACHE": str(ROOT / ".cache" / "models")}
        with Service(["--backend", "embedded"], env) as service:
            results["embedded"] = measure(Paths(service.url, runtime_url(service.url), "smollm2:135m", 16),
                                          args.embedded_requests, 2)
            sampler = requests.get(service.url + "/api/stats", timeout=5).json()["scheduler"]["sampler"]
            results["embedded"]["sampler_cpu_pct_of_core"] = sampler["cpu_pct_of_core"]
    else:
        print('embedded runtime skipped: make models MODELS="smollm2:135m"', file=sys.stderr)
    rows = [[name, r["direct_p50_ms"], r["manager_p50_ms"], r["added_p50_ms"], r["added_p99_ms"],
             r["front_door_added_p50_ms"], r["front_door_added_p99_ms"], r["direct_per_s"],
             r["manager_per_s"], r["throughput_ratio"]] for name, r in results.items()]
    print(table(rows, ["runtime", "direct p50 ms", "manager p50 ms", "added p50 ms", "added p99 ms",
                       "front door added p50 ms", "p99 ms", "direct req/s", "manager req/s", "ratio"]))
    sim = results["sim"]
    print(f"simulator: added p50 {sim['added_p50_ms']} ms through /api/submit, {sim['front_door_added_p50_ms']} ms "
          f"through /api/generate (target <= 2), throughput ratio {sim['throughput_ratio']} (target >= 0.95), "
          f"{sim['clients']} clients")
    summary = {"added_p50_ms": sim["added_p50_ms"], "added_p99_ms": sim["added_p99_ms"],
               "front_door_added_p50_ms": sim["front_door_added_p50_ms"],
               "front_door_added_p99_ms": sim["front_door_added_p99_ms"],
               "throughput_ratio": sim["throughput_ratio"], "sim": sim, "machine": machine()}
    if "embedded" in results:
        e = results["embedded"]
        print(f"embedded: per-job resource sampling used {e['sampler_cpu_pct_of_core']}% of one core")
        summary.update(embedded_added_p50_ms=e["added_p50_ms"], embedded_added_p99_ms=e["added_p99_ms"],
                       embedded_throughput_ratio=e["throughput_ratio"], embedded=e)
    emit_json(args.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
