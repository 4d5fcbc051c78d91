"""Best-of-N TTS over seeds: mean and spread of each figure per N, from ``lm_eval_best_of_{N}_seed{S}.json``
(written by ``python -m slm.recipe_steps lm-eval ... --sampling best_of=N --seed S``), plus a plot.

    python docs/results/tts_best_of/summary.py   # -> summary.json, wer_vs_n.png next to this file
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent
KEYS = ("wer", "cer", "spk_sim", "dnsmos_ovrl", "rtf", "first_audio_s")


def main() -> int:
    runs: dict[int, dict[int, dict]] = {}
    for f in sorted(HERE.glob("lm_eval_best_of_*_seed*.json")):
        n, seed = map(int, re.match(r"lm_eval_best_of_(\d+)_seed(\d+)\.json", f.name).groups())
        runs.setdefault(n, {})[seed] = json.loads(f.read_text())["tts"]
    if not runs:
        raise SystemExit(f"no lm_eval_best_of_N_seedS.json in {HERE}")
    out = {}
    for n in sorted(runs):
        per = runs[n]
        out[n] = {"seeds": sorted(per), **{k: {"mean": statistics.fmean(r[k] for r in per.values()),
                                              "min": min(r[k] for r in per.values()),
                                              "max": max(r[k] for r in per.values()),
                                              "per_seed": {s: r[k] for s, r in sorted(per.items())}}
                                          for k in KEYS}}
    (HERE / "summary.json").write_text(json.dumps(out, indent=1) + "\n")
    print("| best_of | WER mean (min-max) | CER mean (min-max) | speaker sim | DNSMOS OVRL | eval-loop RTF |")
    print("|---|---|---|---|---|---|")
    def cell(r: dict, k: str) -> str:
        return f"{r[k]['mean']:.3f} ({r[k]['min']:.3f}-{r[k]['max']:.3f})"

    for n, r in out.items():
        print(f"| {n} | {cell(r, 'wer')} | {cell(r, 'cer')} | {r['spk_sim']['mean']:.3f} | {r['dnsmos_ovrl']['mean']:.2f} | "
              f"{r['rtf']['mean']:.2f} |")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ns = list(out)
    for k, label in (("wer", "WER"), ("cer", "CER")):
        for n in ns:
            ax.scatter([n] * len(out[n]["seeds"]), list(out[n][k]["per_seed"].values()), s=14, alpha=0.5,
                       color="C0" if k == "wer" else "C1")
        ax.plot(ns, [out[n][k]["mean"] for n in ns], marker="o", color="C0" if k == "wer" else "C1",
                label=f"{label} (mean of {len(out[ns[0]]['seeds'])} seeds)")
    ax.axhline(0.31, color="gray", ls="--", lw=1, label="TTS WER target (1.5x corpus audio)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ns, [str(n) for n in ns])
    ax.set_xlabel("best_of (candidates per sentence)")
    ax.set_ylabel("Whisper-base error rate")
    ax.set_title("Best-of-N TTS by the CTC reader, 16 held-out items, int8")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(HERE / "wer_vs_n.png", dpi=120)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
