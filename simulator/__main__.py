"""`python -m simulator --vram-gb 24`: serve the GPU simulator on its own."""
from __future__ import annotations

import argparse

from runtime_launcher import serve
from simulator.server import Simulator, create_sim_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11435)
    parser.add_argument("--vram-gb", type=float, default=24.0, help="memory of the virtual GPU")
    parser.add_argument("--load-gbps", type=float, default=2.0, help="load bandwidth, GB/s")
    parser.add_argument("--tokens-per-s", type=float, default=400.0,
                        help="aggregate generation throughput with one job running")
    parser.add_argument("--batch-gain", type=float, default=0.25,
                        help="throughput with n jobs = tokens-per-s x (1 + gain x log2 n)")
    parser.add_argument("--default-tokens", type=int, default=64,
                        help="tokens per answer when a request does not set num_predict")
    parser.add_argument("--ready-file", help="write the bound port here once listening")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.vram_gb <= 0 or args.load_gbps <= 0 or args.tokens_per_s <= 0:
        parser.error("--vram-gb, --load-gbps and --tokens-per-s must be positive")
    sim = Simulator(vram_gb=args.vram_gb, load_gbps=args.load_gbps, tokens_per_s=args.tokens_per_s,
                    batch_gain=args.batch_gain, default_tokens=args.default_tokens)
    serve(create_sim_app(sim), args.host, args.port, args.ready_file, args.parent_pid)


if __name__ == "__main__":
    main()
