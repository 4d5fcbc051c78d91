"""The int8 matmul of the C++ loop on AMX tiles against its AVX512-VNNI form, torch's int8 kernel and the bf16
weight copies that passes of more than ``BF16_BULK_ROWS`` rows use, on the bundle's 120 int8 matrices (SmolLM2-135M:
30 layers x qkv, o, gate_up, down; 106 MB, read from memory on every pass as in decoding), 2 threads.

Each kernel: the best of 3 medians of 20 passes over all 120 matrices, the four alternating. Also whether the AMX
and VNNI outputs are the same bits (they sum the same integers exactly, so they must be).

    python docs/results/amx_step/kernels.py   # -> kernels.json
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from codec.runtime import omp_defaults  # before torch loads

omp_defaults()

_spec = importlib.util.spec_from_file_location("vnni_kernels", HERE.parent / "vnni_step" / "kernels.py")
_vnni = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_vnni)
median_ms = _vnni.median_ms


def main() -> dict:
    import torch
    import torch.nn.functional as F

    from benchmarks.common import machine
    from codec.runtime import set_threads
    from slm.generate import _MATRICES, BF16_BULK_ROWS, FusedStep
    from slm.native import int8_kernel
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    pipe = SpeechPipeline.from_pretrained("default", threads=2, int8=None)
    f = pipe.infer_lm.fused_step
    assert isinstance(f, FusedStep) and f._native is not None, "the bundle decodes without the native loop here"
    assert int8_kernel() == "amx", f"no AMX here (int8 kernel: {int8_kernel()})"
    mats = [(layer[j].qweight, layer[j].scale, layer[j].qweight.sum(1, dtype=torch.int32),
             (layer[j].qweight.float() * layer[j].scale.float()[:, None]).bfloat16())
            for layer in f.layers for j in _MATRICES]
    out = {"machine": machine(2), "threads": 2, "bf16_bulk_rows": BF16_BULK_ROWS,
           "weights_mb": sum(q.numel() for q, *_ in mats) / 1e6, "matmuls": {}}
    op = torch.ops.slm_native.int8_mm

    def native(xs, amx: str):
        os.environ["SLM_NATIVE_AMX"] = amx
        return [op(xs[q.shape[1]], q, s, ws) for q, s, ws, _ in mats]

    kernels = {"torch": lambda xs: [torch._weight_int8pack_mm(xs[q.shape[1]], q, s) for q, s, *_ in mats],
               "vnni": lambda xs: native(xs, "0"), "amx": lambda xs: native(xs, "1"),
               "bf16_copies": lambda xs: [F.linear(xs[q.shape[1]], wb) for q, *_, wb in mats]}
    g = torch.Generator().manual_seed(0)
    for rows in (1, 2, 4, 8, 12, 16, 20, 28, 36):
        xs = {k: torch.randn(rows, k, generator=g).bfloat16() for k in {q.shape[1] for q, *_ in mats}}
        same = all(torch.equal(a, b) for a, b in zip(native(xs, "1"), native(xs, "0")))
        best = dict.fromkeys(kernels, float("inf"))
        for _ in range(3):
            for name, fn in kernels.items():
                best[name] = min(best[name], median_ms(lambda fn=fn, xs=xs: fn(xs), 20))
        os.environ.pop("SLM_NATIVE_AMX", None)
        out["matmuls"][rows] = {**{f"{k}_ms": v for k, v in best.items()}, "amx_same_bits_as_vnni": same}
        print(f"{rows:>2} rows: " + ", ".join(f"{k} {v:.2f} ms" for k, v in best.items())
              + f"; AMX = VNNI bit for bit: {same}", flush=True)
    (HERE / "kernels.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
