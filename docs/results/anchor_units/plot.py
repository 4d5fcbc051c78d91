"""Four 800-step sacodec 25 Hz runs that differ only in how the projector is anchored: mel L1, the anchor
loss and the share of frames on the teacher's unit, from each run's log.

    python docs/results/anchor_units/plot.py docs/results/anchor_units docs/results/anchor_units/curves.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ARMS = {
    "A": "units, cross-entropy only (the code before)",
    "B": "units, + MSE to the unit's centroid (now)",
    "C": "units + teacher features (MSE to the feature)",
    "D": "as B, anchor weight 10",
}


def main(folder: str, out: str) -> None:
    fig, ax = plt.subplots(1, 3, figsize=(14, 3.6))
    for arm, label in ARMS.items():
        rows = [json.loads(line) for line in (Path(folder) / f"{arm}.log.jsonl").read_text().splitlines()]
        step = [r["step"] for r in rows]
        for a, key in zip(ax, ("mel/l1", "semantic/anchor", "anchor/accuracy")):
            a.plot(step, [r[key] for r in rows], lw=1.2, label=f"{arm}: {label}")
    for a, title in zip(ax, ("mel L1 (train)", "anchor loss (unweighted; B-D include their MSE)",
                             "frames on the teacher's unit (chance 0.001)")):
        a.set_title(title, fontsize=10)
        a.set_xlabel("step (8 x 2 s crops)")
        a.grid(alpha=0.3)
    ax[1].set_yscale("log")
    ax[2].legend(fontsize=8)
    fig.suptitle("sacodec 25 Hz, acoustic dropout 0.4, 800 steps on 1 CPU thread each, bf16, no adversarial terms")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
