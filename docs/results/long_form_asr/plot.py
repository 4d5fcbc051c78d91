"""WER / CER and real-time factor per way of reading the recordings (result.json -> wer.png).

Run from the repo root: python docs/results/long_form_asr/plot.py
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
LABELS = {"clips": "clips read\none by one", "whole": "whole recording\nin one call"}


def main() -> None:
    res = json.loads((HERE / "result.json").read_text())
    names = list(res["rows"])
    rows = [res["rows"][n] for n in names]
    labels = [LABELS[n] if n in LABELS else f"split at pauses\n<= {n.split('_')[1]} s" for n in names]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    x = range(len(names))
    a.bar([i - 0.2 for i in x], [r["wer"] for r in rows], 0.4, label="WER")
    a.bar([i + 0.2 for i in x], [r["cer"] for r in rows], 0.4, label="CER")
    a.set_xticks(list(x), labels, fontsize=8)
    a.set_title(f"ASR-by-token on {res['recordings']} recordings of {res['clips']} held-out clips")
    a.legend(loc="lower right")
    b.bar(list(x), [r["rtf"] for r in rows], color="gray")
    b.set_xticks(list(x), labels, fontsize=8)
    b.set_title(f"real-time factor ({res['threads']} threads, int8)")
    fig.tight_layout()
    fig.savefig(HERE / "wer.png", dpi=110)


if __name__ == "__main__":
    main()
