"""Fold a speech-LM fine-tune run made outside the recipe (here: on a GPU) into a bundle and rewrite its card.

    python docs/results/gpu_finetune/add_to_bundle.py RUN BUNDLE --device "NVIDIA H100 80GB (bf16 autocast)" \
        --tokens runs/tok10h --eval runs/gpu_ft/eval/lm_eval.json runs/gpu_ft/eval2/lm_eval.json

RUN holds ``final/`` (the model dir ``slm train`` wrote; its ``codec/`` may be absent), ``run/train_config.json``
and ``train.log`` (the run's console log: its last progress bar gives the wall time). The bundle's weights are
replaced by the run's (the run must have started from this bundle: same token layout and codec), its
metrics.json gains the run as one more LM fine-tune and takes the eval rows of the given ``lm-eval`` JSONs, and
README.md is re-rendered by :func:`slm.recipe_card.recard`. Every number comes from those files.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
from pathlib import Path

from slm.recipe_card import recard

EVAL_ROWS = ("tts", "tts_floor", "asr", "asr_plain", "continue", "continue_floor", "conditioning", "head")


def wall_seconds(log: Path) -> float:
    """The elapsed time of the last ``slm train`` progress bar in a console log ([mm:ss< or [h:mm:ss<)."""
    found = re.findall(r"slm train: 100%.*?\[(\d+(?::\d+){1,2})<", log.read_text(errors="replace"))
    if not found:
        raise ValueError(f"{log}: no finished 'slm train' progress bar")
    return float(sum(int(x) * 60 ** i for i, x in enumerate(reversed(found[-1].split(":")))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--device", required=True, help="what the run trained on, as the card should name it")
    ap.add_argument("--tokens", required=True, help="the token dir the run read (a local copy of it)")
    ap.add_argument("--eval", nargs="+", type=Path, required=True, help="lm_eval.json files of the run's model")
    a = ap.parse_args()
    fin, bundle = a.run / "final", a.bundle
    if json.loads((fin / "token_layout.json").read_text()) != json.loads((bundle / "token_layout.json").read_text()):
        raise ValueError(f"{fin / 'token_layout.json'} differs from the bundle's: the run did not start from {bundle}")
    cfg = json.loads((a.run / "run" / "train_config.json").read_text())
    m = json.loads((bundle / "metrics.json").read_text())
    new_cfg = json.loads((fin / "slm_config.json").read_text())
    steps = new_cfg["trained_steps"]
    seconds = wall_seconds(a.run / "train.log")
    cfg.update(tokens=a.tokens, out_dir=str(a.run), init_from=str(bundle))
    m["lm"]["finetune"].append({"training": {"steps_planned": cfg["steps"], "steps_trained": steps,
                                             "stopped_by_time": False, "seconds": seconds, "device": a.device,
                                             "segments": [{"steps_planned": cfg["steps"], "steps_trained": steps,
                                                           "seconds": seconds, "tokens": a.tokens}]},
                                "config": cfg})
    for e in a.eval:
        rows = json.loads(e.read_text())
        for k in EVAL_ROWS:
            if k in rows:
                m["lm"][k] = {kk: vv for kk, vv in rows[k].items() if kk != "items"} if isinstance(rows[k], dict) \
                    else rows[k]
    for src in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json", "acoustic_head.safetensors",
                "acoustic_head.json"):
        shutil.copyfile(fin / src, bundle / src)
    new_cfg["init_from"] = str(bundle)  # the run started from this bundle; the chain of runs is in metrics.json
    (bundle / "slm_config.json").write_text(json.dumps(new_cfg, indent=2) + "\n")
    m["token_summaries"] = {**carried_summaries(m, (bundle / "README.md").read_text()), **m.get("token_summaries", {})}
    (bundle / "metrics.json").write_text(json.dumps(m, indent=2, default=str) + "\n")
    print(recard(bundle))


def carried_summaries(m: dict, card: str) -> dict[str, str]:
    """The '<dir> (N train utterances, H h)' texts the card already shows for token dirs of earlier runs that are
    no longer on disk (the card was written from them when they were)."""
    runs = [m["lm"].get("training") or {}, *(ft.get("training") or {} for ft in m["lm"]["finetune"])]
    dirs = {s.get("tokens") for t in runs for s in t.get("segments") or []}
    dirs |= {(ft.get("config") or {}).get("tokens") for ft in m["lm"]["finetune"]} | {m["lm"]["config"].get("tokens")}
    out = {}
    for d in filter(None, dirs):
        if (Path(d) / "index.jsonl").is_file():
            continue
        rel = re.sub(r"^.*?(runs/)", r"\1", d)  # the card names dirs relative to the repo root
        hit = re.search(re.escape(rel) + r" \((\d+ train utterances(?:, [\d.]+ h)?)\)", card)
        if hit:
            out[d] = f"{rel} ({hit.group(1)})"
    return out


if __name__ == "__main__":
    main()
