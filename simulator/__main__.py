"""`python -m simulator --vram-gb 24`: serve the GPU simulator on its own."""
from __future__ import annotations

import argparse

from config import Config
from runtime.launcher import serve
from scheduling.gpu_placement import GpuSplit
from simulator.server import Simulator, create_sim_app


def main(argv: list[str] | None = None) -> None:
    config = Config()        # the defaults are the service's SIM_* settings (environment and .env)
    parser = argparse.ArgumentParser(prog="python -m simulator", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11435)
    parser.add_argument("--vram-gb", type=float, default=config.SIM_VRAM_GB, help="memory of the virtual GPU")
    parser.add_argument("--load-gbps", type=float, default=config.SIM_LOAD_GBPS, help="load bandwidth, GB/s")
    parser.add_argument("--tokens-per-s", type=float, default=config.SIM_TOKENS_PER_S,
                        help="aggregate generation throughput with one job running")
    parser.add_argument("--batch-gain", type=float, default=config.SIM_BATCH_GAIN,
                        help="throughput with n jobs = tokens-per-s x (1 + gain x log2 n)")
    parser.add_argument("--default-tokens", type=int, default=config.SIM_DEFAULT_TOKENS,
                        help="tokens per answer when a request does not set num_predict")
    parser.add_argument("--num-parallel", type=int, default=config.SIM_NUM_PARALLEL,
                        help="slots per model, like OLLAMA_NUM_PARALLEL (embedding-only models get 1)")
    parser.add_argument("--max-queue", type=int, default=config.SIM_MAX_QUEUE,
                        help="requests that may wait for a slot before 503, like OLLAMA_MAX_QUEUE")
    parser.add_argument("--num-ctx", type=int, default=config.NUM_CTX,
                        help="context of a model loaded by a request without options.num_ctx")
    parser.add_argument("--idle-watts", type=float, default=60.0, help="simulated power when idle")
    parser.add_argument("--busy-watts", type=float, default=300.0, help="simulated power while generating")
    parser.add_argument("--gpus", type=int, default=config.SIM_GPUS_PER_NODE, help="GPUs sharing --vram-gb evenly")
    parser.add_argument("--gpu-split", choices=["ollama", "spread", "single"], default=config.GPU_SPLIT,
                        help="how a model is placed over the GPUs (gpu_placement)")
    parser.add_argument("--ready-file", help="write the bound port here once listening")
    parser.add_argument("--parent-pid", type=int, default=0, help="exit when this process is gone")
    args = parser.parse_args(argv)
    if args.vram_gb <= 0 or args.load_gbps <= 0 or args.tokens_per_s <= 0:
        parser.error("--vram-gb, --load-gbps and --tokens-per-s must be positive")
    if args.num_parallel < 1 or args.max_queue < 1:
        parser.error("--num-parallel and --max-queue must be at least 1")
    if not 1 <= args.gpus <= 16:
        parser.error("--gpus must be 1 to 16")
    if args.num_ctx < 64:
        parser.error("--num-ctx must be at least 64")
    if args.idle_watts < 0 or args.busy_watts < args.idle_watts:
        parser.error("--idle-watts must be >= 0 and --busy-watts >= --idle-watts")
    sim = Simulator(vram_gb=args.vram_gb, load_gbps=args.load_gbps, tokens_per_s=args.tokens_per_s,
                    batch_gain=args.batch_gain, default_tokens=args.default_tokens,
                    num_parallel=args.num_parallel, max_queue=args.max_queue, num_ctx=args.num_ctx,
                    idle_watts=args.idle_watts, busy_watts=args.busy_watts, gpus=args.gpus,
                    gpu_split=GpuSplit(args.gpu_split))
    serve(create_sim_app(sim), args.host, args.port, args.ready_file, args.parent_pid)


if __name__ == "__main__":
    main()
