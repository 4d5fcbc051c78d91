"""Aligned vs plain TTS of one model dir on the recipe's test items (the model card's TTS/ASR rows)."""
import json
import sys
from pathlib import Path

from codec.runtime import set_threads

set_threads(2)
from slm.eval.codec_eval import Judges
from slm.eval.data import load_items
from slm.eval.lm_eval import eval_tts
from slm.pipeline import SpeechPipeline
from slm.recipe_steps import lm_eval

model, out = sys.argv[1], Path(sys.argv[2])
tasks = tuple(sys.argv[3].split(",")) if len(sys.argv) > 3 else ("tts", "asr", "conditioning")
man = "data/synth2h/manifest.jsonl"
res = lm_eval(model, man, out, tasks=tasks, limit=8)
if "tts" in tasks:
    pipe = SpeechPipeline.from_pretrained(model)
    items = load_items(man, "test", 8)
    other = eval_tts(pipe, items, Judges(metrics=("fidelity", "asr", "dnsmos", "speaker")), max_seconds=10.0, seed=0,
                     aligned=not pipe.tts_aligned)
    (out / f"tts_{'plain' if pipe.tts_aligned else 'aligned'}.json").write_text(json.dumps(other, indent=2, default=float))
    print("other form", {k: other[k] for k in ("wer", "cer", "spk_sim", "dnsmos_ovrl", "rtf")})
