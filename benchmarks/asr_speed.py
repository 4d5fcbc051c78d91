"""ASR-by-token speed: the fused ASR (CTC reader + lexicon + the backbone's LM at word ends) with its text LM
run through transformers' forward in float32 (the scorer as it was, the baseline) and in bfloat16, and through
the hand-written FusedStep forward in float32 and in bfloat16 (the default where the CPU has bf16 units); optionally one text
per forward (``naive``); the bfloat16 FusedStep search with ``lm_lag`` frames of delay before words are scored
(``--lags``: words that end close together share one forward); the reader alone (greedy CTC) as the floor. Same
model, same held-out clips, same threads, one run. Every fused row but the ``--lags`` ones runs the exact search
(``lm_lag`` 0), whatever the model's setting. ``--baseline`` names the row the others are compared to.

Each row transcribes every clip through ``SpeechPipeline.asr`` (codec encode included, as users call it);
WER / CER are corpus-level against the manifest's transcripts, so a speed-up that costs accuracy shows.

  python benchmarks/asr_speed.py checkpoints/default data/synth2h/manifest.test.jsonl --n 24 --threads 2 \
      --out docs/results/asr_speed.json --md docs/results/asr_speed.md
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a speech-LM dir with a CTC reader (the bundle: checkpoints/default)")
    ap.add_argument("manifest", help="held-out clips with transcripts (JSONL: path, text)")
    ap.add_argument("--n", type=int, default=24, help="clips (the manifest's first n)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", default="ctc,transformers,float32,transformers_bf16,bfloat16",
                    help="which rows, comma-separated (also: naive)")
    ap.add_argument("--lags", default="", help="lm_lag values for extra bfloat16 FusedStep rows, e.g. 2,4,8")
    ap.add_argument("--baseline", default="transformers",
                    help="the row the others are compared to (transformers, float32, bfloat16, ...)")
    ap.add_argument("--out", help="JSON of the rows")
    ap.add_argument("--md", help="a markdown table of the rows")
    args = ap.parse_args()

    import torch
    from tqdm import tqdm

    from adapters.judges.text import error_rates
    from benchmarks.common import machine
    from codec.audio import load_audio
    from codec.runtime import set_threads
    from slm.generate import fast_bf16
    from slm.lm_data import read_jsonl
    from slm.pipeline import SpeechPipeline

    set_threads(args.threads)
    pipe = SpeechPipeline.from_pretrained(args.model, int8=None)
    if pipe.reader is None:
        raise SystemExit(f"{args.model} has no CTC reader (ctc_reader/): the fused ASR needs one")
    sr = pipe.sample_rate
    rows_in = read_jsonl(args.manifest)[: args.n]
    base = Path(args.manifest).parent
    wavs = [load_audio(base / r["path"], sr) for r in rows_in]
    refs = [r["text"] for r in rows_in]
    audio_s = sum(w.shape[-1] for w in wavs) / sr
    fusion0 = pipe.fusion
    res = {"model": args.model, "manifest": args.manifest, "clips": len(wavs), "audio_seconds": round(audio_s, 2),
           "machine": machine(args.threads, dtype="per row: lm_dtype"), "fast_bf16": fast_bf16("cpu"),
           "fusion": dataclasses.asdict(fusion0), "rows": {}}

    def run(key: str, name: str, method: str, dtype: str | None = None, batch: int | None = None, step: bool = True,
            lag: int = 0) -> None:
        name += " (baseline)" if key == args.baseline else ""
        if dtype is not None:
            pipe.fusion = dataclasses.replace(fusion0, lm_dtype=dtype, lm_lag=lag)
        if method == "fused":
            sc = pipe.text_scorer()
            sc.batch = batch or 32
            keep, sc.step = sc.step, (sc.step if step else None)
            pipe.asr(wavs[0][:, :sr], sr, method=method)  # warm-up: lexicon, scorer copy, kernels
            sc.forwards = 0
        hyps, t0 = [], time.perf_counter()
        for w in tqdm(wavs, desc=name, unit="clip"):
            hyps.append(pipe.asr(w, sr, method=method))
        sec = time.perf_counter() - t0
        if method == "fused":
            sc.step = keep
        er = error_rates(refs, hyps)
        res["rows"][name] = {"key": key, "method": method, "lm_dtype": dtype, "scorer_batch": batch,
                             "fused_step": step, "lm_lag": lag if method == "fused" else None,
                             "lm_forwards": sc.forwards if method == "fused" else 0,
                             "seconds": round(sec, 2), "rtf": round(sec / audio_s, 3),
                             "wer": round(er.wer, 4), "cer": round(er.cer, 4), "hypotheses": hyps}
        print(f"{name}: RTF {sec / audio_s:.3f}  WER {er.wer:.3f}  CER {er.cer:.3f}", flush=True)

    want = args.rows.split(",")
    lags = [int(x) for x in args.lags.split(",") if x.strip()]
    with torch.inference_mode():
        if "ctc" in want:
            run("ctc", "reader alone (greedy CTC)", "ctc")
        if "transformers" in want:
            run("transformers", "fused, float32 LM, transformers' forward", "fused", "float32", 32, step=False)
        if "naive" in want:
            run("naive", "fused, float32 LM, FusedStep, one text per forward", "fused", "float32", 1)
        if "float32" in want:
            run("float32", "fused, float32 LM, FusedStep", "fused", "float32", 32)
        if "transformers_bf16" in want:
            run("transformers_bf16", "fused, bfloat16 LM, transformers' forward", "fused", "bfloat16", 32, step=False)
        if "bfloat16" in want:
            run("bfloat16", "fused, bfloat16 LM, FusedStep", "fused", "bfloat16", 32)
        for lag in lags:
            run(f"lag{lag}", f"fused, bfloat16 LM, FusedStep, lm_lag {lag}", "fused", "bfloat16", 32, lag=lag)
    rows = res["rows"]
    ref = next((r for r in rows.values() if r["key"] == args.baseline), None)
    for r in rows.values():
        r["speedup_vs_baseline"] = round(ref["seconds"] / r["seconds"], 2) if ref else None
    text = json.dumps(res, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if args.md:
        m = res["machine"]
        head = (f"{len(wavs)} held-out clips, {audio_s:.1f} s of audio; {m['cpu']}, {m['threads']} threads, "
                f"torch {m['torch']}; bf16 matmul units: {res['fast_bf16']}")
        lines = [head, "",
                 "| row | RTF | x baseline | LM forwards | WER | CER |", "|---|---|---|---|---|---|"]
        for k, r in rows.items():
            lines.append(f"| {k} | {r['rtf']:.3f} | {r['speedup_vs_baseline'] or '-'} | {r['lm_forwards']} | "
                         f"{r['wer']:.3f} | {r['cer']:.3f} |")
        Path(args.md).write_text("\n".join(lines) + "\n")
    print(text if not args.out else f"wrote {args.out}")


if __name__ == "__main__":
    main()
