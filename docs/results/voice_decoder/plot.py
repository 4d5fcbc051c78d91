"""The figure of docs/results/voice_decoder: the voice stage's training curve and the WER of each variant in
compare.json by stage. python docs/results/voice_decoder/plot.py docs/results/voice_decoder"""
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

d = Path(sys.argv[1])
res = json.loads((d / "compare.json").read_text())
rows = [json.loads(x) for x in (d / "train_log.jsonl").read_text().splitlines() if x.strip()]
fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4))
a.plot([r["step"] for r in rows], [r["mel/l1"] for r in rows], lw=0.8)
a.set_xlabel("step")
a.set_ylabel("training mel L1 (head-token and own crops)")
a.set_title("voice stage: decoder fine-tune on the head's codes")
labels = ["corpus audio", "own codec tokens", "true semantic +\nhead's codes", "TTS"]
names = list(res["variants"])
w = 0.8 / len(names)
for k, name in enumerate(names):
    r = res["variants"][name]
    vals = [r["head"]["floor"]["wer"], r["head"]["codec"]["wer"], r["head"]["head"]["wer"], r["tts"]["wer"]]
    xs = [i - 0.4 + w * (k + 0.5) for i in range(4)]
    b.bar(xs, vals, width=w, label=name)
    for x, val in zip(xs, vals):
        b.text(x, val + 0.01, f"{val:.2f}", ha="center", fontsize=7)
b.set_xticks(range(4), labels, fontsize=8)
b.set_ylabel(f"Whisper-base WER ({res['n']} held-out items)")
b.legend(fontsize=8)
fig.tight_layout()
fig.savefig(d / "voice_decoder.png", dpi=110)
print("wrote", d / "voice_decoder.png")
