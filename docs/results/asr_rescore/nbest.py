"""Fused ASR's n-best list re-ranked by the speech LM's aligned ASR form: how much it would gain, and at what weight.

For each item, fused ASR (``slm.fused_asr.fused_nbest``, the bundle's settings) gives its best transcripts; each is
aligned to the reader's CTC outputs (``ctc_align``), its words placed after their frames, and scored by the
speech LM (``SpeechPipeline._rescore``: log p(words | semantic tokens), aligned ASR form). Then, offline, each
weight ``c`` picks ``argmax(score + c * aligned)`` per item; ``c = 0`` is fused ASR as it is, ``oracle`` the
transcript with the fewest word errors (a bound, not a rule).

Items: ``--tokens DIR --split valid`` (the token dir's utterances, their own codec tokens: unseen sentences,
voices seen in training; for choosing the weight) or ``--manifest FILE --split test`` (the model card's items:
the audio is encoded by the pipeline's codec, as ``pipe.asr`` does).

    python docs/results/asr_rescore/nbest.py checkpoints/default OUT.json --tokens runs/tok25hz10h --split valid --limit 40
    python docs/results/asr_rescore/nbest.py checkpoints/default OUT.json --manifest data/synth2h/manifest.jsonl --split test --limit 16
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))

WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0)


def pick(hyps: list[dict], c: float) -> dict:
    return max(hyps, key=lambda h: h["score"] + c * h["aligned"])


def table(rows: list[dict], error_rates) -> dict:
    refs = [r["ref"] for r in rows]
    out = {}
    for c in WEIGHTS:
        e = error_rates(refs, [pick(r["hyps"], c)["text"] for r in rows])
        out[f"c={c}"] = {"wer": e.wer, "cer": e.cer}
    e = error_rates(refs, [min(r["hyps"], key=lambda h: h["word_errors"])["text"] for r in rows])
    out["oracle"] = {"wer": e.wer, "cer": e.cer}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("out")
    ap.add_argument("--tokens", help="token dir (slm codec tokenize) whose utterances to read")
    ap.add_argument("--manifest", help="manifest whose audio to encode and read")
    ap.add_argument("--split", default="valid")
    ap.add_argument("--limit", type=int, default=40)
    ap.add_argument("--n", type=int, default=8, help="transcripts rescored per item")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    if bool(args.tokens) == bool(args.manifest):
        ap.error("give one of --tokens and --manifest")

    from tqdm import tqdm

    from adapters.judges import error_rates
    from codec.runtime import set_threads
    from slm.acoustic_head import frames_from_acoustic
    from slm.ctc_reader import reader_codes
    from slm.fused_asr import fused_nbest
    from slm.pipeline import SpeechPipeline

    set_threads(args.threads)
    pipe = SpeechPipeline.from_pretrained(args.model)
    pipe.fusion = dataclasses.replace(pipe.fusion, rescore_n=args.n)
    items = []  # (id, text, semantic [Ts], acoustic [Ts, L] or None)
    if args.tokens:
        from slm.lm_data import load_tokens

        for u in load_tokens(args.tokens, args.split, args.limit):
            items.append((u.id, u.text, u.semantic, u.acoustic if u.acoustic.shape[-1] else None))
    else:
        from slm.eval.data import load_items
        from slm.eval.lm_eval import _resample

        for it in load_items(args.manifest, args.split, args.limit):
            toks = pipe._encode_one(_resample(it.wav, it.sample_rate, pipe.sample_rate), pipe.sample_rate)
            items.append((it.id, it.text, toks.semantic[0, 0], frames_from_acoustic(toks.acoustic[0], toks.ratio)))
    rows, t0 = [], time.perf_counter()
    for iid, text, sem, ac in tqdm(items, desc="n-best"):
        logp = pipe.reader.log_probs(reader_codes(sem, ac if pipe.reader.cfg.acoustic_codes else None,
                                                  pipe.reader.cfg.columns))
        hyps = fused_nbest(logp, pipe.reader.blank, pipe.text_scorer(), pipe.lexicon(), pipe.fusion,
                           pipe.reader.cfg.alphabet)
        ranked = pipe._rescore(sem, logp, hyps)
        out = []
        for h, a in ranked:
            e = error_rates([text], [h.text])
            out.append({"text": h.text, "score": h.score, "ctc": h.ctc, "lm": h.lm, "aligned": a,
                        "word_errors": e.wer * max(1, len(text.split()))})
        rows.append({"id": iid, "ref": text, "hyps": sorted(out, key=lambda h: -h["score"])})
    spent = time.perf_counter() - t0
    res = {"model": args.model, "source": args.tokens or args.manifest, "split": args.split, "items": len(rows),
           "n": args.n, "threads": args.threads, "dtype": "fp32", "seconds": spent, "fusion": dataclasses.asdict(pipe.fusion),
           "rules": table(rows, error_rates), "rows": rows}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    for k, v in res["rules"].items():
        print(f"{k:>8}  WER {v['wer']:.3f}  CER {v['cer']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
