"""Decoding matmuls of SmolLM2-135M's shape on CPU: int8 weights only (``torch._weight_int8pack_mm``, what
``int8=True`` decodes with), int8 activations as well (``quantized::linear_dynamic``) on every matrix, and on qkv
and gate_up only with o and down weight-only (what ``int8="w8a8"`` decodes with), against fp32 ``F.linear`` (the
named baseline, same run), at the row counts decoding meets: 1 (a token), 2-4 (best-of candidates side by side),
8-16 (a word fed at once, or several candidates feeding words).

Each row times one decoding step's matrices for every layer (30 layers x qkv, o, gate_up, down; distinct
weights, so they stream from memory as in decoding), best of ``--repeats`` runs.

    python benchmarks/int8_kernels.py --threads 2 --out docs/results/int8_w8a8/kernels.json --md docs/results/int8_w8a8/kernels.md
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from codec.runtime import omp_defaults  # before torch loads: how OpenMP threads wait

omp_defaults()

from benchmarks.common import machine, write_json, write_markdown

SHAPES = {"qkv": (576, 960), "o": (576, 576), "gate_up": (576, 3072), "down": (1536, 576)}  # (in, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layers", type=int, default=30)
    ap.add_argument("--rows", default="1,2,4,8,16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="decoding steps per timed run")
    ap.add_argument("--out", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()

    import torch
    import torch.nn.functional as F

    from codec.runtime import set_threads
    from slm.generate import _MATRICES, _W8A8, Int8Linear

    set_threads(args.threads)
    torch.manual_seed(0)
    act = {name for name, j in zip(SHAPES, _MATRICES) if j in _W8A8}  # the w8a8 mode's int8-activation matrices
    mats = []  # (fp32 linear, weights-only, w8a8 on it, the w8a8 mode's form) per matrix of every layer
    for _ in range(args.layers):
        for name, (k, n) in SHAPES.items():
            lin = torch.nn.Linear(k, n, bias=False)
            w, a = Int8Linear(lin), Int8Linear(lin, activations=True)
            mats.append((lin, w, a, a if name in act else w))
    kinds = {"fp32": 0, "int8_weights": 1, "w8a8_every_matrix": 2, "w8a8": 3}
    rows_out: dict[str, dict] = {}
    for m in [int(x) for x in args.rows.split(",")]:
        xs = {k: torch.randn(m, k) for k, _ in SHAPES.values()}
        res = {}
        for name, j in kinds.items():
            def step(j=j, xs=xs):
                for t in mats:
                    f = t[j]
                    x = xs[f.weight.shape[1]]
                    F.linear(x, f.weight) if j == 0 else f(x)
            with torch.no_grad():
                step()
                best = float("inf")
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        step()
                    best = min(best, (time.perf_counter() - t0) / args.steps)
            res[name] = {"ms_per_step": best * 1e3}
        for r in res.values():
            r["speed_vs_fp32"] = res["fp32"]["ms_per_step"] / r["ms_per_step"]
        rows_out[str(m)] = res
    one = {k: rows_out[min(rows_out, key=int)][k]["ms_per_step"] for k in kinds}
    for res in rows_out.values():  # how each kernel's time grows with the rows
        for k, r in res.items():
            r["vs_its_one_row"] = r["ms_per_step"] / one[k]
    out = {"benchmark": "int8 decoding kernels", "machine": machine(args.threads, "float32 / int8"),
           "layers": args.layers, "shapes": SHAPES, "w8a8_activation_matrices": sorted(act), "rows": rows_out}
    m_ = out["machine"]
    title = (f"Decoding matmuls, {args.layers} layers of SmolLM2-135M's shapes per step; {m_['cpu']}, "
             f"{m_['threads']} threads, torch {m_['torch']}; best of {args.repeats} runs of {args.steps} steps. "
             f"w8a8 (the mode): int8 activations on {' and '.join(sorted(act))}, int8 weights only on the rest.")
    header = ("| rows | fp32 ms | int8 weights ms | w8a8 every matrix ms | w8a8 ms | int8 weights vs fp32 "
              "| w8a8 every matrix vs int8 weights | w8a8 vs int8 weights | int8 weights vs its 1 row "
              "| w8a8 vs its 1 row |")
    lines = [title, "", header, "|---|---|---|---|---|---|---|---|---|---|"]
    for m, r in rows_out.items():
        a, b, c, d = (r[k]["ms_per_step"] for k in kinds)
        lines.append(f"| {m} | {a:.2f} | {b:.2f} | {c:.2f} | {d:.2f} | {a / b:.2f}x | {b / c:.2f}x | {b / d:.2f}x | "
                     f"{r['int8_weights']['vs_its_one_row']:.2f}x | {r['w8a8']['vs_its_one_row']:.2f}x |")
    write_markdown(args.md, lines)
    write_json(args.out, out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
