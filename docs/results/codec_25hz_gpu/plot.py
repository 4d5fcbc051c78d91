"""The GPU codec run's curves: mel L1 and the semantic anchor (cross-entropy to the teacher units, and the
share of frames on the teacher's unit), from the run's log.jsonl.

    python docs/results/codec_25hz_gpu/plot.py docs/results/codec_25hz_gpu/log.jsonl docs/results/codec_25hz_gpu/curves.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(log: str, out: str) -> None:
    rows = [json.loads(line) for line in Path(log).read_text().splitlines()]
    step = [r["step"] for r in rows]
    adv = next((r["step"] for r in rows if "adv/gen" in r), None)
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.4))
    for a, key, title in ((ax[0], "mel/l1", "mel L1 (train)"), (ax[1], "semantic/anchor", "anchor cross-entropy"),
                          (ax[2], "anchor/accuracy", "frames on the teacher's unit")):
        a.plot(step, [r[key] for r in rows], lw=1)
        a.set_title(title)
        a.set_xlabel("step (32 x 2 s crops)")
        if adv:
            a.axvline(adv, color="grey", ls=":", lw=1, label="adversarial terms on")
        a.grid(alpha=0.3)
    ax[1].set_yscale("log")
    ax[0].legend()
    fig.suptitle("sacodec 25 Hz + acoustic dropout 0.4, one H100, 5 min, units-only anchoring")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
