"""How much of what is said each codec's semantic stream carries on its own: the held-out items decoded
from their semantic tokens alone (``DualStreamCodec.decode(tokens, semantic_only=True)``: the acoustic
contribution zeroed, as acoustic dropout does in training), judged like ``slm eval codec``.

    python docs/results/codec_25hz_gpu/semantic_only.py OUT.json CODEC_DIR [CODEC_DIR ...] \
        [--manifest data/synth2h/manifest.jsonl --limit 24]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from slm.eval.codec_eval import Judges, score, summarise
from slm.eval.data import LoadedCodec, load_items


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("codecs", nargs="+")
    p.add_argument("--manifest", default="data/synth2h/manifest.jsonl")
    p.add_argument("--limit", type=int, default=24)
    a = p.parse_args()
    torch.set_num_threads(2)
    items = load_items(a.manifest, "test", a.limit)
    judges = Judges(metrics=("fidelity", "asr"))
    rows = []
    for path in a.codecs:
        codec = LoadedCodec(path)
        for semantic_only in (False, True):
            outs = []
            with torch.no_grad():
                for it in items:
                    tokens = codec.encode(it.wav)
                    rec = codec.model.decode(tokens, semantic_only=semantic_only)[..., : it.wav.shape[-1]]
                    outs.append(rec[0, 0].clamp(-1, 1).numpy().astype(np.float32))
            per = score(items, outs, judges, reference=False)
            rows.append({"codec": path, "decode": "semantic only" if semantic_only else "both streams",
                         **summarise(per)})
            print(json.dumps(rows[-1]), flush=True)
    Path(a.out).write_text(json.dumps({"manifest": a.manifest, "limit": a.limit, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
