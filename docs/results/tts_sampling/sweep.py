"""TTS sampling settings of a bundle, swept on items that the model card does not use.

Items: the 10 h corpus' test split (voices and sentences the LM never trained on), minus every sentence of the
2 h corpus' test split (the card's items), spread over the synthesizers. One pipeline, one set of judges; each
setting runs the same items with the same seeds. Writes ``sweep.json`` (per setting: WER, CER, speaker
similarity, DNSMOS, RTF) next to ``--out``.

    PYTHONPATH=. python docs/results/tts_sampling/sweep.py checkpoints/default --limit 24 --seeds 0 \
        --out docs/results/tts_sampling/sweep.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

SETTINGS = {  # name -> Sampling fields changed from the bundle's own (T0.8_head0.7: the generic defaults)
    "T0.8_head0.7": {"temperature": 0.8, "head_temperature": 0.7},
    "T0.6": {"temperature": 0.6},
    "T0.4": {"temperature": 0.4},
    "T0.6_head0.5": {"temperature": 0.6, "head_temperature": 0.5},
    "T0.4_head0.4": {"temperature": 0.4, "head_temperature": 0.4},
    "T0.6_k20": {"temperature": 0.6, "top_k": 20},
    "T0.6_rep1.1": {"temperature": 0.6, "repetition_penalty": 1.1},
    "T0.5_head0.5": {"temperature": 0.5, "head_temperature": 0.5},
    "T0.3_head0.3": {"temperature": 0.3, "head_temperature": 0.3},
    "T0.2_head0.2": {"temperature": 0.2, "head_temperature": 0.2},
    "greedy_head0.3": {"temperature": 0.0, "head_temperature": 0.3},
    # classifier-free guidance on top of the bundle's T0.3 / head 0.3
    "T0.3_head0.3_cfg1.5": {"temperature": 0.3, "head_temperature": 0.3, "cfg_scale": 1.5},
    "T0.3_head0.3_cfg2": {"temperature": 0.3, "head_temperature": 0.3, "cfg_scale": 2.0},
    "T0.3_head0.3_cfg3": {"temperature": 0.3, "head_temperature": 0.3, "cfg_scale": 3.0},
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--manifest", default="data/synth10h/manifest.jsonl")
    ap.add_argument("--exclude", default="data/synth2h/manifest.jsonl", help="its test sentences are left out")
    ap.add_argument("--limit", type=int, default=24)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--settings", default=",".join(SETTINGS))
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    from codec.data import read_manifest
    from codec.runtime import set_threads
    from slm.eval.codec_eval import Judges
    from slm.eval.data import load_items
    from slm.eval.lm_eval import eval_tts
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    card = {r["sentence_id"] for r in read_manifest(a.exclude) if r.get("split") == "test"}
    keep = {r["id"] for r in read_manifest(a.manifest) if r.get("split") == "test" and r["sentence_id"] not in card}
    items = [it for it in load_items(a.manifest, "test", None) if it.id in keep]
    by_synth: dict[str, list] = {}
    for it in items:
        by_synth.setdefault(it.id.split("-")[0], []).append(it)
    picked, i = [], 0
    while len(picked) < a.limit and any(i < len(v) for v in by_synth.values()):
        picked += [v[i] for v in by_synth.values() if i < len(v)]
        i += 1
    items = picked[: a.limit]
    pipe = SpeechPipeline.from_pretrained(a.bundle, int8=a.int8)
    base = pipe.sampling
    judges = Judges(metrics=("asr", "dnsmos", "speaker"))
    out = Path(a.out)
    res = json.loads(out.read_text()) if out.exists() else {"bundle": a.bundle, "items": [it.id for it in items],
                                                            "int8": a.int8, "rows": {}}
    if "floors" not in res:  # the same items' own audio and their codec round trip, judged the same way
        import torch

        from adapters.judges import error_rates
        from slm.eval.lm_eval import _np, _resample

        refs = [it.text for it in items]
        own = [_np(_resample(it.wav, it.sample_rate, 16000)) for it in items]
        with torch.no_grad():
            rt = [_np(_resample(pipe.codec.decode(pipe.encode(_resample(it.wav, it.sample_rate, pipe.sample_rate),
                                                              pipe.sample_rate)), pipe.sample_rate, 16000))
                  for it in items]
        res["floors"] = {}
        for name, clips in (("ground truth", own), ("codec round trip", rt)):
            er = error_rates(refs, judges.asr.transcribe(clips, 16000))
            res["floors"][name] = {"wer": er.wer, "cer": er.cer}
        print(res["floors"], flush=True)
    for name in a.settings.split(","):
        for seed in (int(s) for s in a.seeds.split(",")):
            key = f"{name}@{seed}"
            if key in res["rows"]:
                continue
            pipe.sampling = dataclasses.replace(base, **SETTINGS[name])
            t0 = time.time()
            r = eval_tts(pipe, items, judges, seed=seed, max_seconds=10.0)
            res["rows"][key] = {"setting": name, "seed": seed, "sampling": dataclasses.asdict(pipe.sampling),
                                **{k: r[k] for k in ("wer", "cer", "spk_sim", "dnsmos_ovrl", "rtf", "n")},
                                "hyps": [(p["ref"], p["hyp"]) for p in r["items"]], "seconds": time.time() - t0}
            print(key, {k: round(r[k], 3) for k in ("wer", "cer", "spk_sim", "dnsmos_ovrl", "rtf")}, flush=True)
            out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
