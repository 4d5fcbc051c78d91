"""Build the comparison's token dir: a token dir's valid rows plus the first N test items of another corpus.

Run from the repo root:
  python docs/results/reader_40h/eval_dir.py runs/tok40h data/synth2h/manifest.test.jsonl runs/tok_eval96 --n 96
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from slm.lm_data import INDEX, read_jsonl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("tokens", help="token dir holding every item (`slm codec tokenize`)")
    ap.add_argument("test_manifest", help="manifest whose first N items are the test split")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=96)
    args = ap.parse_args()
    src = Path(args.tokens)
    rows = {r["id"]: r for r in read_jsonl(src / INDEX)}
    ids = [r["id"] for r in read_jsonl(args.test_manifest)][: args.n]
    missing = [i for i in ids if i not in rows]
    if missing:
        raise SystemExit(f"{len(missing)} test items are not in {src} (first: {missing[0]})")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "items").exists():
        (out / "items").symlink_to((src / "items").resolve())
    keep = [r for r in rows.values() if r["split"] == "valid"] + [{**rows[i], "split": "test"} for i in ids]
    (out / INDEX).write_text("".join(json.dumps(r) + "\n" for r in keep))
    print(f"{out}: {len(keep) - len(ids)} valid + {len(ids)} test items")


if __name__ == "__main__":
    main()
