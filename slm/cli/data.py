"""`slm data ...`: build the synthetic phone-aligned corpus and the real-speech validation set."""
from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="build speech data sets (synthetic corpus, real-speech set)")
    sub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND")
    s = sub.add_parser("synth", help="synthesise a multi-speaker, phone-aligned English corpus (resumable)")
    s.add_argument("--hours", type=float, required=True, help="target hours of audio")
    s.add_argument("--out", required=True, help="output directory (manifest.jsonl, wavs/, summary.json)")
    s.add_argument("--seed", type=int, default=0, help="plan seed: same seed + hours = same corpus")
    s.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    s.set_defaults(func=_synth)
    r = sub.add_parser("real", help="build the real-speech set from the Debian asterisk prompts")
    r.add_argument("--out", required=True, help="output directory (manifest.jsonl, wavs/)")
    r.set_defaults(func=_real)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _synth(args: argparse.Namespace) -> int:
    from adapters.corpus.build import build_corpus

    summary = build_corpus(args.out, hours=args.hours, seed=args.seed, workers=args.workers)
    print(json.dumps({k: v for k, v in summary.items() if k != "failure_examples"}, indent=2))
    return 0


def _real(args: argparse.Namespace) -> int:
    from adapters.real import build_real_set

    summary = build_real_set(args.out)
    print(json.dumps(summary, indent=2))
    return 0
