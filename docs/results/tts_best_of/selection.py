"""How well the CTC reader chooses among best-of candidates, against other rules and an oracle.

For each of the model card's held-out items and each seed, every sentence gets N candidates (side by side,
``generate_candidates``, as ``best_of=N`` makes them); each candidate is decoded and transcribed by the judge
(Whisper-base). Then each selection rule picks one candidate per sentence among the first k, and its WER is
computed over all sentences:
- ``first``: candidate 0 (what best_of 1 would speak, statistically);
- ``reader``: the highest CTC log p(text | tokens) (what ``best_of`` does);
- ``reader_per_frame``: that log p divided by the candidate's frames;
- ``reader_rt``: the reader's log p(text | tokens) of the take decoded to audio and encoded again by the codec
  (what the decoder made of the candidate, as the codec hears it);
- ``lm_asr``: the speech LM's own log p(words | tokens) in its aligned ASR form, each word right after the
  frames generated for it (``SpeechPipeline.aligned_asr_scores``); ``reader+lm_asr`` and
  ``rank(reader)+rank(lm_asr)``: the two together, by summed log p and by summed rank;
- ``shortest`` / ``longest``: by length alone (a check of length bias);
- ``oracle``: the fewest word errors by the judge itself (an upper bound, not a usable rule).

    python docs/results/tts_best_of/selection.py checkpoints/default data/synth2h/manifest.jsonl OUT.json \
        --limit 16 --n 8 --seeds 0,1,2 --int8 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def _rank(cs: list[dict], key: str, i: int) -> int:
    """0 for the candidate with the highest ``key``; ties share the better rank."""
    return sum(c[key] > cs[i][key] for c in cs)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--split", default="test", help="manifest split of the items (test: the model card's)")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-seconds", type=float, default=10.0)
    args = ap.parse_args()

    from tqdm import tqdm

    from adapters.judges import error_rates
    from codec.runtime import set_threads
    from slm.acoustic_head import frames_from_acoustic
    from slm.eval.codec_eval import Judges
    from slm.eval.data import load_items
    from slm.eval.lm_eval import _np, _resample, voice_prompts
    from slm.generate import generate_candidates
    from slm.pipeline import SpeechPipeline
    from slm.templates import split_words

    set_threads(args.threads)
    pipe = SpeechPipeline.from_pretrained(args.model, int8=args.int8)
    items = load_items(args.manifest, args.split, args.limit)
    judges = Judges(metrics=("asr",))
    prompts = voice_prompts(items)
    rows = []  # one per (seed, item, sentence): the text and every candidate's score, frames and audio
    t0 = time.perf_counter()
    for seed in (int(s) for s in args.seeds.split(",")):
        for it in tqdm(items, desc=f"seed {seed}"):
            p = prompts[it.speaker]
            voice = _resample(p.wav, p.sample_rate, pipe.sample_rate)
            for sentence, prompt, s, hi, v, gen, kw in pipe._tts_plan(it.text, voice, None, None, None,
                                                                      args.max_seconds, seed, None, args.n):
                cands = generate_candidates(pipe.infer_lm, pipe.layout, prompt, pipe._speaking_head, s, hi, args.n,
                                            pipe._voice_vec(v), gen, **kw)
                g = v.tokens.global_ if v is not None else None
                row = {"seed": seed, "item": it.id, "text": sentence, "cands": []}
                lm = pipe.aligned_asr_scores([split_words(sentence) or [sentence]] * len(cands),
                                             [[f.code for f in c] for c in cands], [[f.word for f in c] for c in cands])
                for c, lm_c in zip(cands, lm, strict=True):
                    codes, frames = [f.code for f in c], [f.acoustic for f in c]
                    wav = pipe._decode(pipe._tokens(codes, frames, g)).reshape(1, -1).float().cpu()
                    rt = pipe._encode_one(wav, pipe.sample_rate)  # the take as the codec hears it again
                    rt_ac = frames_from_acoustic(rt.acoustic[0], rt.ratio) if rt.acoustic.shape[1] else None
                    row["cands"].append({"frames": len(c), "reader": pipe.reader_score(sentence, codes, frames),
                                         "reader_rt": pipe.reader_score(sentence, rt.semantic[0, 0],
                                                                        None if rt_ac is None else list(rt_ac)),
                                         "lm_asr": lm_c,
                                         "audio": _np(_resample(wav, pipe.sample_rate, 16000))})
                rows.append(row)
    gen_s = time.perf_counter() - t0
    flat = [c for r in rows for c in r["cands"]]
    hyps = judges.asr.transcribe([c["audio"] for c in flat], 16000)
    for c, h in zip(flat, hyps, strict=True):
        c["hyp"] = h
        del c["audio"]
    for r in rows:
        for c in r["cands"]:
            e = error_rates([r["text"]], [c["hyp"]])
            c["word_errors"] = e.wer * max(1, len(r["text"].split()))

    rules = {
        "first": lambda cs: 0,
        "reader": lambda cs: max(range(len(cs)), key=lambda i: cs[i]["reader"]),
        "reader_per_frame": lambda cs: max(range(len(cs)), key=lambda i: cs[i]["reader"] / max(1, cs[i]["frames"])),
        "reader_rt": lambda cs: max(range(len(cs)), key=lambda i: cs[i]["reader_rt"]),
        "lm_asr": lambda cs: max(range(len(cs)), key=lambda i: cs[i]["lm_asr"]),
        "reader+lm_asr": lambda cs: max(range(len(cs)), key=lambda i: cs[i]["reader"] + cs[i]["lm_asr"]),
        "rank(reader)+rank(lm_asr)": lambda cs: min(range(len(cs)), key=lambda i: _rank(cs, "reader", i) + _rank(cs, "lm_asr", i)),
        "shortest": lambda cs: min(range(len(cs)), key=lambda i: cs[i]["frames"]),
        "longest": lambda cs: max(range(len(cs)), key=lambda i: cs[i]["frames"]),
        "oracle": lambda cs: min(range(len(cs)), key=lambda i: cs[i]["word_errors"]),
    }
    ks = [k for k in (1, 2, 4, 8, 16) if k <= args.n]
    table = {}
    for name, rule in rules.items():
        for k in ks:
            if name == "first" and k > 1:
                continue
            refs, hyps_k = [], []
            for r in rows:
                cs = r["cands"][:k]
                refs.append(r["text"])
                hyps_k.append(cs[rule(cs)]["hyp"])
            e = error_rates(refs, hyps_k)
            table[f"{name}@{k}"] = {"wer": e.wer, "cer": e.cer}
    res = {"model": args.model, "split": args.split, "int8": args.int8, "threads": args.threads, "seeds": args.seeds, "n": args.n,
           "items": len(items), "sentences": len(rows), "generation_seconds": gen_s, "rules": table, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print("| rule | " + " | ".join(f"k={k}" for k in ks) + " |")
    print("|---|" + "---|" * len(ks))
    for name in rules:
        cells = [f"{table[f'{name}@{k}']['wer']:.3f} / {table[f'{name}@{k}']['cer']:.3f}" if f"{name}@{k}" in table
                 else "" for k in ks]
        print(f"| {name} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
