"""Figure for the codec decoder fine-tune: the training curve (codec run, then the decoder fine-tune) and
per-item PESQ-wb / STOI before vs after, from `slm eval codec` on the same held-out items.

    python docs/results/codec_decoder_ft/plot.py runs/recipe/v2 docs/results/codec_decoder_ft
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def _log(path: Path, key: str) -> tuple[list[int], list[float]]:
    rows = {}
    for line in path.read_text().splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(r.get("step"), int) and key in r:
            rows[r["step"]] = float(r[key])
    steps = sorted(rows)
    return steps, [rows[s] for s in steps]


def main(work: Path, out: Path) -> Path:
    from matplotlib.figure import Figure

    ev = json.loads((out / "codec_eval.json").read_text())
    before, after = (n for n in ev["items"] if n != "ground truth")
    fig = Figure(figsize=(12, 3.6), dpi=90)
    a, b, c = fig.subplots(1, 3)
    xs, ys = _log(work / "codec" / "log.jsonl", "mel/l1")
    a.plot(xs, ys, label="codec (all weights, constant lr)")
    dx, dy = _log(work / "codec_dec" / "log.jsonl", "mel/l1")
    a.plot([xs[-1] + x for x in dx], dy, label="decoder fine-tune (cosine lr)")
    a.set(title="training mel L1 (2 s crops, batch 8)", xlabel="step", ylabel="mel L1")
    a.legend(fontsize=8)
    for ax, key, lo in ((b, "pesq_wb", 1.0), (c, "stoi", None)):
        p = {r["id"]: r[key] for r in ev["items"][before]}
        q = {r["id"]: r[key] for r in ev["items"][after]}
        ids = sorted(p.keys() & q.keys())
        ax.scatter([p[i] for i in ids], [q[i] for i in ids], s=14)
        lim = [min(min(p.values()), min(q.values())), max(max(p.values()), max(q.values()))]
        ax.plot(lim, lim, color="gray", lw=0.8, ls=":")
        ax.set(title=f"{key} per held-out item (n={len(ids)})", xlabel=before, ylabel=after)
    fig.tight_layout()
    png = out / "codec_decoder_ft.png"
    fig.savefig(png)
    return png


if __name__ == "__main__":
    print(main(Path(sys.argv[1]), Path(sys.argv[2])))
