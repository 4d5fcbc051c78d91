"""RTF and WER of the fused ASR against ``lm_lag`` (valid_64.json and test_48.json, from benchmarks/asr_speed.py).

    python docs/results/fused_asr_lag/plot.py   # -> lag.png
"""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent


def main() -> None:
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
    for name, label in (("valid_64.json", "valid, 64 clips"), ("test_48.json", "test, 48 clips")):
        rows = [r for r in json.loads((HERE / name).read_text())["rows"].values() if r["method"] == "fused"]
        rows.sort(key=lambda r: r["lm_lag"])
        lags = [r["lm_lag"] for r in rows]
        ax1.plot(lags, [r["rtf"] for r in rows], "o-", label=label)
        ax2.plot(lags, [r["wer"] for r in rows], "o-", label=label)
    for ax, y in ((ax1, "real-time factor (2 threads)"), (ax2, "WER")):
        ax.set_xscale("symlog", base=2, linthresh=1)
        ax.set_xticks([0, 2, 4, 8, 16, 32], ["0", "2", "4", "8", "16", "32"])
        ax.set_xlabel("lm_lag (reader frames, 50 per second)")
        ax.set_ylabel(y)
        ax.grid(alpha=0.3)
    ax2.set_ylim(0, 1)
    ax1.axvline(8, color="grey", ls=":")
    ax2.axvline(8, color="grey", ls=":", label="the default, 8")
    ax2.legend(fontsize=8)
    fig.suptitle("Fused ASR: LM scoring delayed by lm_lag frames (bfloat16 FusedStep, bundle)")
    fig.tight_layout()
    fig.savefig(HERE / "lag.png", dpi=110)
    print(f"wrote {HERE / 'lag.png'}")


if __name__ == "__main__":
    main()
