"""Head tokens: per utterance of a manifest, its true semantic tokens with the acoustic codes a speech LM's
acoustic head gives them (:meth:`SpeechPipeline.voice_semantic`), written as a token dir.

A codec decoder fine-tuned on them (``head_tokens`` in ``slm codec train``; README "Voicing the head's
codes") learns to turn what the head predicts into speech, the way a vocoder is fine-tuned on a TTS
model's ground-truth-aligned features. The head's codes are sampled the way TTS samples them (the model's
sampling settings; the speaker's first utterance of the manifest as the voice prompt, as ``slm eval``
prompts), from a generator seeded by the seed and the utterance id, so a resumed run writes the same codes.
"""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import torch


def head_pipeline(model: str | Path, pipe=None):
    """``pipe``, or the :class:`SpeechPipeline` of ``model``; either must have an acoustic head."""
    from slm.pipeline import SpeechPipeline

    if pipe is None:
        pipe = SpeechPipeline.from_pretrained(model)
    if pipe.head is None:
        raise ValueError(f"{model} has no acoustic head: its codec has no acoustic stream")
    return pipe


def head_token_dir(model: str | Path, manifest: str | Path, out_dir: str | Path, split: str | None = "train",
                   limit: int | None = None, seed: int = 0, progress: bool = True, pipe=None) -> int:
    """Write ``out_dir/items/<id>.safetensors`` (semantic: the codec's own; acoustic: the head's) and
    ``out_dir/index.jsonl`` for the utterances of ``manifest`` (one ``split``; all with None; the first
    ``limit``). Resumable: existing item files are kept. Returns the number of utterances indexed."""
    from tqdm import tqdm

    from codec.audio import load_audio
    from codec.train.batches import read_rows
    from codec.train.teacher_cache import item_file
    from slm.templates import with_phones

    rows = read_rows(str(manifest), split)[:limit]
    if not rows:
        raise ValueError(f"{manifest} has no utterances in split {split!r}")
    pipe = head_pipeline(model, pipe)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {"model": str(model), "manifest": str(manifest), "split": split, "seed": seed,
            "head_temperature": pipe.sampling.head_temperature, "head_top_k": pipe.sampling.head_top_k,
            "tts_aligned": bool(pipe.tts_aligned), "tts_phones": bool(pipe.tts_phones)}
    # items are kept by id, so a dir can grow over several manifests (e.g. a corpus, then a larger one
    # that holds it) with the same model and sampling; anything that changes the codes needs a new dir
    codes_by = ("seed", "head_temperature", "head_top_k", "tts_aligned", "tts_phones")
    old = out / "info.json"
    if old.is_file():
        prev = json.loads(old.read_text())
        if any(prev.get(k) != info[k] for k in codes_by):
            raise ValueError(f"{out} was made with other settings ({ {k: prev.get(k) for k in codes_by} }, now "
                             f"{ {k: info[k] for k in codes_by} }): use a new --out")
    old.write_text(json.dumps(info, indent=2))
    first: dict[str, dict] = {}
    for r in rows:
        first.setdefault(r["speaker"], r)
    voices: dict[str, object] = {}
    meta = {"acoustic": "head", "model": str(model)}
    done = []
    for r in tqdm(rows, desc="head tokens", unit="utt", disable=not progress):
        path = item_file(out, r["id"])
        if not path.exists():
            if r["speaker"] not in voices:
                voices[r["speaker"]] = pipe._voice(load_audio(first[r["speaker"]]["path"], pipe.sample_rate))
            wav = load_audio(r["path"], pipe.sample_rate)
            codes = pipe.encode(wav, pipe.sample_rate).semantic[0, 0]
            words = with_phones(r["words"], r.get("phones")) if r.get("words") else None
            gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(r["id"].encode())) % 2**63)
            toks = pipe.voice_semantic(codes, r.get("text", ""), words, voices[r["speaker"]], gen,
                                       wav.shape[-1] / pipe.sample_rate)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            toks.save(tmp, metadata=meta)
            tmp.replace(path)
        done.append(r)
    from safetensors import safe_open

    index = {}  # an earlier run's items stay indexed
    if (out / "index.jsonl").is_file():
        index = {rec["id"]: rec for rec in map(json.loads, (out / "index.jsonl").read_text().splitlines())}
    for r in done:
        with safe_open(str(item_file(out, r["id"])), "pt") as st:  # the shapes only, as `slm codec tokenize`
            ts, ta = st.get_slice("semantic").get_shape()[-1], st.get_slice("acoustic").get_shape()[-1]
        index[r["id"]] = {"id": r["id"], "tokens": str(item_file(out, r["id"]).relative_to(out)),
                          "n_semantic": ts, "n_acoustic": ta,
                          **{k: r[k] for k in ("text", "speaker", "split", "duration") if k in r}}
    (out / "index.jsonl.tmp").write_text("".join(json.dumps(rec) + "\n" for rec in index.values()))
    (out / "index.jsonl.tmp").replace(out / "index.jsonl")
    return len(index)
