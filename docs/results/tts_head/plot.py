"""The figure of this folder: Whisper-base WER of the same 16 held-out test items at each stage of TTS, and
the same TTS rows for fine-tune 2 and 3. Run from the repo root: python docs/results/tts_head/plot.py"""
import json
from pathlib import Path

from matplotlib.figure import Figure

here = Path(__file__).parent
ab = json.loads((here / "ablate.json").read_text())
ft2, ft3 = (json.loads((here / f"lm_eval_{n}.json").read_text()) for n in ("ft2", "ft3"))
rows = [("corpus audio", ab["floor"]["wer"]), ("own codec tokens", ab["codec"]["wer"]),
        ("true semantic,\ngreedy head", ab["head"]["temperature 0.0, top_k all"]["wer"]),
        ("true semantic,\nsampled head", ab["head"]["temperature 0.7, top_k 50"]["wer"]),
        ("true semantic,\nconstant acoustic", ab["true semantic, acoustic codes"]["constant"]["wer"]),
        ("TTS, fine-tune 2", ft2["tts"]["wer"]), ("TTS, fine-tune 3\n(phone-bridged)", ft3["tts"]["wer"])]
fig = Figure(figsize=(10, 3.8), dpi=90)
ax = fig.subplots()
colors = ["#4c72b0", "#4c72b0", "#dd8452", "#dd8452", "#937860", "#55a868", "#55a868"]
ax.bar(range(len(rows)), [v for _, v in rows], color=colors)
for i, (_, v) in enumerate(rows):
    ax.text(i, v + 0.02, f"{v:.2f}", ha="center", fontsize=9)
ax.set_xticks(range(len(rows)), [n for n, _ in rows], fontsize=8)
ax.set(ylabel="Whisper-base WER", title="Where TTS loses intelligibility (16 held-out test items)")
fig.tight_layout()
fig.savefig(here / "tts_head.png")
