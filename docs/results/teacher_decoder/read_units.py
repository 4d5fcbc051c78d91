"""Can Whisper-base's own decoder read the semantic stream? (SACodec anchors it on Whisper-base k-means units.)

For each held-out item, Whisper-base's decoder (CTranslate2, beam 5, no timestamps, no 4-gram repeats, at most
10 + 6 tokens per second of audio) cross-attends to one of these encoder outputs instead of the audio's:
- ``real``: the encoder's output for the audio itself (the reference; Whisper as usual, without its
  timestamp-driven segmenting);
- ``units``: the teacher's own k-means units of that output (pooled to 25 Hz, each unit's centroid repeated
  to 50 Hz): what the ideal anchored codec would transmit;
- ``codec``: the centroids of the codes the bundled codec's semantic stream gives for the audio.
Each comes ``pad`` (placed in the encoder output of 30 s of silence, as Whisper is trained) and ``unpad``
(alone). ``agree`` is the share of 25 Hz frames where the codec's code equals the teacher's unit.

    python docs/results/teacher_decoder/read_units.py checkpoints/default/codec data/synth2h/manifest.jsonl OUT.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("codec")
    ap.add_argument("manifest")
    ap.add_argument("out")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=16)
    args = ap.parse_args()

    import numpy as np
    import soundfile as sf
    import torch
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_ctranslate2_storage

    from adapters.judges.text import error_rates
    from adapters.kmeans import pool_features
    from adapters.teachers.models import WhisperCT2Teacher
    from codec.model import DualStreamCodec

    torch.set_num_threads(2)
    root = os.path.dirname(os.path.abspath(args.manifest))
    with open(args.manifest) as f:
        items = [json.loads(line) for line in f]
    items = [i for i in items if i["split"] == args.split][: args.limit]
    teacher = WhisperCT2Teacher(cpu_threads=2)
    wm = teacher._whisper
    tok = Tokenizer(wm.hf_tokenizer, True, task="transcribe", language="en")
    prompt = [*tok.sot_sequence, tok.no_timestamps]
    codec = DualStreamCodec.from_pretrained(args.codec).eval()
    cents = codec.teacher_centroids()
    silence = teacher._encode(wm.feature_extractor(np.zeros(16000 * 30, np.float32))[None, :, :3000])[0]

    def read(feats: np.ndarray, seconds: float) -> str:
        sv = get_ctranslate2_storage(np.ascontiguousarray(feats[None].astype(np.float32)))
        r = wm.model.generate(sv, [prompt], beam_size=5, max_length=int(10 + 6 * seconds), no_repeat_ngram_size=4)
        return tok.decode([t for t in r[0].sequences_ids[0] if t < tok.eot]).strip()

    def padded(feats: np.ndarray) -> np.ndarray:
        out = silence.copy()
        out[: len(feats)] = feats
        return out

    rows = []
    for it in items:
        wav, _ = sf.read(os.path.join(root, it["path"]), dtype="float32")
        feats = teacher._encode(teacher._mel(wav)[None])[0]
        n50 = feats.shape[0]
        units = torch.cdist(pool_features(torch.from_numpy(feats), 50.0, codec.semantic_rate), cents).argmin(-1)
        with torch.no_grad():
            sem = codec.encode(torch.from_numpy(wav)[None, None]).semantic[0, 0].long()
        m = min(len(sem), len(units))
        up = round(50.0 / codec.semantic_rate)
        inputs = {"real": feats, "units": cents[units].repeat_interleave(up, 0).numpy()[:n50],
                  "codec": cents[sem].repeat_interleave(up, 0).numpy()[:n50]}
        row = {"id": it["id"], "text": it["text"], "agree": float((sem[:m] == units[:m]).float().mean())}
        for name, f in inputs.items():
            row[f"{name}_pad"] = read(padded(f), len(wav) / 16000)
            row[f"{name}_unpad"] = read(f, len(wav) / 16000)
        rows.append(row)
        print(json.dumps(row), flush=True)
    keys = [k for k in rows[0] if k.endswith("pad")]
    table = {k: error_rates([r["text"] for r in rows], [r[k] for r in rows]).wer for k in keys}
    res = {"codec": args.codec, "split": args.split, "items": len(rows),
           "agree_mean": float(np.mean([r["agree"] for r in rows])), "wer": table, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)
    print(json.dumps({"agree_mean": res["agree_mean"], "wer": table}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
