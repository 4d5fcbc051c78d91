"""The CPU run's curves next to the H100 run's, against training crops seen: mel L1 and the share of frames
on the teacher's unit.

    python docs/results/codec_25hz_cpu/plot.py docs/results/codec_25hz_cpu/log.jsonl \
        docs/results/codec_25hz_gpu/log.jsonl docs/results/codec_25hz_cpu/curves.png
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main(cpu_log: str, gpu_log: str, out: str) -> None:
    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    for log, batch, label in ((cpu_log, 8, "2-core CPU: features + units, anchor weight 10, no GAN (53 min)"),
                              (gpu_log, 32, "one H100: units only, anchor weight 1, GAN from step 782 (5 min)")):
        rows = [json.loads(line) for line in Path(log).read_text().splitlines()]
        crops = [r["step"] * batch / 1000 for r in rows]
        ax[0].plot(crops, [r["mel/l1"] for r in rows], lw=1, label=label)
        ax[1].plot(crops, [r["anchor/accuracy"] for r in rows], lw=1, label=label)
    for a, title in zip(ax, ("mel L1 (train)", "frames on the teacher's unit (chance 0.001)")):
        a.set_title(title, fontsize=10)
        a.set_xlabel("thousand 2 s crops seen")
        a.grid(alpha=0.3)
    ax[1].legend(fontsize=8)
    fig.suptitle("sacodec 25 Hz + acoustic dropout 0.4 (900 bps)")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:4])
