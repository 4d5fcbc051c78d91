"""Aligned ASR's word threshold (P(text) against the next frame) on the VALIDATION split: WER per threshold.
Usage: python docs/results/aligned_asr/threshold_sweep.py MODEL_DIR OUT.json [N]"""
import json
import sys

import torch

from codec.runtime import set_threads

set_threads(2)
from adapters.judges import error_rates
from slm.eval.data import load_items
from slm.generate import transcribe_aligned
from slm.pipeline import SpeechPipeline

pipe = SpeechPipeline.from_pretrained(sys.argv[1])
n = int(sys.argv[3]) if len(sys.argv) > 3 else 16
items = load_items("data/synth2h/manifest.jsonl", "valid", n, sample_rate=pipe.sample_rate)
codes = [pipe.encode(it.wav, it.sample_rate).semantic[0, 0] for it in items]
refs = [it.text for it in items]
res = {"model": sys.argv[1], "split": "valid", "n": len(items), "rows": []}
for th in (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5):
    hyps = []
    with torch.no_grad():
        for c in codes:
            ids = [t for w in transcribe_aligned(pipe.infer_lm, pipe.layout, c, 200, threshold=th,
                                                 word_start=pipe.word_start()) for t in w]
            hyps.append(pipe.tokenizer.decode(ids, skip_special_tokens=True).strip())
    er = error_rates(refs, hyps)
    words = sum(len(h.split()) for h in hyps) / max(sum(len(r.split()) for r in refs), 1)
    row = {"threshold": th, "wer": er.wer, "cer": er.cer, "hyp_words_per_ref_word": words, "example": hyps[0]}
    res["rows"].append(row)
    print(json.dumps(row))
with open(sys.argv[2], "w") as f:
    f.write(json.dumps(res, indent=1) + "\n")
