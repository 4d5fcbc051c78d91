"""`slm` command line: one sub-command module per capability.

Each module in ``COMMAND_MODULES`` exposes ``register(subparsers)``; it adds its parser(s) and sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning an exit code. Heavy
imports (torch, transformers, ...) happen inside those callables so that ``slm --help`` is instant.
A sub-command is listed here only once its capability works.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

COMMAND_MODULES: list[str] = [
    "slm.cli.data",
    "slm.cli.demo",
    "slm.cli.codec",
    "slm.cli.eval",
    "slm.cli.recipe",
    "slm.cli.lm",
]


INT8_HELP = ("decoding weights on CPU (faster, approximate; README 'TTS speed on CPU'): --int8 (or --int8 weights): "
             "int8 weights; --int8 w8a8: int8 activations too on qkv and gate/up (1.1-1.4x faster with best-of-N, "
             "TTS WER within noise of int8 weights: docs/results/int8_w8a8); "
             "--no-int8: fp32")


def add_int8_flag(parser: argparse.ArgumentParser, default=None, help: str = INT8_HELP + "; default: the model "
                  "dir's own setting (slm_config.json \"int8\")") -> None:
    """``--int8 [weights|w8a8]`` and ``--no-int8`` into ``args.int8``: "weights" (the flag alone), "w8a8", False,
    or ``default`` (None: the model dir's own setting); what ``slm.generate.int8_mode`` reads."""
    parser.add_argument("--int8", nargs="?", const="weights", choices=("weights", "w8a8"), default=default,
                        metavar="{weights,w8a8}", help=help)
    parser.add_argument("--no-int8", dest="int8", action="store_const", const=False,
                        help="fp32 weights, whatever the model dir's own setting")


def seed_arg(value: str) -> int:
    """argparse type: a sampling seed, a whole number in 0..2**63-1 (checked before any model loads)."""
    from slm import check_seed

    try:
        return check_seed(int(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e) if value.strip().lstrip("+-").isdigit()
                                         else f"expected a whole number, got {value!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slm", description="dualstream-slm: dual-stream speech codecs + speech LMs")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: all cores, or $SLM_THREADS)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from codec.runtime import set_threads

    threads = args.threads
    if threads is None:
        env = os.environ.get("SLM_THREADS", "").strip() or "0"
        if not env.isdigit():
            parser.error(f"SLM_THREADS must be a whole number of threads (0: all cores), got {env!r}")
        threads = int(env)
    if threads < 0:
        parser.error(f"--threads must be >= 0 (0: all cores), got {threads}")
    set_threads(threads or None)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get("SLM_DEBUG"):
            raise
        print(f"slm {args.command}: error: {_message(e)}\n(set SLM_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


# Errors that say what was wrong with the user's input (bad audio or text, a missing file, a model dir of the
# wrong kind): one line on stderr and exit code 2, as argparse does for bad arguments. Anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    return str(e) or type(e).__name__


if __name__ == "__main__":
    raise SystemExit(main())
