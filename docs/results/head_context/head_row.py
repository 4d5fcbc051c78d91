"""The head row of `slm eval head` (true semantic tokens voiced by the acoustic head) for several model dirs on the
16 held-out items of data/synth2h; MODEL@T sets the head temperature (0: greedy). Run from the repo root:

    python docs/results/head_context/head_row.py checkpoints/default runs/headfit/model_c2d runs/headfit/model_c2d@0
"""
import sys

from codec.runtime import set_threads
from slm.eval.codec_eval import Judges
from slm.eval.data import load_items
from slm.eval.lm_eval import eval_head
from slm.pipeline import SpeechPipeline

set_threads(2)
items = load_items("data/synth2h/manifest.jsonl", "test", 16, sample_rate=16000)
for m in sys.argv[1:]:
    model, _, temp = m.partition("@")
    pipe = SpeechPipeline.from_pretrained(model)
    if temp: pipe.sampling.head_temperature = float(temp)
    r = eval_head(pipe, items, Judges(metrics=("asr",)), seed=0)
    print(m, {k: (round(r[k]["wer"], 3), round(r[k].get("cer", float("nan")), 3)) for k in ("floor", "codec", "head")}, flush=True)
