"""Training curves of the GPU fine-tune (train_log.jsonl, eval_log.jsonl beside this file) -> curves.png."""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

HERE = Path(__file__).resolve().parent


def rows(name: str) -> list[dict]:
    return [json.loads(x) for x in (HERE / name).read_text().splitlines() if x.strip()]


def smooth(v: list[float], k: int = 10) -> list[float]:
    return [sum(v[max(0, i - k + 1): i + 1]) / len(v[max(0, i - k + 1): i + 1]) for i in range(len(v))]


train, valid = rows("train_log.jsonl"), rows("eval_log.jsonl")
fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
for ax, key, title in zip(axes, ("lm/loss_text", "lm/loss_audio", "head/loss"),
                          ("LM: text tokens", "LM: semantic tokens", "acoustic head")):
    ax.plot([r["step"] for r in train], smooth([r[key] for r in train]), label="train (mean of 10 logs)")
    ax.plot([r["step"] for r in valid], [r[key] for r in valid], "o-", label="valid (463 utterances, 8 batches)")
    ax.set_title(title)
    ax.set_xlabel("step (16 x 384 tokens)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.grid(alpha=0.3)
axes[0].legend()
fig.suptitle("LM fine-tune 4 of the bundle: 3000 steps on one H100 (bf16), from the bundled model")
fig.tight_layout()
fig.savefig(HERE / "curves.png", dpi=110)
print(HERE / "curves.png")
