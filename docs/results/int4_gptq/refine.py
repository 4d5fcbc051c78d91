"""Bringing 4-bit backbone weights closer to fp32: which layers cost the most, and sequential GPTQ.

Follows ``experiment.py`` (same GPTQ, kernel, calibration and divergence measure). Two questions:

- ``sensitivity``: the divergence from fp32 with 4 bits in one layer only (the rest int8), for every layer, and in
  one kind of matrix only (qkv, o, gate_up, down), then with every layer 4-bit except the k most costly (kept int8),
  for a few k. Weights: GPTQ act order, group 32, from the fp32 layers' Hessians (``experiment.py``'s form).
- ``sequential``: GPTQ where each matrix's Hessian comes from the inputs it sees with every earlier matrix already
  4-bit (layer by layer, and qkv -> o -> gate_up -> down inside a layer), instead of the fp32 layers' inputs;
  compared with the plain form, alone and with the costly layers kept int8.

    python docs/results/int4_gptq/refine.py sensitivity   # -> sensitivity.json (~15 min; needs data/synth2h)
    python docs/results/int4_gptq/refine.py sequential    # -> sequential.json
    python docs/results/int4_gptq/refine.py plot          # sensitivity.json -> sensitivity.png

Packed weights are cached under runs/int4/ (a rerun reuses them).
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import experiment as ex  # sets the paths and the OpenMP defaults before torch loads
import torch
import torch.nn.functional as F

ROOT = ex.ROOT
CACHE = ROOT / "runs" / "int4"
GS = 32
KIND = {1: "qkv", 2: "o", 4: "gate_up", 5: "down"}


class Int4Rows(ex.Int4Slot):
    """A slot on packed 4-bit weights for any number of rows (calibration passes run whole sentences on it)."""

    def __call__(self, x):
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, self.gs, self.sz)


def _setup():
    from codec.runtime import set_threads
    from slm.generate import FusedStep
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    pipe = SpeechPipeline.from_pretrained("default", int8=False)
    m = pipe.infer_lm
    return pipe, FusedStep(m, False), FusedStep(m, "weights")


def _gptq_layer(base, i, H, log=True):
    t = time.time()
    out = {j: ex.gptq(base.layers[i][j].weight.detach().float(), H[j], GS, act_order=True) for j in ex.MATRICES}
    if log:
        print(f"  layer {i}: GPTQ {time.time() - t:.0f} s", flush=True)
    return out


def plain_packs(pipe, base) -> dict:
    """GPTQ act order g32 for every matrix, Hessians from the fp32 layers (experiment.py's form); cached."""
    f = CACHE / f"gptq_act_g{GS}.pt"
    if f.exists():
        return torch.load(f)
    t = time.time()
    H = ex.hessians(base, ex.calibration(pipe))
    print(f"fp32 Hessians: {time.time() - t:.0f} s", flush=True)
    P = {}
    for i in range(len(base.layers)):
        P.update({(i, j): v for j, v in _gptq_layer(base, i, H[i]).items()})
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(P, f)
    return P


def _one_layer(base, layer, x, cos, sin):
    one = copy.copy(base)
    one.layers = [layer]
    return one.layers_forward(x, cos, sin, lambda i, q, k, v: F.scaled_dot_product_attention(
        q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True, enable_gqa=True))


def sequential_packs(pipe, base) -> dict:
    """GPTQ act order g32 where each matrix is calibrated on what it sees with every earlier matrix 4-bit; cached."""
    f = CACHE / f"gptq_act_g{GS}_sequential.pt"
    if f.exists():
        return torch.load(f)
    seqs = ex.calibration(pipe)
    with torch.no_grad():
        xs = [base.embed[ids][None].float() for ids in seqs]
        rot = []
        for ids in seqs:
            cos, sin = base.rotary(base.embed[:1], torch.arange(ids.numel())[None])
            rot.append((cos[0][:, None], sin[0][:, None]))
        P = {}
        for i, layer in enumerate(base.layers):
            t = time.time()
            cur = list(layer)
            for j in ex.MATRICES:
                H = {}

                def tap(x, j=j, lin=cur[j], H=H):
                    ex.add_xtx(H, j, x)
                    return lin(x)

                tapped = list(cur)
                tapped[j] = tap
                for x, (cos, sin) in zip(xs, rot):
                    _one_layer(base, tuple(tapped), x, cos, sin)
                P[i, j] = ex.gptq(layer[j].weight.detach().float(), H[j], GS, act_order=True)
                cur[j] = Int4Rows(layer[j], *P[i, j], GS)
            xs = [_one_layer(base, tuple(cur), x, cos, sin) for x, (cos, sin) in zip(xs, rot)]
            print(f"  layer {i}: sequential GPTQ {time.time() - t:.0f} s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    torch.save(P, f)
    return P


def form(int8_step, P: dict, where) -> object:
    """``int8_step`` with the slots ``where`` (``(layer, slot)`` pairs) on the packed 4-bit weights ``P``."""
    st = copy.copy(int8_step)
    st.layers = [tuple(ex.Int4Slot(x, *P[i, j], GS) if (i, j) in where else x for j, x in enumerate(layer))
                 for i, layer in enumerate(int8_step.layers)]
    return st


def _every(n_layers, skip=()):
    return {(i, j) for i in range(n_layers) if i not in skip for j in ex.MATRICES}


def _compare(pipe, base, forms: dict) -> tuple[int, dict]:
    from divergence import compare  # docs/results/int8_w8a8/divergence.py

    t = time.time()
    n, stats = compare(pipe, base, forms)
    print(f"compared {len(forms)} forms in {time.time() - t:.0f} s", flush=True)
    for k, v in stats.items():
        print(f"| {k} | {v['mean_kl_nats']:.4f} | {v['top1_agreement']:.3f} |", flush=True)
    return n, stats


def sensitivity() -> dict:
    from benchmarks.common import machine

    pipe, base, int8 = _setup()
    P = plain_packs(pipe, base)
    L = len(base.layers)
    forms = {"int8 weights (the mode)": int8, "4-bit every matrix": form(int8, P, _every(L))}
    for j, k in KIND.items():
        forms[f"4-bit {k} only"] = form(int8, P, {(i, j) for i in range(L)})
    for i in range(L):
        forms[f"4-bit layer {i} only"] = form(int8, P, {(i, j) for j in ex.MATRICES})
    n, stats = _compare(pipe, base, forms)
    order = sorted(range(L), key=lambda i: -stats[f"4-bit layer {i} only"]["mean_kl_nats"])
    kept = {}
    for k in (1, 2, 4, 6, 8):
        kept[f"4-bit except layers {sorted(order[:k])} (int8)"] = form(int8, P, _every(L, order[:k]))
    _, stats2 = _compare(pipe, base, kept)
    out = {"positions": n, "machine": machine(2), "group": GS, "weights": "GPTQ act order, fp32 Hessians",
           "forms": stats, "layers_by_cost": order, "keep_costly_int8": stats2}
    (HERE / "sensitivity.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def sequential() -> dict:
    from benchmarks.common import machine

    pipe, base, int8 = _setup()
    P = plain_packs(pipe, base)
    S = sequential_packs(pipe, base)
    L = len(base.layers)
    sens = json.loads((HERE / "sensitivity.json").read_text())
    order = sens["layers_by_cost"]
    forms = {"GPTQ (fp32 Hessians), every matrix": form(int8, P, _every(L)),
             "sequential GPTQ, every matrix": form(int8, S, _every(L))}
    for k in (2, 4):
        forms[f"sequential GPTQ except layers {sorted(order[:k])} (int8)"] = form(int8, S, _every(L, order[:k]))
    n, stats = _compare(pipe, base, forms)
    out = {"positions": n, "machine": machine(2), "group": GS, "forms": stats}
    (HERE / "sequential.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


def plot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = json.loads((HERE / "sensitivity.json").read_text())
    f, L = s["forms"], len(s["layers_by_cost"])
    int8 = f["int8 weights (the mode)"]["mean_kl_nats"]
    kl = [f[f"4-bit layer {i} only"]["mean_kl_nats"] for i in range(L)]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.bar(range(L), kl, color="tab:orange", label="4 bits in this layer only (the rest int8)")
    ax.axhline(int8, color="k", lw=1, label=f"int8 weights everywhere: {int8:.4f}")
    ax.set(xlabel="backbone layer", ylabel="mean KL from fp32 (nats)", ylim=(0, max(kl) * 1.25),
           title=f"4 bits everywhere: {f['4-bit every matrix']['mean_kl_nats']:.4f} "
                 f"~ int8 + the sum of the layers' excess ({int8 + sum(k - int8 for k in kl):.4f})")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(HERE / "sensitivity.png", dpi=110)


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "sensitivity":
        sensitivity()
    elif cmd == "sequential":
        sequential()
    elif cmd == "plot":
        plot()
    else:
        raise SystemExit(__doc__)
