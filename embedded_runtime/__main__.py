"""`python -m embedded_runtime`: serve the embedded runtime on its own (Ollama's API)."""
from __future__ import annotations

import argparse
import atexit
from pathlib import Path

from config import Config
from embedded_runtime.catalog import ModelFiles
from embedded_runtime.runners import RunnerPool
from embedded_runtime.server import create_embedded_app
from runtime.launcher import serve


def parse_args(argv: list[str] | None, config: Config) -> argparse.Namespace:
    """The runtime's arguments; their defaults are the service's settings (`config`)."""
    parser = argparse.ArgumentParser(prog="python -m embedded_runtime", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=11434)
    parser.add_argument("--cache-dir", default=str(config.model_cache_dir),
                        help="where chunked models are joined (EMBEDDED_MODEL_CACHE, default DATA_DIR/models)")
    parser.add_argument("--log-dir", default=str(config.DATA_DIR / "logs"), help="runners' own logs (llama.cpp is verbose)")
    parser.add_argument("--threads", type=int, default=config.EMBEDDED_THREADS, help="CPU threads per runner (EMBEDDED_THREADS)")
    parser.add_argument("--num-ctx", type=int, default=config.NUM_CTX, help="context length of each slot (NUM_CTX)")
    parser.add_argument("--parallel", type=int, default=1, help="requests a runner works on at once")
    parser.add_argument("--binding", default="xllamacpp")
    parser.add_argument("--prompt-cache-mib", type=int, default=config.EMBEDDED_PROMPT_CACHE_MIB,
                        help="host memory each runner may keep for llama.cpp's prompt cache (EMBEDDED_PROMPT_CACHE_MIB)")
    parser.add_argument("--ready-file")
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads < 1 or args.num_ctx < 64 or args.parallel < 1 or args.prompt_cache_mib < 0:
        parser.error("--threads and --parallel must be >= 1, --num-ctx >= 64, --prompt-cache-mib >= 0")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv, Config())      # the defaults: the service's settings (environment and .env)
    pool = RunnerPool(ModelFiles(Path(args.cache_dir)), Path(args.log_dir), args.threads, args.num_ctx,
                      args.parallel, args.binding, prompt_cache_mib=args.prompt_cache_mib)
    atexit.register(pool.close)
    serve(create_embedded_app(pool), args.host, args.port, args.ready_file, args.parent_pid)


if __name__ == "__main__":
    main()
