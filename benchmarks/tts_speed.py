"""TTS speed on CPU: our streaming loop (backbone + acoustic head + codec) vs plain ``model.generate``.

Same backbone, same prompt (the text with the pipeline's default voice, as ``pipe.tts`` builds it),
same number of semantic tokens, same threads, side by side in one run; every row is the best of
``--repeats`` runs (the best run is the one least disturbed by other work on a shared machine).

Rows: ``model.generate`` (greedy, KV cache) on the backbone the pipeline generates with (the LoRA
adapter merged in); our loop, LM only, on that merged backbone (one-token steps through
``slm.generate.FusedStep``; and through transformers' forward) and on the unmerged peft model (what
generation ran on before merging); full streaming TTS (LM + acoustic head per frame + codec decode
per chunk) with its real-time factor and time to first audio; optionally the aligned TTS form
(``--aligned``: the text's words fed before their frames, as many frames as the model makes; each word in one
decoding pass, and, as the baseline of that, token by token), best-of-N TTS (``--best-of N``: the N candidates
decoded side by side, and, as the baseline, one after another), int8 backbone
weights (``--int8``, ``SpeechPipeline.from_pretrained(..., int8=True)``: the acoustic head in int8 as well, and,
as the baseline of that, the ``_fp32_head`` rows with the head in fp32; the layer loop in C++, ``slm.native``, and,
as the baseline of that, the ``_python_loop`` rows with the same int8 matrices through the Python loop; where the
int8 matmul runs on AMX tiles, the ``_vnni`` rows with it on AVX512-VNNI instead), with int8 activations as well (``--int8
--w8a8``: the ``_w8a8`` rows, ``int8="w8a8"``; compare with the ``_int8`` rows) and in bfloat16 (``--bf16``).

    python benchmarks/tts_speed.py --threads 2 --frames 50                 # the bundled default
    python benchmarks/tts_speed.py --model untrained --threads 2            # random SmolLM2 stack
    python benchmarks/tts_speed.py --out docs/results/tts_speed.json --md docs/results/tts_speed.md
    python benchmarks/tts_speed.py --int8 --w8a8 --best-of 2 --best-of-words 2 --no-fp32-best-of --no-unmerged
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from codec.runtime import omp_defaults  # before torch loads: how OpenMP threads wait

omp_defaults()

from benchmarks.common import machine, peak_rss_mb, write_json, write_markdown


def _build(args):
    import torch

    from adapters.backbones import extend_vocabulary, load_backbone
    from adapters.lora import LoraSettings, apply_lora
    from codec.config import CodecConfig
    from codec.model import DualStreamCodec
    from slm.acoustic_head import AcousticHead, AcousticHeadConfig
    from slm.layout import TokenLayout
    from slm.pipeline import SpeechPipeline

    if args.model != "untrained":
        return SpeechPipeline.from_pretrained(args.model)  # merges the adapter for inference
    torch.manual_seed(0)  # speed does not depend on the weights' values
    codec = DualStreamCodec(CodecConfig.default(args.variant)).eval()
    bb = load_backbone(args.backbone)
    layout = TokenLayout.for_tokenizer(bb.tokenizer, codec.semantic_codebook_size)
    extend_vocabulary(bb.model, bb.tokenizer, layout)
    lm = apply_lora(bb.model, LoraSettings(), layout.new_ids())
    head = None
    if codec.n_acoustic_codebooks:
        head = AcousticHead(AcousticHeadConfig(bb.model.config.hidden_size, codec.semantic_codebook_size,
                                               codec.acoustic_codebook_size, codec.n_acoustic_codebooks,
                                               round(codec.acoustic_rate / codec.semantic_rate)))
    return SpeechPipeline(lm, bb.tokenizer, layout, codec, head, merge=True)


def _best(fn, repeats: int) -> dict:
    """Run ``fn`` (returns a dict of extra figures) ``repeats`` times; keep the fastest run."""
    best = None
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        extra = fn() or {}
        row = {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c, **extra}
        best = row if best is None or row["seconds"] < best["seconds"] else best
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="default", help="a speech-LM dir, 'default' (the bundled default) or "
                                                       "'untrained' (random SmolLM2 stack, fresh LoRA)")
    ap.add_argument("--backbone", default="smollm2-135m", help="backbone of the untrained stack")
    ap.add_argument("--variant", default="sacodec", help="codec variant of the untrained stack")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=50, help="semantic tokens to generate")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bf16", action="store_true", help="also time streaming TTS with a bfloat16 backbone + head")
    ap.add_argument("--int8", action="store_true", help="also time streaming TTS with int8 backbone weights")
    ap.add_argument("--w8a8", action="store_true", help="with --int8: also time the int8 rows with int8 activations "
                                                       "(SpeechPipeline.from_pretrained(..., int8='w8a8'))")
    ap.add_argument("--no-fp32-best-of", action="store_true", help="with --int8: time the best-of rows in int8 only")
    ap.add_argument("--aligned", action="store_true", help="also time streaming TTS in the aligned form (the text's "
                                                          "words fed before their frames; its own length)")
    ap.add_argument("--best-of", type=int, default=0, help="also time best-of-N TTS of --text (pipe.tts_stream, "
                    "seed 0): N candidates decoded side by side, one after another (the baseline), and best_of 1")
    ap.add_argument("--best-of-words", type=int, default=0, metavar="W", help="with --best-of: also time the "
                    "choice every W words (aligned form: the chosen words stream while the rest is drawn)")
    ap.add_argument("--no-unmerged", action="store_true", help="skip the (slow) unmerged peft row")
    ap.add_argument("--text", default="The quick brown fox jumps over the lazy dog, twice.")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    ap.add_argument("--md", default=None, help="write the printed markdown table here")
    args = ap.parse_args()

    import torch

    from codec.runtime import set_threads
    from slm.generate import Sampling, generate_frames

    set_threads(args.threads)
    load_before = os.getloadavg()
    pipe = _build(args)
    _, prompt, _, _, voice, _, _ = next(pipe._tts_plan(args.text, None, None, None, None, 20.0, 0, False))
    n = args.frames
    s = Sampling(temperature=0.8, top_k=50, top_p=0.95)
    audio_s = n / pipe.codec.semantic_rate
    lm, head = pipe.infer_lm, pipe.head

    def lm_only(model):
        list(generate_frames(model, pipe.layout, prompt, None, s, n, None, torch.Generator().manual_seed(0), n))

    def plain():
        with torch.no_grad():
            lm.generate(input_ids=prompt[None], attention_mask=torch.ones(1, prompt.numel(), dtype=torch.long),
                        max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pipe.tokenizer.eos_token_id)

    def streaming(aligned: bool = False):
        """Full streaming TTS of ``n`` frames; ``aligned``: the aligned form (the text's words fed before their
        frames) as long as the model makes it, its RTF counting the audio it made (the word tokens are extra
        decoding steps that make no audio)."""
        p, sa, hi, v, kw = prompt, s, n, voice, {"min_frames": n}
        if aligned:
            _, p, sa, hi, v, _, kw = next(pipe._tts_plan(args.text, None, 0.8, 50, 0.95, 20.0, 0, True))
        t = time.perf_counter()
        first, samples = None, 0
        for chunk in pipe._stream_frames(p, sa, hi, v, torch.Generator().manual_seed(0), **kw):
            first = first if first is not None else time.perf_counter() - t
            samples += chunk.shape[-1]
        sec = samples / pipe.sample_rate
        return {"time_to_first_audio_s": first, "audio_seconds": sec,
                **({"frames": round(sec * pipe.codec.semantic_rate)} if aligned else {})}

    def best_of_rows(suffix: str = "") -> None:
        """Best-of-N TTS of the whole text as users call it: its candidates side by side (one padded decoding
        pass per step) vs one after another (the loop before), and best_of 1; RTF per second of audio made."""
        import slm.generate as G

        def run(k: int, every: int = 0) -> dict:
            t, first, samples = time.perf_counter(), None, 0
            for chunk in pipe.tts_stream(args.text, seed=0, best_of=k, best_of_words=every):
                first = first if first is not None else time.perf_counter() - t
                samples += chunk.shape[-1]
            sec = samples / pipe.sample_rate
            return {"time_to_first_audio_s": first, "audio_seconds": sec,
                    "frames": round(sec * pipe.codec.semantic_rate)}

        def one_after_another(model, layout, p, h, sa, hi, k, v, gen, **kw):
            return [list(generate_frames(model, layout, p, h, sa, hi, v, gen, **kw)) for _ in range(k)]

        rows[f"tts_best_of_1{suffix}"] = _best(lambda: run(1), args.repeats)
        rows[f"tts_best_of_{args.best_of}_side_by_side{suffix}"] = _best(lambda: run(args.best_of), args.repeats)
        if args.best_of_words:
            rows[f"tts_best_of_{args.best_of}_every_{args.best_of_words}_words{suffix}"] = _best(
                lambda: run(args.best_of, args.best_of_words), args.repeats)
        together, G.generate_candidates = G.generate_candidates, one_after_another
        try:
            rows[f"tts_best_of_{args.best_of}_one_after_another{suffix}"] = _best(lambda: run(args.best_of),
                                                                                   args.repeats)
        finally:
            G.generate_candidates = together

    def model_rows(model, suffix: str) -> None:
        """The LM-only, streaming (and aligned, best-of) rows of ``model``, the one ``pipe`` generates with."""
        rows[f"our_loop_lm_only{suffix}"] = _best(lambda: lm_only(model), args.repeats)
        rows[f"streaming_tts{suffix}"] = _best(streaming, args.repeats)
        if args.aligned:
            rows[f"streaming_tts_aligned{suffix}"] = _best(lambda: streaming(aligned=True), args.repeats)
        if args.best_of > 1:
            best_of_rows(suffix)

    lm_only(lm)  # warm-up (first-call allocations, lazy inits)
    rows = {"hf_generate": _best(plain, args.repeats), "our_loop_lm_only": _best(lambda: lm_only(lm), args.repeats)}
    rows["streaming_tts"] = _best(streaming, args.repeats)
    if args.aligned:
        rows["streaming_tts_aligned"] = _best(lambda: streaming(aligned=True), args.repeats)
        # the baseline of the one-pass word feed: each word token in a decoding step of its own (as before)
        from slm.generate import Decoder

        whole = Decoder.push_many
        Decoder.push_many = lambda self, tokens: [self.push(int(t)) for t in tokens] and None
        try:
            rows["streaming_tts_aligned_token_by_token"] = _best(lambda: streaming(aligned=True), args.repeats)
        finally:
            Decoder.push_many = whole
    if args.best_of > 1 and not (args.int8 and args.no_fp32_best_of):
        best_of_rows()
    if not args.no_unmerged and pipe.lm is not lm:  # what generation ran on before merging
        rows["our_loop_lm_only_unmerged"] = _best(lambda: lm_only(pipe.lm), max(1, args.repeats - 1))
        pipe.infer_lm = pipe.lm
        rows["streaming_tts_unmerged"] = _best(streaming, max(1, args.repeats - 1))
        pipe.infer_lm = lm
    if getattr(lm, "fused_step", None) is not None:  # the same merged model stepped by transformers' forward
        fused = lm.fused_step
        del lm.fused_step
        rows["our_loop_lm_only_transformers_step"] = _best(lambda: lm_only(lm), max(1, args.repeats - 1))
        lm.fused_step = fused
    if args.int8:
        from slm.generate import inference_copy

        pipe.infer_lm = lm8 = inference_copy(pipe.lm, int8=True)
        lm_only(lm8)
        rows["our_loop_lm_only_int8"] = _best(lambda: lm_only(lm8), args.repeats)
        # int8 backbone with the acoustic head in fp32 (as before) and in int8 (what int8 decoding does now)
        head_int8 = pipe.head_int8
        for on, tag in ((False, "_fp32_head"), (True, "")):
            pipe.head_int8 = on
            rows[f"streaming_tts_int8{tag}"] = _best(streaming, args.repeats)
            if args.aligned:
                rows[f"streaming_tts_aligned_int8{tag}"] = _best(lambda: streaming(aligned=True), args.repeats)
            if args.best_of > 1:
                best_of_rows(f"_int8{tag}")
        native = lm8.fused_step._native if getattr(lm8, "fused_step", None) is not None else None
        from slm.native import int8_kernel

        if native is not None and int8_kernel() == "amx":  # the C++ loop with the AVX512-VNNI matmul instead
            os.environ["SLM_NATIVE_AMX"] = "0"
            try:
                model_rows(lm8, "_int8_vnni")
            finally:
                del os.environ["SLM_NATIVE_AMX"]
        if native is not None:  # the same int8 matrices through the Python layer loop: the C++ loop's baseline
            lm8.fused_step._native = None
            model_rows(lm8, "_int8_python_loop")
            lm8.fused_step._native = native
        pipe.infer_lm, pipe.head_int8 = lm, head_int8
        del lm8
    if args.int8 and args.w8a8:  # int8 activations as well, on the backbone's qkv and gate_up (the head: int8 weights)
        from slm.generate import inference_copy

        pipe.infer_lm = lmq = inference_copy(pipe.lm, int8="w8a8")
        head_int8, pipe.head_int8 = pipe.head_int8, "w8a8"
        lm_only(lmq)
        model_rows(lmq, "_w8a8")
        pipe.infer_lm, pipe.head_int8 = lm, head_int8
        del lmq
    if args.bf16:
        from slm.generate import FusedStep, inference_copy

        pipe.infer_lm = lmb = inference_copy(pipe.lm).to(torch.bfloat16)
        if FusedStep.supports(lmb):
            lmb.fused_step = FusedStep(lmb)  # re-fused from the bf16 weights
        if head is not None:
            head.to(torch.bfloat16)
        lm_only(lmb)
        rows["streaming_tts_bf16"] = _best(streaming, args.repeats)
    for r in rows.values():
        r["tokens_per_s"] = r.get("frames", n) / r["seconds"]
        r["rtf"] = r["seconds"] / r.get("audio_seconds", audio_s)  # LM-only rows: per second of audio it codes
    base = rows["hf_generate"]["rtf"]
    for r in rows.values():  # per second of audio: the aligned rows make as many frames as the model chooses
        r["speed_vs_hf_generate"] = base / r["rtf"]

    res = {"benchmark": "tts speed", "model": args.model, "machine": machine(args.threads, "float32"),
           "dtype": "float32" + (" (+ int8-weight rows)" if args.int8 else "") + (" (+ w8a8 rows)" if args.int8 and args.w8a8 else "") + (" (+ bfloat16 row)" if args.bf16 else ""), "frames": n,
           "semantic_rate": pipe.codec.semantic_rate, "audio_seconds": audio_s, "prompt_tokens": int(prompt.numel()),
           "chunk_frames": pipe.chunk_frames, "first_chunk_frames": pipe.first_chunk_frames,
           "load_average_1m": [load_before[0], os.getloadavg()[0]], "peak_rss_mb": peak_rss_mb(), "rows": rows}
    write_markdown(args.md, _markdown(res))
    write_json(args.out, res)
    return 0


def _markdown(res: dict) -> str:
    m = res["machine"]
    head = (f"TTS speed, {res['model']}: {res['frames']} semantic tokens ({res['audio_seconds']:.1f} s of audio at "
            f"{res['semantic_rate']:g} Hz), prompt {res['prompt_tokens']} tokens; {m['cpu']}, {m['threads']} threads, "
            f"{res['dtype']}, torch {m['torch']}, OMP_WAIT_POLICY={m['omp_wait_policy'] or 'unset'} "
            f"GOMP_SPINCOUNT={m.get('gomp_spincount') or 'unset'}, load average "
            f"(1 min) {res['load_average_1m'][0]:.1f} -> {res['load_average_1m'][1]:.1f}; best of repeats.")
    lines = [head, "", "| row | tokens/s | seconds | CPU s | RTF | first audio s | vs model.generate |",
             "|---|---|---|---|---|---|---|"]
    for name, r in res["rows"].items():
        first = r.get("time_to_first_audio_s")
        lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {r['seconds']:.2f} | {r['cpu_seconds']:.2f} | "
                     f"{r['rtf']:.2f} | {'–' if first is None else f'{first:.2f}'} | {r['speed_vs_hf_generate']:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
