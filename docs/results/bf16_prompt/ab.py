"""int8 decoding's prompt in fp32 through transformers (before) and through the fused loop on bf16 weights (after).

Both forms live in one pipeline: ``FusedStep.prefill_prompt`` picks which one a sentence's prompt takes
(transformers' fp32 forward, or :meth:`slm.generate.FusedStep.prefill` on the int8 layers' bf16 copies). The
decoding steps after it are the same int8 steps either way. Alternating, best of ``--repeats``:

- the prefill of the bundle's TTS prompt (the default voice's transcript and tokens plus the first sentence of
  ``--text``), for int8 weights and w8a8: time, and how far its K/V and last hidden state are from fp32;
- whole TTS of ``--text`` with the bundle as the CLI runs it (int8 weights): best_of 1, and best_of 2 chosen
  every 2 words; real-time factor and time to first audio.

    python docs/results/bf16_prompt/ab.py --out docs/results/bf16_prompt/ab.json --md docs/results/bf16_prompt/ab.md
"""
from __future__ import annotations

import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)
from codec.runtime import omp_defaults  # before torch loads

omp_defaults()

from benchmarks.common import ab_parser, machine, write_json, write_markdown


def _rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def main() -> None:
    args = ab_parser(__doc__, os.path.join(ROOT, "checkpoints", "default")).parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from slm.generate import Decoder, fast_bf16
    from slm.pipeline import SpeechPipeline, split_sentences
    from slm.templates import tts_prompt

    if not fast_bf16("cpu"):
        raise SystemExit("this CPU has no native bf16 matmuls (AVX512-BF16 / AMX): the bf16 prompt is off here")
    load = os.getloadavg()[0]
    rows: list[dict] = []

    def alternate(f, fn) -> tuple[dict, dict]:
        """``fn() -> (seconds, output)`` with the prompt in each form in turn: best time, last output of each."""
        best, out = {}, {}
        for _ in range(args.repeats):
            for name, flag in (("before", False), ("after", True)):
                f.prefill_prompt = flag
                sec, out[name] = fn()
                best[name] = min(best.get(name, 1e9), sec)
        f.prefill_prompt = True
        return best, out

    for mode in ("weights", "w8a8"):
        pipe = SpeechPipeline.from_pretrained(args.model, int8=mode)
        lm, f = pipe.infer_lm, pipe.infer_lm.fused_step
        v = pipe._voice(None)
        prompt = tts_prompt(pipe.tokenizer, pipe.layout, split_sentences(args.text)[0], v.text, v.tokens.semantic[0])
        allowed = torch.arange(pipe.layout.base_vocab, pipe.layout.base_vocab + pipe.layout.n_semantic)

        def prefill(lm=lm, prompt=prompt, allowed=allowed):
            t = time.perf_counter()
            d = Decoder(lm, prompt, allowed, max_new=8)
            return time.perf_counter() - t, d

        best, out = alternate(f, prefill)
        a, b = out["before"], out["after"]
        bulk = sum(m.bulk.numel() * m.bulk.element_size() for layer in f.layers for m in layer
                   if getattr(m, "bulk", None) is not None)
        rows.append({"what": f"prefill, {prompt.numel()}-token TTS prompt, int8 {mode}", "unit": "ms",
                     "before": best["before"] * 1e3, "after": best["after"] * 1e3,
                     "keys_rel_err_last_layer": _rel(b.cache.layers[-1].keys, a.cache.layers[-1].keys),
                     "hidden_rel_err": _rel(b.hidden, a.hidden),
                     "same_argmax": int(a.logits.argmax()) == int(b.logits.argmax()),
                     "bf16_copies_mb": bulk / 2**20})
        print(rows[-1], flush=True)

    pipe = SpeechPipeline.from_pretrained(args.model, int8=True)
    f = pipe.infer_lm.fused_step

    def tts(k: int, every: int) -> tuple[float, tuple]:
        t = time.perf_counter()
        chunks, first = [], None
        for c in pipe.tts_stream(args.text, seed=0, best_of=k, best_of_words=every):
            first = time.perf_counter() - t if first is None else first
            chunks.append(c)
        wav = torch.cat(chunks, -1)
        return (time.perf_counter() - t) / (wav.shape[-1] / pipe.sample_rate), (first, wav.shape[-1])

    for k, every in ((1, 0), (2, 2)):
        tts(k, every)  # warm-up
        firsts: dict[str, float] = {}

        def run(k=k, every=every, firsts=firsts):
            rtf, (first, n) = tts(k, every)
            name = "after" if f.prefill_prompt else "before"
            firsts[name] = min(firsts.get(name, 1e9), first)
            return rtf, n

        best, out = alternate(f, run)
        rows.append({"what": f"TTS, int8 weights, best_of {k}" + (f" every {every} words" if every else ""),
                     "unit": "RTF", "before": best["before"], "after": best["after"],
                     "first_audio_s": firsts, "samples": out})
        print(rows[-1], flush=True)

    m = machine(args.threads, "float32; int8 decoding steps; prompt: fp32 (before) / bf16 matmuls (after)")
    res = {"threads": args.threads, "repeats": args.repeats, "text": args.text, "machine": m,
           "load_avg_1min": [load, os.getloadavg()[0]], "rows": rows}
    if args.out:
        write_json(args.out, res)
    lines = [(f"int8 decoding's prompt: fp32 through transformers (before) and bf16 through the fused loop (after), "
              f"one run; {m['cpu']}, {args.threads} threads, torch {m['torch']}, best of {args.repeats}; load average "
              f"(1 min) {load:.1f} -> {os.getloadavg()[0]:.1f}."), "",
             "| what | before | after | speed-up | notes |", "|---|---|---|---|---|"]
    for r in rows:
        if r["unit"] == "ms":
            fmt = "{:.1f} ms"
            note = (f"keys (last layer) {100 * r['keys_rel_err_last_layer']:.2f}% and hidden state "
                    f"{100 * r['hidden_rel_err']:.2f}% from fp32 (relative); same top token: "
                    f"{'yes' if r['same_argmax'] else 'no'}; bf16 copies {r['bf16_copies_mb']:.0f} MB")
        else:
            fmt = "RTF {:.3f}"
            fa = r["first_audio_s"]
            note = f"first audio {fa['before']:.2f} s -> {fa['after']:.2f} s"
        lines.append(f"| {r['what']} | {fmt.format(r['before'])} | {fmt.format(r['after'])} | "
                     f"{r['before'] / r['after']:.2f}x | {note} |")
    write_markdown(args.md, lines)


if __name__ == "__main__":
    main()
