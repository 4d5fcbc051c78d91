"""Speech-LM variants side by side on the 16 held-out test items of the recipe's eval (held-out sentences and
voices of data/synth2h): `slm eval head` (the corpus audio, its own codec tokens decoded, its true semantic
tokens voiced by the acoustic head) and `slm eval tts` (Whisper-base WER, speaker similarity, DNSMOS, RTF),
same seeds, added to OUT_DIR/compare.json. Each variant is NAME=MODEL_DIR, optionally @HEAD_TEMPERATURE (0:
greedy head). Run from the repo root, then plot.py for the figure:

    python docs/results/voice_decoder/compare.py OUT_DIR before=checkpoints/default greedy=checkpoints/default@0 \\
        voiced=runs/headdec/voiced
"""
import json
import sys
from pathlib import Path

from codec.runtime import set_threads
from slm.eval.codec_eval import Judges
from slm.eval.data import load_items
from slm.eval.lm_eval import eval_head, eval_tts
from slm.pipeline import SpeechPipeline

set_threads(2)
out, variants = Path(sys.argv[1]), sys.argv[2:]
out.mkdir(parents=True, exist_ok=True)  # before the (long) evaluation, which writes into it
items = load_items("data/synth2h/manifest.jsonl", "test", 16, sample_rate=16000)
prev = out / "compare.json"  # variants measured in an earlier run stay (same items, same seeds)
res: dict = json.loads(prev.read_text()) if prev.is_file() else {"n": len(items), "variants": {}}
asr_only, full = Judges(metrics=("asr",)), Judges(metrics=("asr", "speaker", "dnsmos"))
for v in variants:
    name, spec = v.split("=", 1)
    model, _, temp = spec.partition("@")
    pipe = SpeechPipeline.from_pretrained(model)
    if temp:
        pipe.sampling.head_temperature = float(temp)
    head = eval_head(pipe, items, asr_only, seed=0)
    tts = eval_tts(pipe, items, full, seed=0)
    res["variants"][name] = {"model": model, "head_temperature": pipe.sampling.head_temperature,
                             "head_top_k": pipe.sampling.head_top_k, "head": head,
                             "tts": {k: v for k, v in tts.items() if k != "per_voice"}}
    print(name, {k: round(head[k]["wer"], 3) for k in ("floor", "codec", "head")}, "tts", round(tts["wer"], 3),
          flush=True)
    (out / "compare.json").write_text(json.dumps(res, indent=1) + "\n")
