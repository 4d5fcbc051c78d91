"""4-bit backbone weights for decoding (an experiment, not a mode): how far from fp32, and what TTS gets from it.

torch's CPU kernel ``aten._weight_int4pack_mm_for_cpu`` multiplies bf16 rows by group-wise asymmetric 4-bit
weights. One decoding step's matrices read half int8's bytes, so on this memory-bound machine they run ~2.5x
faster than int8's (``kernels``). The question is what 4 bits cost in the backbone's next-frame distribution.

Forms (every fused matrix of every layer: qkv, o, gate_up, down; or the MLP's only):
- ``rtn``: round to nearest, min/max per group;
- ``gptq``: GPTQ (error feedback through each matrix's input Hessian), groups set as columns enter;
- ``gptq act``: GPTQ in decreasing-Hessian-diagonal order, with the group min/max fixed from the weights first
  (static groups, so the kernel's contiguous groups still hold).
The Hessians come from 24 train-split sentences of the synthetic corpus, each spoken by the fp32 bundle (its TTS
prompt, words and frames: 8992 tokens), run once through the fp32 layers.

    python docs/results/int4_gptq/experiment.py kernels                 # one step's matrices, int8 vs int4
    python docs/results/int4_gptq/experiment.py divergence              # -> divergence.json (~15 min)
    python docs/results/int4_gptq/experiment.py lm-eval <recipe_steps lm-eval args>   # gptq act g32, every matrix
    python docs/results/int4_gptq/experiment.py speed   # TTS, int8 vs int4 in one pipeline, alternating (~8 min)
    python docs/results/int4_gptq/experiment.py wer     # paired against int8 (docs/results/tts_held_out_96)

``divergence`` compares with fp32 exactly as docs/results/int8_w8a8/divergence.py does (its four sentences).
"""
from __future__ import annotations

import json
import random
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs" / "results" / "int8_w8a8"))
from codec.runtime import omp_defaults  # before torch loads

omp_defaults()

import torch

MATRICES = (1, 2, 4, 5)  # FusedStep layer slots: qkv, o, gate_up, down


def _params(w: torch.Tensor, gs: int):
    """Per (row, group): min/max asymmetric 4-bit scale and the kernel's zero (``w = (q - 8) * scale + zero``),
    rounded to bf16 as the kernel reads them; returns ``(scale, zero, low)`` ``[N, K/gs]`` in float64."""
    N, K = w.shape
    g = w.double().view(N, K // gs, gs)
    mn, mx = g.amin(-1), g.amax(-1)
    sc = ((mx - mn) / 15).clamp_min(1e-8)
    zp = (mn + 8 * sc).to(torch.bfloat16).double()
    sc = sc.to(torch.bfloat16).double()
    return sc, zp, zp - 8 * sc


def _pack(q: torch.Tensor, sc: torch.Tensor, zp: torch.Tensor):
    return (torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.to(torch.int32).contiguous(), 1),
            torch.stack([sc.t(), zp.t()], -1).to(torch.bfloat16).contiguous())


