"""CTC readers side by side on a token dir's held-out splits: greedy WER / CER of each reader on the valid split
(unseen sentences, voices seen in training) and the test split (unseen voices too), then fused ASR
(`SpeechPipeline.asr_tokens(method="fused")`, the bundle's settings) with each reader swapped into the bundle on
the first `--fused-items` test items.

Run from the repo root:
  python docs/results/reader_noise/compare.py checkpoints/default runs/tok25hz10h OUT.json \
      NAME=READER_DIR [NAME=READER_DIR ...] [--fused-items 40]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from adapters.judges import error_rates
from slm.ctc_reader import CTCReader, reader_codes
from slm.lm_data import load_tokens
from slm.pipeline import SpeechPipeline


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("tokens")
    ap.add_argument("out")
    ap.add_argument("readers", nargs="+", help="NAME=READER_DIR")
    ap.add_argument("--fused-items", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    splits = {s: load_tokens(args.tokens, s) for s in ("valid", "test")}
    readers = {n: CTCReader.from_pretrained(d) for n, d in (r.split("=", 1) for r in args.readers)}
    res: dict = {"tokens": args.tokens, "threads": args.threads, "dtype": "fp32",
                 "items": {s: len(u) for s, u in splits.items()}, "fused_items": args.fused_items, "rows": {}}

    def save() -> None:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)

    for name, r in readers.items():
        row = res["rows"].setdefault(name, {"config": {k: v for k, v in r.cfg.__dict__.items() if k != "alphabet"}})
        for s, utts in splits.items():
            hyps = [r.transcribe(reader_codes(u.semantic, u.acoustic, r.cfg.columns)) or "-" for u in utts]
            er = error_rates([u.text for u in utts], hyps)
            row[f"{s}_greedy"] = {"wer": er.wer, "cer": er.cer}
            print(name, s, "greedy", round(er.wer, 3), round(er.cer, 3), flush=True)
        save()
    if not args.fused_items:
        return
    pipe = SpeechPipeline.from_pretrained(args.model, threads=args.threads)
    utts = splits["test"][: args.fused_items]
    audio_s = sum(u.duration for u in utts)
    for name, r in readers.items():
        pipe.reader = r
        t0 = time.perf_counter()
        hyps = [pipe.asr_tokens(u.semantic, method="fused", acoustic=u.acoustic) for u in utts]
        spent = time.perf_counter() - t0
        er = error_rates([u.text for u in utts], hyps)
        res["rows"][name]["test_fused"] = {"wer": er.wer, "cer": er.cer, "rtf": spent / audio_s, "hyps": hyps[:4]}
        res["refs"] = [u.text for u in utts[:4]]
        print(name, "test fused", round(er.wer, 3), round(er.cer, 3), f"rtf {spent / audio_s:.2f}", flush=True)
        save()


if __name__ == "__main__":
    main()
