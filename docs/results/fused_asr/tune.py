"""Fused ASR settings (slm.fused_asr) on the valid split of the LM's token dir (unseen sentences; never the model
card's items): WER / CER of the reader alone (greedy) and of `SpeechPipeline.asr(method="fused")` at each
setting, one grid entry as `lm_weight,word_bonus,beam[,text_lm[,lexicon]]`.

Run from the repo root:
  python docs/results/fused_asr/tune.py checkpoints/default runs/tok25hz10h OUT.json [--items 20] \
      [--grid 0.8,2,16 0.8,2,16,adapted 0.8,2,16,base,wordfreq:200000 ...]
"""
from __future__ import annotations

import argparse
import json
import time

from adapters.judges import error_rates
from slm.fused_asr import FusionConfig
from slm.lm_data import load_tokens
from slm.pipeline import SpeechPipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokens")
    ap.add_argument("out")
    ap.add_argument("--items", type=int, default=20)
    ap.add_argument("--grid", nargs="+", default=["0.8,2,16"])
    args = ap.parse_args()
    pipe = SpeechPipeline.from_pretrained(args.model, threads=2)
    utts = load_tokens(args.tokens, "valid", limit=args.items)
    refs = [u.text for u in utts]
    audio_s = sum(u.duration for u in utts)
    rows = {}

    def run(name: str, method: str) -> None:
        t0 = time.perf_counter()
        hyps = [pipe.asr_tokens(u.semantic, method=method) for u in utts]
        spent = time.perf_counter() - t0
        er = error_rates(refs, hyps)
        rows[name] = {"wer": er.wer, "cer": er.cer, "rtf": spent / audio_s, "hyps": hyps[:5]}
        print(name, round(er.wer, 3), round(er.cer, 3), f"rtf {spent / audio_s:.2f}", flush=True)
        with open(args.out, "w") as f:
            json.dump({"items": len(utts), "split": "valid", "audio_s": audio_s, "threads": 2, "dtype": "fp32",
                       "refs": refs[:5], "rows": rows}, f, indent=1)

    run("reader_greedy", "ctc")
    for g in args.grid:
        a, b, beam, *rest = g.split(",")
        text_lm = rest[0] if rest else "base"
        lexicon = rest[1] if len(rest) > 1 else "wordfreq:100000"
        pipe.fusion = FusionConfig(beam=int(beam), lm_weight=float(a), word_bonus=float(b), text_lm=text_lm,
                                   lexicon=None if lexicon == "none" else lexicon)
        run(f"fused_a{a}_b{b}_beam{beam}_{text_lm}_{lexicon}", "fused")


if __name__ == "__main__":
    main()
