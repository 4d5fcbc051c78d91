"""A length bonus for the best-of choice, fitted on one split and scored on another.

Reads two outputs of ``selection.py`` (every candidate's reader log p, frames and judge transcript) and scores the
rule ``argmax(reader log p + bonus * frames)`` among the first k candidates: the bonus is chosen on the first file
(valid items) for each k, then the WER of that choice is computed on the second (the card's test items).

    python docs/results/tts_best_of/length_bonus.py selection_valid.json selection_test.json [--out FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

BONUSES = [0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 1e6]  # 1e6: the longest candidate


def wer(rows: list[dict], k: int, bonus: float) -> tuple[float, float]:
    from adapters.judges import error_rates

    refs, hyps = [], []
    for r in rows:
        cs = r["cands"][:k]
        best = max(range(len(cs)), key=lambda i: cs[i]["reader"] + bonus * cs[i]["frames"])
        refs.append(r["text"])
        hyps.append(cs[best]["hyp"])
    e = error_rates(refs, hyps)
    return e.wer, e.cer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fit")
    ap.add_argument("score")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    fit, score = (json.loads(Path(p).read_text())["rows"] for p in (args.fit, args.score))
    ks = [k for k in (2, 4, 8) if k <= min(len(fit[0]["cands"]), len(score[0]["cands"]))]
    out = {}
    print("| k | bonus chosen on fit (its WER) | score WER / CER: reader | + bonus | longest |")
    print("|---|---|---|---|---|")
    for k in ks:
        grid = {b: wer(fit, k, b) for b in BONUSES}
        b = min(BONUSES, key=lambda x: (grid[x][0], x))
        row = {"bonus": b, "fit_wer": grid, "reader": wer(score, k, 0.0), "bonus_rule": wer(score, k, b),
               "longest": wer(score, k, 1e6)}
        out[k] = row
        print(f"| {k} | {b:g} ({grid[b][0]:.3f}; reader alone {grid[0.0][0]:.3f}) | "
              f"{row['reader'][0]:.3f} / {row['reader'][1]:.3f} | {row['bonus_rule'][0]:.3f} / {row['bonus_rule'][1]:.3f} | "
              f"{row['longest'][0]:.3f} / {row['longest'][1]:.3f} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
