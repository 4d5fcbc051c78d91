"""curves.png: the 25 Hz LM's two phases, the 1000 CPU steps from the remapped bundle (docs/results/lm_25hz_remap)
and the 1800 H100 steps after them: training and held-out semantic-token loss, and the acoustic head's loss.

    python docs/results/lm_25hz_gpu/plot.py
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).parent
CPU = HERE.parent / "lm_25hz_remap"


def _rows(f: Path) -> list[dict]:
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()]


def main() -> None:
    phases = [("CPU, 4 x 384 tokens", CPU, 0), ("H100, 32 x 512 tokens", HERE, 1000)]
    fig, ax = plt.subplots(1, 2, figsize=(12, 4))
    for name, d, off in phases:
        tr, ev = _rows(d / "train_log.jsonl"), _rows(d / "eval_log.jsonl")
        for a, key in ((ax[0], "lm/loss_audio"), (ax[1], "head/loss")):
            a.plot([off + r["step"] for r in tr], [r[key] for r in tr], lw=0.5, alpha=0.5, label=f"train ({name})")
            a.plot([off + r["step"] for r in ev], [r[key] for r in ev], "o-", label=f"held out ({name})")
    ax[0].set(title="semantic-token loss (nats/token)", xlabel="step (CPU steps first)")
    ax[1].set(title="acoustic head loss (nats/code)", xlabel="step (CPU steps first)")
    for a in ax:
        a.axvline(1000, color="gray", ls=":")
        a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "curves.png", dpi=110)


if __name__ == "__main__":
    main()