def rtn(w: torch.Tensor, gs: int):
    sc, zp, lo = _params(w, gs)
    N, K = w.shape
    q = torch.round((w.double().view(N, K // gs, gs) - lo[..., None]) / sc[..., None]).clamp(0, 15).view(N, K)
    return _pack(q, sc, zp)


def gptq(w: torch.Tensor, H: torch.Tensor, gs: int, act_order: bool, damp: float = 0.01, block: int = 128):
    """GPTQ (Frantar et al. 2022) with lazy block updates. ``act_order``: columns in decreasing H-diagonal order,
    group parameters fixed beforehand (static groups); otherwise in order, each group's set as it is entered."""
    W, H = w.clone().double(), H.clone().double()
    N, K = W.shape
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    sc, zp, lo = _params(W, gs) if act_order else torch.zeros(3, N, K // gs, dtype=torch.double).unbind(0)
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K)
    W, H = W[:, perm], H[perm][:, perm]
    H += damp * torch.diag(H).mean() * torch.eye(K, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    Q = torch.zeros(N, K, dtype=torch.double)
    for b0 in range(0, K, block):
        b1 = min(b0 + block, K)
        W1, Hi = W[:, b0:b1].clone(), Hinv[b0:b1, b0:b1]
        Err = torch.zeros_like(W1)
        for c in range(b1 - b0):
            col = int(perm[b0 + c])
            gi = col // gs
            if not act_order and col % gs == 0:  # in order: this group's parameters from its updated weights
                g = torch.cat([W1[:, c:], W[:, b1:]], 1)[:, :gs]
                s, z, lw = _params(g, gs)
                sc[:, gi], zp[:, gi], lo[:, gi] = s[:, 0], z[:, 0], lw[:, 0]
            x = W1[:, c]
            q = torch.round((x - lo[:, gi]) / sc[:, gi]).clamp(0, 15)
            Q[:, col] = q
            e = (x - (q * sc[:, gi] + lo[:, gi])) / Hi[c, c]
            W1[:, c:] -= e[:, None] * Hi[c, c:][None]
            Err[:, c] = e
        W[:, b1:] -= Err @ Hinv[b0:b1, b1:]
    return _pack(Q, sc, zp)


class Int4Slot:
    """A FusedStep matrix slot on packed 4-bit weights: up to 32 rows on the int4 kernel (bf16 out), more (the
    prompt) on the slot it replaced."""

    def __init__(self, dense, packed, sz, gs: int):
        self.dense, self.packed, self.sz, self.gs = dense, packed, sz, gs

    @property
    def weight(self):
        return self.dense.weight

    def __call__(self, x):
        if x.shape[0] > 32:
            return self.dense(x)
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x.to(torch.bfloat16), self.packed, self.gs, self.sz)


def add_xtx(H: dict, key, x: torch.Tensor) -> None:
    """``H[key] += x^T x`` in float64 (``x [rows, in]``: a matrix's input), starting it if absent."""
    x2 = x.double()
    H[key] = H[key] + x2.T @ x2 if key in H else x2.T @ x2


def hessians(step, seqs) -> list[dict]:
    """Per layer and matrix slot: sum of x^T x over every row the fp32 layers feed it (float64)."""
    H: list[dict] = [{} for _ in step.layers]
    step.tap_inputs(seqs, lambda i, j, x: add_xtx(H[i], j, x))
    return H


def calibration(pipe, n: int = 24) -> list:
    from divergence import frame_sequence  # docs/results/int8_w8a8/divergence.py

    rows = [json.loads(line) for line in (ROOT / "data" / "synth2h" / "manifest.jsonl").read_text().splitlines()]
    texts = sorted({r["raw_text"] for r in rows if r["split"] == "train"})
    random.Random(0).shuffle(texts)
    out = []
    for text in [t for t in texts if len(t.split()) >= 6][:n]:
        prompt, seq, _ = frame_sequence(pipe, text)
        out.append(torch.cat([prompt.flatten(), torch.tensor(seq)]))
    return out


def int4_step(m, base, how: str, gs: int, H=None, which=MATRICES):
    from slm.generate import FusedStep

    st = FusedStep(m, "weights")
    slots = []
    for i, layer in enumerate(st.layers):
        row = []
        for j, x in enumerate(layer):
            if j in which:
                w = base.layers[i][j].weight.detach().float()
                packed, sz = rtn(w, gs) if how == "rtn" else gptq(w, H[i][j], gs, act_order=how == "gptq act")
                x = Int4Slot(x, packed, sz, gs)
            row.append(x)
        slots.append(tuple(row))
    st.layers = slots
    return st


def divergence() -> None:
    from divergence import compare  # docs/results/int8_w8a8/divergence.py: its sentences and measure

    from benchmarks.common import machine
    from codec.runtime import set_threads
    from slm.generate import FusedStep
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    pipe = SpeechPipeline.from_pretrained("default", int8=False)
    m = pipe.infer_lm
    t = time.time()
    cal = calibration(pipe)
    base = FusedStep(m, False)
    H = hessians(base, cal)
    print(f"calibration: {sum(c.numel() for c in cal)} tokens, {time.time() - t:.0f} s", flush=True)
    forms = {"int8 weights (the mode)": FusedStep(m, "weights")}
    for how, gs, which, name in [("rtn", 64, MATRICES, "every matrix"), ("rtn", 32, MATRICES, "every matrix"),
                                 ("gptq", 64, MATRICES, "every matrix"), ("gptq act", 64, MATRICES, "every matrix"),
                                 ("gptq act", 32, MATRICES, "every matrix"), ("gptq act", 64, (4, 5), "MLP only")]:
        forms[f"{how}, group {gs}, {name}"] = int4_step(m, base, how, gs, H, which)

    n, stats = compare(pipe, base, forms)
    out = {"positions": n, "calibration_tokens": sum(c.numel() for c in cal), "machine": machine(2),
           "forms": stats}
    (HERE / "divergence.json").write_text(json.dumps(out, indent=1) + "\n")
    print("| form | mean KL(fp32 \\|\\| form), nats | same most likely token |\n|---|---|---|")
    for k, v in out["forms"].items():
        print(f"| {k} | {v['mean_kl_nats']:.4f} | {v['top1_agreement']:.3f} |")


def kernels(repeats: int = 30) -> None:
    """One decoding step's matrices (30 layers of SmolLM2-135M's shapes, distinct random weights so they stream
    from memory), one row: int8 weights (the mode) against 4-bit group 32, alternating, best of 3."""
    torch.set_num_threads(2)
    shapes = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
    m8, m4 = [], []
    for _ in range(30):
        for n, k in shapes:
            w = torch.randn(n, k) * 0.02
            scale = (w.abs().amax(1) / 127).to(torch.bfloat16)
            m8.append((torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8), scale, k))
            m4.append((*rtn(w, 32), k))
    xs = {k: torch.randn(1, k).to(torch.bfloat16) for k in (576, 1536)}
    runs = {"int8": lambda: [torch._weight_int8pack_mm(xs[k], q, s) for q, s, k in m8],
            "int4 g32": lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(xs[k], p, 32, sz) for p, sz, k in m4]}
    best = {}
    for _ in range(3):
        for name, f in runs.items():
            f()
            t = time.perf_counter()
            for _ in range(repeats):
                f()
            best[name] = min(best.get(name, 1e9), (time.perf_counter() - t) / repeats * 1e3)
    print({k: f"{v:.2f} ms" for k, v in best.items()}, f"int8 / int4: {best['int8'] / best['int4 g32']:.2f}x")


def lm_eval(argv: list[str]) -> int:
    """``slm.recipe_steps`` with the bundle's backbone matrices on 4-bit GPTQ (act order, group 32) weights,
    quantized at load from the same calibration (the acoustic head keeps int8)."""
    from slm.generate import FusedStep
    from slm.pipeline import SpeechPipeline
    from slm.recipe_steps import main

    orig = SpeechPipeline.from_pretrained.__func__

    def patched(cls, *a, **k):
        pipe = orig(cls, *a, **k)
        m = pipe.infer_lm
        base = FusedStep(m, False)
        step = int4_step(m, base, "gptq act", 32, hessians(base, calibration(pipe)))
        m.fused_step.layers = step.layers
        print("backbone matrices on 4-bit GPTQ weights", flush=True)
        return pipe

    SpeechPipeline.from_pretrained = classmethod(patched)
    return main(argv)


def speed(repeats: int = 3) -> None:
    """Whole TTS of two sentences with the bundle as the CLI runs it (int8, best_of 1, seed 0), the backbone's
    matrices switched between int8 (the mode) and 4-bit GPTQ in one pipeline, alternating; best of ``repeats``."""
    from benchmarks.common import machine
    from slm.generate import FusedStep
    from slm.pipeline import SpeechPipeline

    torch.set_num_threads(2)
    text = ("The quick brown fox jumps over the lazy dog, twice. Please call Stella and ask her to bring these "
            "things with her from the store.")
    pipe = SpeechPipeline.from_pretrained("default", int8=True)
    m = pipe.infer_lm
    int8_layers = m.fused_step.layers
    base = FusedStep(m, False)
    int4_layers = int4_step(m, base, "gptq act", 32, hessians(base, calibration(pipe))).layers
    forms = {"int8 weights": int8_layers, "int4 GPTQ": int4_layers}
    best: dict = {}
    for _ in range(repeats):
        for name, layers in forms.items():
            m.fused_step.layers = layers
            torch.manual_seed(0)
            t = time.perf_counter()
            first = None
            n = 0
            for chunk in pipe.tts_stream(text, seed=0):
                first = first or time.perf_counter() - t
                n += chunk.shape[-1]
            sec = time.perf_counter() - t
            r = best.setdefault(name, {"seconds": 1e9, "first_audio_s": 1e9})
            r["seconds"], r["first_audio_s"] = min(r["seconds"], sec), min(r["first_audio_s"], first)
            r["audio_s"] = n / pipe.sample_rate
    for r in best.values():
        r["rtf"] = r["seconds"] / r["audio_s"]
    out = {"machine": machine(2), "repeats": repeats, "text": text, "forms": best,
           "speedup": best["int8 weights"]["seconds"] / best["int4 GPTQ"]["seconds"]}
    (HERE / "speed.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


def wer() -> None:
    """TTS WER of ``lm_eval_best_of_1_int4_gptq_seed{0,1}.json`` (here) against the int8 mode's runs on the same
    96 items and seeds (docs/results/tts_held_out_96, bf16 prompt, as the bundle runs now): each one's ratio to
    the corpus audio's WER and the paired difference, with 95% bootstrap intervals over items."""
    import numpy as np

    sys.path.insert(0, str(ROOT / "docs" / "results" / "tts_held_out_96"))
    from summary import _edits

    held = ROOT / "docs" / "results" / "tts_held_out_96"
    floor = json.loads((held / "floor_96.json").read_text())
    f_edits = np.array([p["wer_edits"] for p in floor["items"]])

    def edits(path: Path):
        tts = json.loads(path.read_text())["tts"]
        if [t["id"] for t in tts["items"]] != floor["ids"]:
            raise SystemExit(f"{path.name} covers other items than floor_96.json")
        return _edits([t["ref"] for t in tts["items"]], [t["hyp"] for t in tts["items"]]), tts

    runs = {"int4 GPTQ": [edits(HERE / f"lm_eval_best_of_1_int4_gptq_seed{s}.json") for s in (0, 1)],
            "int8 weights": [edits(held / f"lm_eval_best_of_1_bf16_prompt_seed{s}.json") for s in (0, 1)]}
    boot = np.random.default_rng(0).integers(0, len(f_edits), size=(10000, len(f_edits)))
    mean = {}
    out: dict = {"floor_wer": float(f_edits.sum() / sum(p["n_words"] for p in floor["items"])), "forms": {}}
    for k, per in runs.items():
        mean[k] = np.mean([e for e, _ in per], axis=0)
        ci = np.percentile(mean[k][boot].sum(1) / f_edits[boot].sum(1), [2.5, 97.5])
        out["forms"][k] = {"wer_per_seed": [t["wer"] for _, t in per], "rtf_per_seed": [t["rtf"] for _, t in per],
                           "first_audio_s_per_seed": [t["first_audio_s"] for _, t in per],
                           "spk_sim_per_seed": [t["spk_sim"] for _, t in per],
                           "ratio": float(mean[k].sum() / f_edits.sum()), "ratio_ci95": ci.tolist()}
    d = mean["int4 GPTQ"] - mean["int8 weights"]
    ci = np.percentile(d[boot].sum(1) / f_edits[boot].sum(1), [2.5, 97.5])
    out["int4_minus_int8"] = {"ratio_diff": float(d.sum() / f_edits.sum()), "ci95": ci.tolist()}
    (HERE / "wer.json").write_text(json.dumps(out, indent=1) + "\n")
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "kernels":
        kernels()
    elif cmd == "divergence":
        divergence()
    elif cmd == "speed":
        speed()
    elif cmd == "wer":
        wer()
    elif cmd == "lm-eval":
        sys.exit(lm_eval(sys.argv[2:]))
    else:
        raise SystemExit(__doc__)
