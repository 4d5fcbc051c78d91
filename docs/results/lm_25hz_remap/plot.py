"""curves.png: the 25 Hz remap run's training / held-out semantic-token loss and head loss, and the held-out
loss before any step for the three code maps (init_loss.json).

    python docs/results/lm_25hz_remap/plot.py runs/lm25_remap docs/results/lm_25hz_remap
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _rows(f: Path) -> list[dict]:
    return [json.loads(x) for x in f.read_text().splitlines() if x.strip()]


def main(run: str, out: str) -> None:
    o = Path(out)
    train = _rows(Path(run, "train_log.jsonl")) if Path(run, "train_log.jsonl").is_file() else _rows(o / "train_log.jsonl")
    ev = _rows(Path(run, "eval_log.jsonl")) if Path(run, "eval_log.jsonl").is_file() else _rows(o / "eval_log.jsonl")
    init = json.loads((o / "init_loss.json").read_text())
    fig, ax = plt.subplots(1, 3, figsize=(15, 4))
    st = [r["step"] for r in train]
    ax[0].plot(st, [r["lm/loss_audio"] for r in train], lw=0.6, alpha=0.6, label="train")
    ax[0].plot([0] + [r["step"] for r in ev], [init["remap"]["lm/loss_audio"]] + [r["lm/loss_audio"] for r in ev],
               "o-", label="held out (step 0: the remapped bundle)")
    ax[0].set(title="semantic-token loss (nats/token)", xlabel="step")
    ax[0].legend()
    ax[1].plot(st, [r["head/loss"] for r in train], lw=0.6, alpha=0.6, label="train")
    ax[1].plot([r["step"] for r in ev], [r["head/loss"] for r in ev], "o-", label="held out")
    ax[1].set(title="acoustic head loss (fresh head; nats/code)", xlabel="step")
    ax[1].legend()
    arms = list(init)
    x = range(len(arms))
    ax[2].bar([i - 0.2 for i in x], [init[a]["lm/loss_audio"] for a in arms], 0.4, label="semantic tokens")
    ax[2].bar([i + 0.2 for i in x], [init[a]["lm/loss_text"] for a in arms], 0.4, label="text")
    ax[2].set_xticks(list(x), arms)
    ax[2].set(title="held-out loss before any step, by code map")
    ax[2].legend()
    fig.tight_layout()
    fig.savefig(o / "curves.png", dpi=110)


if __name__ == "__main__":
    main(*sys.argv[1:3])
