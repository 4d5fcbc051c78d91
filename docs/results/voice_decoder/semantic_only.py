"""How much of the content the semantic stream carries, with a decoder trained to use it: on the 16 held-out
test items, Whisper-base WER of each codec's decode of (a) the item's own tokens, (b) its true semantic tokens
with one constant acoustic code, and, for each speech-LM model given, (c) its TTS semantic tokens (same seed as
`slm eval tts`) with that constant acoustic code instead of the head's. Run from the repo root:

    python docs/results/voice_decoder/semantic_only.py OUT.json CODE NAME=CODEC_DIR ... -- NAME=MODEL_DIR ...
"""
import json
import sys

import torch

from adapters.judges import error_rates
from codec.contracts import CodecTokens
from codec.model import DualStreamCodec
from codec.runtime import set_threads
from slm.eval.codec_eval import Judges
from slm.eval.data import load_items
from slm.eval.lm_eval import _np, _resample, voice_prompts
from slm.pipeline import SpeechPipeline

set_threads(2)
out, code = sys.argv[1], int(sys.argv[2])
cut = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
codecs = dict(a.split("=", 1) for a in sys.argv[3:cut])
models = dict(a.split("=", 1) for a in sys.argv[cut + 1:])
items = load_items("data/synth2h/manifest.jsonl", "test", 16, sample_rate=16000)
asr, refs = Judges(metrics=("asr",)).asr, [it.text for it in items]
res: dict = {"n": len(items), "constant_code": code, "codecs": {}, "tts_semantic_only": {}}


def wer(wavs):
    er = error_rates(refs, asr.transcribe(wavs, 16000))
    return {"wer": er.wer, "cer": er.cer}


def const(t: CodecTokens) -> CodecTokens:
    return CodecTokens(t.semantic, torch.full_like(t.acoustic, code), t.global_)


for name, d in codecs.items():
    c = DualStreamCodec.from_pretrained(d).eval()
    own, sem = [], []
    for it in items:
        t = c.encode(it.wav[None])
        own.append(_np(c.decode(t)))
        sem.append(_np(c.decode(const(t))))
    res["codecs"][name] = {"dir": d, "own tokens": wer(own), "true semantic + constant acoustic": wer(sem)}
    print(name, res["codecs"][name], flush=True)
for name, d in models.items():
    pipe = SpeechPipeline.from_pretrained(d)
    prompts, wavs = voice_prompts(items), []
    for it in items:
        p = prompts[it.speaker]
        toks = pipe.tts_tokens(it.text, _resample(p.wav, p.sample_rate, pipe.sample_rate), seed=0)
        wavs.append(_np(torch.cat([pipe.codec.decode(const(t)).reshape(1, -1) for t in toks], -1)))
    res["tts_semantic_only"][name] = {"dir": d, **wer(wavs)}
    print(name, "TTS semantic only", res["tts_semantic_only"][name], flush=True)
with open(out, "w") as f:
    json.dump(res, f, indent=1)
