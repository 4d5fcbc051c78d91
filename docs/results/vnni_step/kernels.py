"""The C++ layer loop's own kernels against torch's, on the bundle's decoding step (int8, 2 threads).

1. The int8 matmuls of one step: the 120 int8 matrices of SmolLM2-135M (30 layers x qkv, o, gate_up, down; 106 MB,
   more than the caches hold, so every call reads its weights from memory as decoding does) at 1-16 rows,
   ``torch._weight_int8pack_mm`` against ``slm.native.int8_mm`` (AVX512-VNNI), median of 30 passes, alternating.
   Also how often the two kernels' bf16 outputs differ at all.
2. One whole step of the C++ loop (``torch.ops.slm_native.fused_layers``) with its own attention against torch's
   SDPA inside the same loop (``SLM_NATIVE_SDPA=1``), one and two rows, 20 and 280 positions (a TTS sentence's
   prompt is ~180 positions), median of 60 calls, alternating.

    python docs/results/vnni_step/kernels.py   # -> kernels.json
"""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from codec.runtime import omp_defaults  # before torch loads

omp_defaults()


def median_ms(fn, n: int) -> float:
    for _ in range(5):
        fn()
    ts = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return 1000 * sorted(ts)[n // 2]


def main() -> dict:
    import torch

    from benchmarks.common import machine
    from codec.runtime import set_threads
    from slm.generate import _MATRICES, FusedStep
    from slm.native import int8_kernel, int8_mm
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    pipe = SpeechPipeline.from_pretrained("default", threads=2, int8=None)
    f = pipe.infer_lm.fused_step
    assert isinstance(f, FusedStep) and f._native is not None, "the bundle decodes without the native loop here"
    mats = [(layer[j].qweight, layer[j].scale, layer[j].qweight.sum(1, dtype=torch.int32))
            for layer in f.layers for j in _MATRICES]
    out = {"machine": machine(2), "threads": 2, "int8_kernel": int8_kernel(),
           "weights_mb": sum(q.numel() for q, _, _ in mats) / 1e6, "matmuls": {}, "step": {}}

    native_mm = torch.ops.slm_native.int8_mm
    g = torch.Generator().manual_seed(0)
    for rows in (1, 2, 4, 8, 16):
        xs = {k: torch.randn(rows, k, generator=g).bfloat16() for k in {q.shape[1] for q, _, _ in mats}}
        same = total = 0
        for q, s, ws in mats:
            a, b = torch._weight_int8pack_mm(xs[q.shape[1]], q, s), int8_mm(xs[q.shape[1]], q, s, ws)
            same, total = same + int((a == b).sum()), total + a.numel()
        best = {"torch": float("inf"), "native": float("inf")}
        for _ in range(3):
            best["torch"] = min(best["torch"], median_ms(
                lambda xs=xs: [torch._weight_int8pack_mm(xs[q.shape[1]], q, s) for q, s, _ in mats], 30))
            best["native"] = min(best["native"], median_ms(  # the op itself, as the loop calls it
                lambda xs=xs: [native_mm(xs[q.shape[1]], q, s, ws) for q, s, ws in mats], 30))
        out["matmuls"][rows] = {"torch_ms": best["torch"], "native_ms": best["native"],
                                "speedup": best["torch"] / best["native"], "same_outputs": same / total}
        print(f"{rows:>2} rows: torch {best['torch']:.2f} ms, native {best['native']:.2f} ms "
              f"({best['torch'] / best['native']:.2f}x); outputs identical {same / total:.4%}", flush=True)

    op, lists, max_rows, _ = f._native
    L = len(f.layers)
    for B in (1, 2):
        for span in (20, 280):
            K = torch.randn(L, B, f.nkv, 532, f.hd, generator=g) * 0.5
            V = torch.randn(L, B, f.nkv, 532, f.hd, generator=g)
            cos, sin = f.rotary(K[0], torch.arange(532)[None])
            cos, sin = cos[0].contiguous(), sin[0].contiguous()
            x = torch.randn(B, 1, f.embed.shape[1], generator=g)
            pos = torch.full((B, 1), span - 1)
            mask = (torch.arange(span) <= pos[:, :, None])[:, None] if B > 1 else None

            step = functools.partial(op, x, *lists, K, V, pos, cos, sin, mask, span, f.nh, f.nkv, float(f.eps),
                                     max_rows)

            best = {"sdpa": float("inf"), "own": float("inf")}
            for _ in range(3):
                for name, env in (("sdpa", "1"), ("own", "0")):
                    os.environ["SLM_NATIVE_SDPA"] = env
                    best[name] = min(best[name], median_ms(step, 60))
            os.environ["SLM_NATIVE_SDPA"] = "0"
            out["step"][f"rows{B}_span{span}"] = {"sdpa_ms": best["sdpa"], "own_ms": best["own"],
                                                  "speedup": best["sdpa"] / best["own"]}
            print(f"step, {B} row(s), {span} positions: SDPA {best['sdpa']:.2f} ms, own attention "
                  f"{best['own']:.2f} ms ({best['sdpa'] / best['own']:.2f}x)", flush=True)
    (HERE / "kernels.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
