"""Passes of more than 4 rows on the bf16 copies of the weights instead of the int8 kernel (``BF16_BULK_ROWS``).

Three parts, in one process, on the bundle (int8 decoding with its bf16 prompt copies; 2 threads):

1. One decoding step's four matrices of layer 0 at 1-16 rows: ``torch._weight_int8pack_mm`` against ``F.linear`` on
   the bf16 copy (median of 300 calls).
2. TTS of four held-out-style sentences, best_of 1 and best_of 2 chosen every 2 words, with ``max_rows`` 32 (the
   int8 kernel up to 32 rows, as before) and 4, alternating, best of 3 each: RTF per setting.
3. How far each setting's next-frame distributions are from fp32 when the words go in as TTS feeds them (a word's
   tokens in one pass, ``step_many``; frames one at a time) on the teacher-forced sequences of
   ``docs/results/int8_w8a8/divergence.py``.

    python docs/results/native_step/bulk_rows.py   # -> bulk_rows.json
"""
from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from codec.runtime import omp_defaults  # before torch loads

omp_defaults()

SENTENCES = ["The old lighthouse keeper climbed the spiral stairs every evening before sunset.",
             "Nobody expected the small bakery on the corner to win the national prize.",
             "Please remember to water the tomatoes while I am away next week.",
             "Thunder rolled over the valley as the travellers hurried toward the village inn."]


def set_rows(step, rows: int) -> None:
    from slm.generate import _MATRICES

    for layer in step.layers:
        for j in _MATRICES:
            layer[j].max_rows = rows
    step.layers = step.layers  # rebuild what both loops call


def matrices(step) -> dict:
    import torch
    import torch.nn.functional as F

    def med(f, n=300):
        for _ in range(30):
            f()
        ts = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return 1e6 * sorted(ts)[n // 2]

    out = {}
    for r in (1, 2, 4, 5, 8, 12, 16):
        a = b = 0.0
        for j in (1, 2, 4, 5):
            m = step.layers[0][j]
            x = torch.randn(r, m.qweight.shape[1]).bfloat16()
            a += med(lambda x=x, m=m: torch._weight_int8pack_mm(x, m.qweight, m.scale))
            b += med(lambda x=x, m=m: F.linear(x, m.bulk))
        out[r] = {"int8_us": a, "bf16_us": b, "int8_over_bf16": a / b}
        print(f"{r:>2} rows: int8 {a:6.0f} us, bf16 copy {b:6.0f} us, ratio {a / b:.2f}", flush=True)
    return out


def tts(pipe, step) -> dict:
    res = {}
    for name, kw in (("best_of_1", {}), ("best_of_2_every_2_words", {"best_of": 2, "best_of_words": 2})):
        best = {32: float("inf"), 4: float("inf")}
        for _ in range(3):
            for rows in (32, 4):
                set_rows(step, rows)
                t, sec = time.perf_counter(), 0.0
                for text in SENTENCES:
                    sec += pipe.tts(text, seed=0, **kw).shape[-1] / pipe.sample_rate
                best[rows] = min(best[rows], (time.perf_counter() - t) / sec)
        res[name] = {"rtf_max_rows_32": best[32], "rtf_max_rows_4": best[4], "speedup": best[32] / best[4]}
        print(f"{name}: RTF {best[32]:.3f} (max_rows 32) vs {best[4]:.3f} (4): {best[32] / best[4]:.2f}x", flush=True)
    return res


def divergence(pipe, steps: dict) -> dict:
    import torch
    import torch.nn.functional as F

    spec = importlib.util.spec_from_file_location("div", HERE.parent / "int8_w8a8" / "divergence.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)
    lay, m = pipe.layout, pipe.infer_lm
    rows = pipe.lm.get_output_embeddings().weight.detach()[lay.semantic_offset: lay.semantic_offset + lay.n_semantic]

    def logits(step, prompt, seq, at, word_ends):
        """Hidden states at the frame-predicting positions, feeding each word in one pass as TTS does."""
        with torch.no_grad():
            cache, _ = step.prefill(prompt) if step.prefill_prompt else (None, None)
            if cache is None:
                from adapters.backbones import out_cache
                cache = out_cache(m.get_decoder()(input_ids=prompt.view(1, -1), use_cache=True))
            st = step.start(cache, prompt.numel(), prompt.numel() + len(seq) + 1)
            hid, i = {}, 0
            while i < len(seq):
                j = word_ends.get(i, i)  # a word: its tokens i..j in one pass
                hid[j] = st.step_many(seq[i: j + 1]) if j > i else st.step(int(seq[i]))
                i = j + 1
            return torch.stack([hid[p] for p in at]) @ rows.T

    stats = {k: {"agree": 0, "kl": 0.0} for k in steps if k != "fp32"}
    n = 0
    for text in base.SENTENCES:
        prompt, seq, at = base.frame_sequence(pipe, text)
        sem = set(range(lay.semantic_offset, lay.semantic_offset + lay.n_semantic))
        word_ends, i = {}, 0
        while i < len(seq):
            if seq[i] in sem:
                i += 1
                continue
            j = i
            while j + 1 < len(seq) and seq[j + 1] not in sem:
                j += 1
            word_ends[i], i = j, j + 1
        ref = logits(steps["fp32"], prompt, seq, at, word_ends).log_softmax(-1)
        n += len(at)
        for k, st in stats.items():
            q = logits(steps[k], prompt, seq, at, word_ends).log_softmax(-1)
            st["agree"] += int((q.argmax(-1) == ref.argmax(-1)).sum())
            st["kl"] += float(F.kl_div(q, ref, log_target=True, reduction="sum"))
    out = {k: {"top1_agreement": v["agree"] / n, "mean_kl_nats": v["kl"] / n} for k, v in stats.items()}
    for k, v in out.items():
        print(f"{k}: KL(fp32 || it) {v['mean_kl_nats']:.5f} nats, same top token {v['top1_agreement']:.3f}", flush=True)
    return {"positions": n, "settings": out}


def main() -> dict:
    from benchmarks.common import machine
    from codec.runtime import set_threads
    from slm.generate import FusedStep
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    pipe = SpeechPipeline.from_pretrained("default", int8=True)
    step = pipe.infer_lm.fused_step
    if step.layers[0][1].bulk is None:
        raise SystemExit("this CPU does not multiply bf16 natively: int8 layers have no bf16 copies here")
    out = {"machine": machine(2), "matrices_layer0": matrices(step), "tts": tts(pipe, step)}
    fp32 = FusedStep(pipe.infer_lm, False)
    s32, s4 = FusedStep(pipe.infer_lm, "weights", bf16_prompt=True), FusedStep(pipe.infer_lm, "weights", bf16_prompt=True)
    set_rows(s32, 32)
    set_rows(s4, 4)
    out["divergence"] = divergence(pipe, {"fp32": fp32, "int8, max_rows 32": s32, "int8, max_rows 4": s4})
    set_rows(step, 4)
    (HERE / "bulk_rows.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
