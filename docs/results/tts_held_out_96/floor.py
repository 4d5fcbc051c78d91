"""Whisper-base (greedy, the EVAL.md judge) on the corpus' own audio of the first N held-out test items: the
floor that issue 5's TTS target (WER <= 1.5x this) is measured against, for the same items `lm-eval --limit N`
speaks.

    python docs/results/tts_held_out_96/floor.py data/synth2h/manifest.jsonl 96 OUT.json [LM_EVAL_JSON]

With LM_EVAL_JSON (an `lm-eval` output), it checks that both cover the same items in the same order.
"""
from __future__ import annotations

import json
import sys


def main(manifest: str, n: int, out: str, lm_eval: str | None = None) -> dict:
    from adapters.judges import error_rates
    from codec.runtime import set_threads
    from slm.eval.codec_eval import Judges
    from slm.eval.data import load_items

    set_threads(2)
    items = load_items(manifest, "test", n)
    if lm_eval is not None:
        with open(lm_eval) as f:
            ids = [t["id"] for t in json.load(f)["tts"]["items"]]
        if ids != [it.id for it in items]:
            raise SystemExit(f"{lm_eval} covers other items than the first {n} test items of {manifest}")
    judges = Judges(metrics=("asr",))
    hyps = judges.asr.transcribe([it.wav[0].numpy() for it in items], items[0].sample_rate, progress=True)
    r = error_rates([it.text for it in items], hyps)
    per = []
    for it, h in zip(items, hyps):
        e = error_rates([it.text], [h])
        per.append({"id": it.id, "ref": it.text, "hyp": h, "wer_edits": e.wer * e.n_words, "n_words": e.n_words})
    res = {"manifest": manifest, "n": len(items), "whisper_wer_corpus_audio": r.wer,
           "whisper_cer_corpus_audio": r.cer, "ids": [it.id for it in items], "items": per}
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print({k: v for k, v in res.items() if k not in ("ids", "items")})
    return res


if __name__ == "__main__":
    a = sys.argv[1:]
    if len(a) not in (3, 4):
        raise SystemExit(__doc__)
    main(a[0], int(a[1]), a[2], a[3] if len(a) == 4 else None)
