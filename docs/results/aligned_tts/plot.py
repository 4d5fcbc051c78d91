"""The figure of this folder: per-sentence output length against the corpus' own, and how the model
learned when a word ends. Run from the repo root: python docs/results/aligned_tts/plot.py"""
import json
from pathlib import Path

from matplotlib.figure import Figure

from slm.eval.data import load_items

here = Path(__file__).parent
refs = {it.id: it.wav.shape[-1] / it.sample_rate for it in load_items("data/synth2h/manifest.jsonl", "test", 8)}
runs = {"before (1175 steps, plain)": "lm_eval_1175_plain_bundle.json", "after, aligned form": "lm_eval_450_aligned.json",
        "after, plain form": "tts_plain_form_450.json"}
fig = Figure(figsize=(10, 3.6), dpi=90)
a1, a2 = fig.subplots(1, 2)
for k, (name, f) in enumerate(runs.items()):
    d = json.loads((here / f).read_text())
    items = d["tts"]["items"] if "tts" in d else d["items"]
    ratio = [it["seconds"] / refs[it["id"]] for it in items]
    a1.bar([i + (k - 1) * 0.27 for i in range(len(ratio))], ratio, width=0.27, label=name)
a1.axhline(1.0, color="gray", lw=0.8)
a1.set(title="TTS output length / the corpus' own", xlabel="held-out test sentence", ylabel="ratio")
a1.legend(fontsize=8)
mo = json.loads((here / "move_on.json").read_text())
steps = [100, 200, 450]
at = [mo[f"step_{s}"]["mean_p_move_at_boundary"] for s in steps]
el = [mo[f"step_{s}"]["mean_p_move_elsewhere"] for s in steps]
a2.plot(steps, at, "o-", label="at a word's true last frame")
a2.plot(steps, el, "o-", label="at every other frame")
a2.set(title="P(move on to the next word), teacher-forced", xlabel="fine-tune step", ylabel="mean probability",
       ylim=(0, 1))
a2.legend(fontsize=8)
fig.tight_layout()
fig.savefig(here / "aligned_tts.png")
