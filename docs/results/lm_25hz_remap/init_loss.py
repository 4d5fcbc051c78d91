"""Held-out loss of the bundled model moved onto the 25 Hz codec, before any step, for three code maps:
`remap` (each 25 Hz code takes the row of the 12.5 Hz code with the nearest teacher centroid: what
`remap_semantic` does), `identity` (code j keeps row j: the rows of codes that mean something else) and
`shuffled` (a random permutation). The LoRA adapter is the bundle's in all three.

    python docs/results/lm_25hz_remap/init_loss.py configs/lm/smollm2_25hz_remap.yaml docs/results/lm_25hz_remap
"""
import json
import sys
from pathlib import Path

import torch

import slm.train as T
from codec.runtime import set_threads
from slm.lm_data import load_tokens
from slm.pipeline import _load_codec
from slm.train import BatchSource, SpeechLM, TaskMix, TrainConfig, build


def main(config: str, out: str) -> None:
    set_threads(2)
    cfg = TrainConfig.from_yaml(config)
    batches = cfg.eval_batches  # the held-out batches `slm train` evaluates on
    codec = _load_codec(cfg.codec, None)
    valid = load_tokens(cfg.tokens, split=cfg.valid_split, limit=64)
    real = T._remap_from
    res = {}
    for arm in ("remap", "identity", "shuffled"):
        def mapping(d, theirs, c, arm=arm):
            m = real(d, theirs, c)
            if arm == "identity":
                return torch.arange(len(m))
            if arm == "shuffled":
                return torch.randperm(len(m), generator=torch.Generator().manual_seed(0))
            return m
        T._remap_from = mapping
        bb, layout, lm, head = build(cfg, codec)
        model = SpeechLM(lm, head, cfg.head_weight, cfg.train_lm, cfg.packing, text_vocab=layout.base_vocab).eval()
        src = BatchSource(valid, bb.tokenizer, layout, TaskMix.from_dict(cfg.tasks), cfg, head.cfg.frame_len)
        acc: dict[str, float] = {}
        with torch.no_grad():
            for i in range(min(batches, src.per_epoch)):
                for k, v in model(src(i)).items():
                    if k.startswith("lm/"):
                        acc[k] = acc.get(k, 0.0) + float(v) / min(batches, src.per_epoch)
        res[arm] = acc
        print(arm, {k: round(v, 3) for k, v in acc.items()}, flush=True)
    T._remap_from = real
    Path(out, "init_loss.json").write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:3])
