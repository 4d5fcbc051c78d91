"""Figure of the sampling sweep: WER per setting (each seed a dot, the mean a bar), DNSMOS beside it.

    python docs/results/tts_sampling/plot.py docs/results/tts_sampling/sweep.json
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("sweep.json"))
d = json.loads(src.read_text())
names = list(dict.fromkeys(r["setting"] for r in d["rows"].values()))
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for ax, key, label in ((axes[0], "wer", "Whisper-base WER"), (axes[1], "dnsmos_ovrl", "DNSMOS OVRL")):
    for i, n in enumerate(names):
        vals = [r[key] for r in d["rows"].values() if r["setting"] == n]
        ax.bar(i, np.mean(vals), color="#9ecae1" if n != "T0.8_head0.7" else "#fdae6b")
        ax.scatter([i] * len(vals), vals, color="k", s=12, zorder=3)
    if key == "wer":
        for name, ls in (("ground truth", ":"), ("codec round trip", "--")):
            ax.axhline(d["floors"][name]["wer"], color="gray", ls=ls, label=f"{name} ({d['floors'][name]['wer']:.3f})")
        ax.legend(fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel(label)
fig.suptitle(f"TTS sampling on {len(d['items'])} held-out items not in the model card (dots: seeds; bar: mean)")
fig.tight_layout()
fig.savefig(src.with_name("sweep.png"), dpi=110)
print(src.with_name("sweep.png"))
