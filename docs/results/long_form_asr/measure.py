"""Long-form ASR: held-out test clips joined into recordings with pauses, read by `SpeechPipeline.asr_segments`.

One run, one model load, the same clips in every row:
- ``clips``: each clip read on its own (`pipe.asr`), the baseline: what pre-cut sentences give;
- ``whole``: each recording read in one call, no splitting;
- ``segments_<S>``: each recording split at its pauses into segments of at most S seconds (`slm asr`'s way).
WER / CER are corpus-level over the recordings' joined references (adapters.judges.text.error_rates).

Run from the repo root:
  python docs/results/long_form_asr/measure.py checkpoints/default data/synth2h/manifest.test.jsonl \
      docs/results/long_form_asr/result.json --n 48 --per 12 --threads 2        # ~35 min on 2 threads
"""
from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np
import torch


def recordings(manifest: str, n: int, per: int, sr: int, seed: int = 0):
    """``[(wav [1, N], [clip spans], [texts])]``: the first ``n`` clips, ``per`` to a recording, each recording
    opening with 0.5 s and each clip followed by a pause of 0.3-0.9 s, over a -70 dBFS noise floor."""
    from codec.audio import load_audio
    from slm.lm_data import read_jsonl

    rows = read_jsonl(manifest)[:n]
    base = Path(manifest).parent
    rng = np.random.default_rng(seed)
    out = []
    for k in range(0, len(rows), per):
        pieces, spans, texts, pos = [np.zeros(int(0.5 * sr), np.float32)], [], [], int(0.5 * sr)
        for r in rows[k:k + per]:
            w = load_audio(base / r["path"], sr)[0].numpy()
            pause = np.zeros(int(rng.uniform(0.3, 0.9) * sr), np.float32)
            pieces += [w, pause]
            spans.append((pos, pos + w.size))
            texts.append(r["text"])
            pos += w.size + pause.size
        wav = np.concatenate(pieces)
        wav = wav + rng.normal(0, 10 ** (-70 / 20), wav.size).astype(np.float32)
        out.append((torch.from_numpy(wav)[None], spans, texts))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("manifest", help="held-out clips (a test split manifest)")
    ap.add_argument("out")
    ap.add_argument("--n", type=int, default=48)
    ap.add_argument("--per", type=int, default=12, help="clips per recording")
    ap.add_argument("--segments", default="15,8,4", help="segment bounds (s) to measure")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    from adapters.judges.text import error_rates
    from codec.runtime import set_threads
    from codec.segment import PauseConfig, split_at_pauses
    from slm.pipeline import SpeechPipeline, model_dir, read_model_config

    set_threads(args.threads)
    pipe = SpeechPipeline.from_pretrained(args.model, int8=None)  # the model's own setting, as the CLI
    sr = pipe.sample_rate
    recs = recordings(args.manifest, args.n, args.per, sr)
    audio_s = sum(w.shape[-1] for w, _, _ in recs) / sr
    refs = [" ".join(t) for _, _, t in recs]
    res = {"model": args.model, "manifest": args.manifest, "clips": args.n, "recordings": len(recs),
           "audio_seconds": round(audio_s, 2), "threads": args.threads, "asr_method": pipe.asr_method,
           "int8": bool(read_model_config(model_dir(args.model)).get("int8", False)), "rows": {}}
    pipe.asr(recs[0][0][:, : sr], sr)  # warm-up (lexicon, scorer), not timed

    def row(name, hyps, seconds, extra=None):
        er = error_rates(refs, hyps)
        res["rows"][name] = {"wer": round(er.wer, 4), "cer": round(er.cer, 4), "seconds": round(seconds, 1),
                             "rtf": round(seconds / audio_s, 3), "hypotheses": hyps, **(extra or {})}
        print(name, res["rows"][name]["wer"], res["rows"][name]["cer"], res["rows"][name]["rtf"], flush=True)

    t = time.perf_counter()
    hyps = [" ".join(pipe.asr(w[:, a:b], sr) for a, b in spans) for w, spans, _ in recs]
    row("clips", hyps, time.perf_counter() - t)

    t = time.perf_counter()
    row("whole", [pipe.asr(w, sr) for w, _, _ in recs], time.perf_counter() - t)

    for s in [float(x) for x in args.segments.split(",")]:
        cfg = PauseConfig(max_seconds=s)
        t = time.perf_counter()
        hyps = [" ".join(seg.text for seg in pipe.asr_segments(w, sr, cfg)) for w, _, _ in recs]
        took = time.perf_counter() - t
        # where the cuts fall: a cut inside a true pause splits between sentences; anywhere else, inside a word
        cuts_in_pause, cuts, n_segs, longest = 0, 0, 0, 0.0
        for w, spans, _ in recs:
            segs = split_at_pauses(w[0], sr, cfg)
            n_segs += len(segs)
            longest = max(longest, max((b - a) / sr for a, b in segs))
            for (_, end), (start, _) in itertools.pairwise(segs):
                cuts += 1
                mid = (end + start) / 2
                cuts_in_pause += any(b1 <= mid <= a2 for (_, b1), (a2, _) in itertools.pairwise(spans))
        row(f"segments_{s:g}", hyps, took, {"segments": n_segs, "longest_segment_s": round(longest, 2),
                                             "cuts": cuts, "cuts_in_a_pause": cuts_in_pause})
    res["references"] = refs
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
