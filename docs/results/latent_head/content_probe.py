"""Where the bundled codec keeps what is said: the EVAL.md CTC probe (slm.eval.probe.train_probe), trained on
characters instead of phones, on each token stream of the `slm head-fit` cache (the bundled codec's tokens of
2560 training utterances of data/synth10h), scored on its valid split (unseen sentences). Same probe, same
steps, same data for every stream; only the input changes:

* ``semantic``: the 12.5 Hz semantic tokens (K = 1024), what the LM reads and writes;
* ``acoustic``: the 50 Hz acoustic codes (K = 8192), what the acoustic head must predict;
* ``both``: each acoustic code paired with its frame's semantic token (one id per pair, hashed into 2^16).

Run from the repo root:  python docs/results/latent_head/content_probe.py runs/headfit/cache OUT_DIR [--steps N]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from codec.runtime import set_threads


def utterances(cache: Path, split: str) -> list[dict]:
    from safetensors import safe_open

    out = []
    for f in sorted((cache / split).glob("shard_*.safetensors")):
        with safe_open(str(f), "pt") as st:
            table = json.loads(st.metadata()["utterances"])
            sem, codes = st.get_tensor("sem"), st.get_tensor("codes")
        for u in table:
            sl = slice(u["offset"], u["offset"] + u["frames"])
            out.append({"id": u["id"], "sem": sem[sl], "codes": codes[sl]})
    return out


@torch.no_grad()
def encoded(args, n: int) -> list[dict]:
    """The first ``n`` test-split utterances of the manifest, tokenised by the model's codec."""
    from codec.audio import load_audio
    from codec.model import DualStreamCodec
    from codec.train.batches import read_rows

    codec = DualStreamCodec.from_pretrained(Path(args.model) / "codec").float().eval()
    out = []
    for r in read_rows(args.manifest, "test")[:n]:
        t = codec.encode(load_audio(r["path"], codec.sample_rate)[None], sample_rate=codec.sample_rate)
        ts = t.semantic.shape[-1]
        out.append({"id": r["id"], "sem": t.semantic[0, 0], "codes": t.acoustic[0, 0, : ts * (t.acoustic.shape[-1] // ts)].view(ts, -1)})
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cache")
    ap.add_argument("out")
    ap.add_argument("--manifest", default="data/synth10h/manifest.jsonl")
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--test", type=int, default=200)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--score-on", default="valid", choices=("valid", "test"),
                    help="valid: the cache's valid split (unseen sentences); test: the manifest's test split "
                         "(unseen sentences and voices), encoded here with the model's codec")
    ap.add_argument("--model", default="checkpoints/default")
    ap.add_argument("--streams", default="semantic,acoustic,both")
    args = ap.parse_args()
    set_threads(2)
    from slm.eval.probe import ProbeConfig, train_probe

    text = {}
    with open(args.manifest) as f:
        for line in f:
            r = json.loads(line)
            text[r["id"]] = r["text"]
    chars = sorted({c for t in text.values() for c in t.lower()})
    cid = {c: i for i, c in enumerate(chars)}

    def label(u):
        return torch.tensor([cid[c] for c in text[u["id"]].lower()], dtype=torch.long)

    cache = Path(args.cache)
    train = utterances(cache, "train")
    test = utterances(cache, "valid")[: args.test] if args.score_on == "valid" else encoded(args, args.test)
    streams = {
        "semantic": (lambda u: u["sem"], 1024, 12.5),
        "acoustic": (lambda u: u["codes"].reshape(-1).clamp_min(0), 8192, 50.0),
        "both": (lambda u: (u["sem"].repeat_interleave(u["codes"].shape[1]) * 8192
                            + u["codes"].reshape(-1).clamp_min(0)) % 65521, 65521, 50.0),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = {"train_utterances": len(train), "test_utterances": len(test), "steps": args.steps,
           "batch": args.batch, "labels": "characters", "streams": {}}
    res["scored_on"] = args.score_on
    for name in args.streams.split(","):
        get, k, rate = streams[name]
        t0 = time.time()
        r = train_probe([(get(u), label(u)) for u in train], [(get(u), label(u)) for u in test], k, len(chars),
                        rate, ProbeConfig(steps=args.steps, batch_size=args.batch, lr=args.lr), progress=False)
        res["streams"][name] = {"cer": r.per, "first_loss": r.first_loss, "last_loss": r.last_loss,
                                "upsample": r.upsample, "empty": r.empty, "seconds": round(time.time() - t0, 1)}
        print(name, res["streams"][name], flush=True)
        (out / f"content_probe_{args.score_on}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
