"""Where TTS loses intelligibility, on the 16 held-out test items of the recipe's eval (Whisper-base WER/CER).

For a model dir: the corpus audio; its codec tokens decoded; its true semantic tokens with the acoustic head
sampling the acoustic codes (slm.eval.lm_eval.eval_head) at several head temperatures; and its true semantic
tokens with acoustic codes that carry nothing of the item (one constant code, uniform random codes, its own
codes shuffled in time). Run from the repo root:

    python docs/results/tts_head/ablate.py MODEL_DIR docs/results/tts_head/ablate.json
"""
import json
import sys

import torch

from adapters.judges import error_rates
from codec.contracts import CodecTokens
from codec.runtime import set_threads
from slm.eval.codec_eval import Judges
from slm.eval.data import load_items
from slm.eval.lm_eval import _np, eval_head
from slm.pipeline import SpeechPipeline

set_threads(2)
model, out_path = sys.argv[1], sys.argv[2]
pipe = SpeechPipeline.from_pretrained(model)
items = load_items("data/synth2h/manifest.jsonl", "test", 16, sample_rate=16000)
judges = Judges(metrics=("asr",))
refs = [it.text for it in items]
res: dict = {"model": model, "n": len(items), "head": {}}
for t, k in [(0.0, 0), (0.5, 50), (0.7, 50), (1.0, 0)]:  # 0.7 / 50: the pipeline's default (Sampling)
    pipe.sampling.head_temperature, pipe.sampling.head_top_k = t, k
    r = eval_head(pipe, items, judges, seed=0)
    res["floor"], res["codec"] = r["floor"], r["codec"]
    res["head"][f"temperature {t}, top_k {k or 'all'}"] = r["head"]
    print(t, k, r["head"], flush=True)
g = torch.Generator().manual_seed(0)
wavs: dict[str, list] = {"constant": [], "random": [], "shuffled in time": []}
for it in items:
    tok = pipe.encode(it.wav, it.sample_rate)
    ac = tok.acoustic
    swap = {"constant": torch.full_like(ac, int(ac.flatten().mode().values)),
            "random": torch.randint(0, pipe.codec.acoustic_codebook_size, ac.shape, generator=g),
            "shuffled in time": ac[..., torch.randperm(ac.shape[-1], generator=g)]}
    for name, a in swap.items():
        wavs[name].append(_np(pipe.codec.decode(CodecTokens(tok.semantic, a, tok.global_))))
res["true semantic, acoustic codes"] = {}
for name, ws in wavs.items():
    er = error_rates(refs, judges.asr.transcribe(ws, 16000))
    res["true semantic, acoustic codes"][name] = {"wer": er.wer, "cer": er.cer}
    print(name, er.wer, er.cer, flush=True)
with open(out_path, "w") as f:
    json.dump(res, f, indent=1)
