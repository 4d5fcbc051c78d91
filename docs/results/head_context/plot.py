"""Figure for README "A head with acoustic context": held-out (valid) cross-entropy per acoustic code of each
`slm head-fit` run against its training step, next to the bundled head's on the same frames. Run from the
repo root after the fits (their log.jsonl files) and baseline.json:

    python docs/results/head_context/plot.py docs/results/head_context/runs/{c2,c0,c2d}
"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

here = Path(__file__).parent
base = json.loads((here / "baseline.json").read_text())
fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
for run in map(Path, sys.argv[1:]):
    info = json.loads((run / "run.json").read_text())
    cfg = info["head"]
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    label = (f"context {cfg['context']}" + (f", context dropout {cfg['context_dropout']}" if cfg.get("context_dropout")
                                             else "") + f", lr {info['config']['lr']:g}")
    ax[0].plot([r["step"] for r in log], [r["valid_loss"] for r in log], marker=".", label=label)
    ax[1].plot([r["step"] for r in log], [r["valid_acc"] for r in log], marker=".", label=label)
ax[0].axhline(base["loss"], color="k", ls="--", label="bundled head (trained with the LM)")
ax[1].axhline(base["acc"], color="k", ls="--", label="bundled head (trained with the LM)")
ax[0].set(xlabel="step (1024 frames)", ylabel="valid cross-entropy (nats / code)")
ax[1].set(xlabel="step (1024 frames)", ylabel="valid top-1 accuracy")
ax[0].legend(fontsize=8)
fig.suptitle("Acoustic head refit on the frozen bundled LM (valid split of synth10h)", fontsize=10)
fig.tight_layout()
fig.savefig(here / "head_context.png", dpi=110)
print(here / "head_context.png")
