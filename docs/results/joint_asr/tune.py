"""Joint ASR settings on the valid split of the LM's token dir (unseen sentences; never the model card's items):
WER / CER of the reader alone, the LM alone (its default aligned form) and joint decoding at each CTC weight.

Run from the repo root:
  python docs/results/joint_asr/tune.py checkpoints/default runs/ctc_reader/reader runs/tok25hz10h OUT.json \
      [--items 40] [--weights 0.3,0.5,0.7,0.9] [--beam 4]
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time

from adapters.judges import error_rates
from codec.runtime import set_threads
from slm.ctc_reader import CTCReader, JointConfig
from slm.lm_data import load_tokens
from slm.pipeline import SpeechPipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("reader")
    ap.add_argument("tokens")
    ap.add_argument("out")
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--weights", default="0.3,0.5,0.7,0.9")
    ap.add_argument("--beam", type=int, default=4)
    ap.add_argument("--skip-lm", action="store_true")
    args = ap.parse_args()
    set_threads(2)
    pipe = SpeechPipeline.from_pretrained(args.model)
    pipe.reader = CTCReader.from_pretrained(args.reader)
    utts = load_tokens(args.tokens, "valid", limit=args.items)
    refs = [u.text for u in utts]
    rows = {}

    def run(name: str, method: str, joint: JointConfig | None = None) -> None:
        if joint is not None:
            pipe.joint = joint
        t0 = time.perf_counter()
        hyps = [pipe.asr_tokens(u.semantic, method=method) for u in utts]
        spent = time.perf_counter() - t0
        er = error_rates(refs, hyps)
        audio_s = sum(u.duration for u in utts)
        rows[name] = {"wer": er.wer, "cer": er.cer, "rtf": spent / audio_s, "hyps": hyps[:5]}
        print(name, round(er.wer, 3), round(er.cer, 3), f"rtf {spent / audio_s:.2f}", flush=True)
        with open(args.out, "w") as f:
            json.dump({"items": len(utts), "split": "valid", "refs": refs[:5], "rows": rows}, f, indent=1)

    run("ctc", "ctc")
    if not args.skip_lm:
        run("lm", "lm")
    for w in [float(x) for x in args.weights.split(",")]:
        run(f"joint_w{w}_b{args.beam}", "joint", dataclasses.replace(JointConfig(), ctc_weight=w, beam=args.beam))


if __name__ == "__main__":
    main()
