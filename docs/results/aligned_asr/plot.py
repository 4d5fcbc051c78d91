"""The figure of this folder: the fine-tune's text / semantic-token losses, and aligned ASR's word threshold
on the validation split. Run from the repo root: python docs/results/aligned_asr/plot.py"""
import json
from pathlib import Path

from matplotlib.figure import Figure

here = Path(__file__).parent
rows = [json.loads(x) for x in (here / "train_log.jsonl").read_text().splitlines() if x.strip()]
sweep = json.loads((here / "threshold_sweep_valid.json").read_text())["rows"]


def smooth(v, k=6):
    return [sum(v[max(0, i - k + 1): i + 1]) / len(v[max(0, i - k + 1): i + 1]) for i in range(len(v))]


fig = Figure(figsize=(10, 3.6), dpi=90)
a1, a2 = fig.subplots(1, 2)
steps = [r["step"] for r in rows]
for key, label in (("lm/loss_text", "text targets (ASR words, transcripts)"), ("lm/loss_audio", "semantic tokens")):
    a1.plot(steps, smooth([r[key] for r in rows]), label=label)
a1.set(title="fine-tune 2 (aligned TTS + ASR), from fine-tune 1", xlabel="step", ylabel="cross-entropy (smoothed)")
a1.legend(fontsize=8)
th = [r["threshold"] for r in sweep]
a2.plot(th, [r["wer"] for r in sweep], "o-", label="WER")
a2.plot(th, [r["cer"] for r in sweep], "s-", label="CER")
a2.plot(th, [r["hyp_words_per_ref_word"] for r in sweep], "^--", label="words written / words said")
a2.axhline(1.0, color="gray", lw=0.6, ls=":")
a2.set(title="aligned ASR: word threshold (validation split)", xlabel="P(text) needed to write a word", ylabel="")
a2.legend(fontsize=8)
fig.tight_layout()
fig.savefig(here / "aligned_asr.png")
print(here / "aligned_asr.png")
