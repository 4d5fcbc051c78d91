"""TTS WER on 96 held-out items against the corpus' own audio: per best_of and seed, the mean over seeds, the
ratio to the floor with a paired bootstrap 95% interval over items, and a plot.

Inputs next to this file: ``lm_eval_best_of_{N}_seed{S}.json`` (``python -m slm.recipe_steps lm-eval ...
--limit 96 --tasks tts --metrics asr --int8 --sampling best_of=N --seed S``), ``lm_eval_best_of_{N}_words_{W}_seed{S}.json``
(the same with ``--sampling best_of=N,best_of_words=W``: a choice every W words), ``..._int8_head_seed{S}.json``
(run after int8 decoding took the acoustic head to int8 as well), ``..._w8a8_seed{S}.json`` (``--int8 w8a8``:
int8 activations on the backbone's qkv and gate_up too), ``..._w8a8_every_matrix_seed{S}.json`` (the first w8a8 form:
int8 activations on every backbone and head matrix), ``..._bf16_prompt_seed{S}.json`` (int8 head, and each
sentence's prompt on bf16 weights through the fused loop: docs/results/bf16_prompt), ``..._vnni_seed{S}.json``
(decoded by the C++ loop with its own int8 matmul and attention, words of up to 10 tokens on int8 weights:
docs/results/vnni_step), ``..._cpp_loop_seed{S}.json`` (the same loop with words of more than 4 tokens on the bf16
copies, as it ships), ``..._amx_words_seed{S}.json`` (the same loop with words of up to 32 tokens on the int8
matrices through the AMX kernel: ``SLM_NATIVE_INT8_ROWS=32``, docs/results/best_of_step),
``..._python_loop_seed{S}.json`` (that code with ``SLM_NATIVE=0``: the Python loop) and
``floor_96.json`` (``floor.py``). Settings run both ways (``X, int8 head`` and ``X, bf16 prompt``; ``X, Python
loop, same code`` and ``X, C++ loop``; ``X, C++ loop`` and ``X, C++ loop, words int8 on AMX``) also get the paired difference of their ratios over the seeds both have,
with its bootstrap interval over items.

    python docs/results/tts_held_out_96/summary.py   # -> summary.json, wer_ratio.png
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TARGET = 1.5  # issue 5: TTS WER <= 1.5x the WER of the corpus' own audio, same sentences and voices


def _edits(refs: list[str], hyps: list[str]) -> np.ndarray:
    from adapters.judges import error_rates

    out = []
    for r, h in zip(refs, hyps):
        e = error_rates([r], [h])
        out.append(e.wer * e.n_words)
    return np.array(out)


NAME = re.compile(r"lm_eval_best_of_(\d+)(?:_words_(\d+))?(_int8_head|_w8a8_every_matrix|_w8a8|_bf16_prompt|_vnni|_cpp_loop|_amx_words|_python_loop)?"
                  r"_seed\d+\.json")
TAGS = {"": "", "_int8_head": ", int8 head", "_w8a8_every_matrix": ", w8a8 on every matrix", "_w8a8": ", w8a8",
        "_bf16_prompt": ", bf16 prompt", "_vnni": ", C++ loop, words int8", "_cpp_loop": ", C++ loop",
        "_amx_words": ", C++ loop, words int8 on AMX", "_python_loop": ", Python loop, same code"}


def _setting(name: str) -> str:
    """``lm_eval_best_of_4_words_2_seed0.json`` -> ``best_of 4, every 2 words``; ``..._4_seed0`` -> ``best_of 4``;
    ``..._1_int8_head_seed0`` -> ``best_of 1, int8 head`` (the acoustic head in int8 too; without the tag it ran
    in fp32, as int8 decoding did before docs/results/int8_head); ``..._w8a8_seed0``: ``int8="w8a8"`` (int8
    activations on qkv and gate_up too); ``..._w8a8_every_matrix_seed0``: its first form (on every matrix)."""
    n, w, h = NAME.match(name).groups()
    return f"best_of {n}" + ("" if not w else ", every word" if w == "1" else f", every {w} words") + (
        TAGS[h or ""])


def _order(f: Path) -> tuple:
    n, w, h = NAME.match(f.name).groups()
    return int(n), -int(w or 10**6), list(TAGS).index(h or ""), f.name  # per N: once per sentence first, then finer choices


def main() -> dict:
    floor = json.loads((HERE / "floor_96.json").read_text())
    ids = floor["ids"]
    f_edits = np.array([p["wer_edits"] for p in floor["items"]])
    words = np.array([p["n_words"] for p in floor["items"]])
    runs: dict[str, dict[int, np.ndarray]] = {}
    rows: dict[str, dict[int, dict]] = {}
    for f in sorted(HERE.glob("lm_eval_best_of_*_seed*.json"), key=_order):
        n, seed = _setting(f.name), int(re.search(r"_seed(\d+)\.json$", f.name).group(1))
        tts = json.loads(f.read_text())["tts"]
        if [t["id"] for t in tts["items"]] != ids:
            raise SystemExit(f"{f.name} covers other items than floor_96.json")
        runs.setdefault(n, {})[seed] = _edits([t["ref"] for t in tts["items"]], [t["hyp"] for t in tts["items"]])
        rows.setdefault(n, {})[seed] = {k: tts[k] for k in ("wer", "cer", "spk_sim", "dnsmos_ovrl", "rtf", "first_audio_s")}
    rng = np.random.default_rng(0)
    boot = rng.integers(0, len(ids), size=(10000, len(ids)))
    floor_wer = f_edits.sum() / words.sum()
    out: dict = {"n": len(ids), "floor_wer": floor_wer, "target_wer": TARGET * floor_wer, "settings": {}}
    for n, per in runs.items():  # in _order
        e = np.mean(list(per.values()), axis=0)  # per item, mean over seeds
        ratio = e.sum() / f_edits.sum()
        ci = np.percentile(e[boot].sum(1) / f_edits[boot].sum(1), [2.5, 97.5])
        out["settings"][n] = {"seeds": sorted(per), "wer_mean": e.sum() / words.sum(), "ratio": ratio,
                              "ratio_ci95": ci.tolist(), "per_seed": rows[n]}
    # key: (tag of the baseline a, tag of the setting b, printed label of b - a)
    pairs = {"bf16_prompt_vs_fp32_prompt": (", int8 head", ", bf16 prompt", "bf16 prompt - fp32 prompt"),
             "cpp_loop_vs_python_loop": (", Python loop, same code", ", C++ loop", "C++ loop - Python loop"),
             "amx_words_vs_bf16_words": (", C++ loop", ", C++ loop, words int8 on AMX", "int8 words - bf16 words")}
    for key, (a, b, _) in pairs.items():  # paired over items and the seeds both settings ran: b's ratio minus a's
        out[key] = {}
        for n, per in runs.items():
            if not n.endswith(b) or (base := n[: -len(b)] + a) not in runs:
                continue
            seeds = sorted(set(per) & set(runs[base]))
            if not seeds:
                continue
            d = np.mean([per[s] for s in seeds], axis=0) - np.mean([runs[base][s] for s in seeds], axis=0)
            ci = np.percentile(d[boot].sum(1) / f_edits[boot].sum(1), [2.5, 97.5])
            out[key][base] = {"seeds": seeds, "ratio_diff": d.sum() / f_edits.sum(), "ci95": ci.tolist()}
    (HERE / "summary.json").write_text(json.dumps(out, indent=1, default=float) + "\n")
    print(f"floor (Whisper-base on the corpus audio, {len(ids)} items): WER {floor_wer:.3f}; target <= {TARGET * floor_wer:.3f}")
    print("| setting | seeds | WER per seed | WER mean | ratio to floor (95% CI) | eval-loop RTF | first audio (s) |")
    print("|---|---|---|---|---|---|---|")
    for n, r in out["settings"].items():
        ps = r["per_seed"]
        wers = " / ".join(f"{p['wer']:.3f}" for p in ps.values())
        print(f"| {n} | {len(ps)} | {wers} | {r['wer_mean']:.3f} | "
              f"{r['ratio']:.2f} ({r['ratio_ci95'][0]:.2f}-{r['ratio_ci95'][1]:.2f}) | "
              f"{np.mean([p['rtf'] for p in ps.values()]):.2f} | {np.mean([p['first_audio_s'] for p in ps.values()]):.2f} |")
    for key, (_, _, label) in pairs.items():
        for base, r in out[key].items():
            print(f"{label}, {base} (seeds {r['seeds']}): ratio {r['ratio_diff']:+.3f} "
                  f"({r['ci95'][0]:+.3f} to {r['ci95'][1]:+.3f})")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = list(out["settings"])  # one bar a setting, top to bottom in _order
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + 0.32 * len(ns)))
    ys = np.arange(len(ns))[::-1]
    r = [out["settings"][n]["ratio"] for n in ns]
    lo = [out["settings"][n]["ratio"] - out["settings"][n]["ratio_ci95"][0] for n in ns]
    hi = [out["settings"][n]["ratio_ci95"][1] - out["settings"][n]["ratio"] for n in ns]
    ax.barh(ys, r, xerr=[lo, hi], capsize=3, color="C0", alpha=0.8, height=0.7)
    ax.axvline(TARGET, color="gray", ls="--", lw=1, label=f"target: {TARGET}x the corpus audio's WER")
    ax.axvline(1.0, color="black", lw=0.8)
    ax.set_yticks(ys, [f"{n} ({len(out['settings'][n]['seeds'])} seeds)" for n in ns], fontsize=7)
    ax.set_xlabel("TTS WER / corpus-audio WER")
    ax.set_title(f"TTS on {len(ids)} held-out items, int8, 2 threads\n(mean of seeds; 95% bootstrap over items)",
                 fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(HERE / "wer_ratio.png", dpi=120)
    return out


if __name__ == "__main__":
    main()
