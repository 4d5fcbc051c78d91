"""Cache teacher features for a whole manifest once, so codec training never runs a teacher.

Format: ``codec.train.teacher_cache`` (one fp16 safetensors file per utterance + ``meta.json``).
Resumable: utterances whose file exists are skipped, so a killed run continues where it stopped.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from tqdm import tqdm

from codec.contracts import SemanticTeacher
from codec.train.teacher_cache import item_file, read_meta, write_item, write_meta


def manifest_items(manifest: str | os.PathLike, splits: tuple[str, ...] | None = None) -> list[dict]:
    """Rows of a JSONL manifest (optionally only some splits), each with ``path`` made absolute."""
    from codec.train.batches import read_rows

    return [r for r in read_rows(str(manifest), None) if not splits or r.get("split") in splits]


def cache_teacher_features(teacher: SemanticTeacher, manifest: str | os.PathLike, out_dir: str | os.PathLike,
                           splits: tuple[str, ...] | None = None, progress: bool = True) -> Path:
    """Write ``[T, D]`` fp16 features of every utterance of ``manifest`` under ``out_dir``.

    The cache is keyed by teacher: an ``out_dir`` holding another teacher's features is refused.
    Returns ``out_dir``.
    """
    from codec.audio import load_audio

    out = Path(out_dir)
    meta = {"kind": "features", "teacher": teacher.name, "frame_rate": float(teacher.frame_rate),
            "dim": int(teacher.dim), "sample_rate": int(teacher.sample_rate),
            "manifest": str(Path(manifest).resolve()), "spec": getattr(teacher, "spec", None)}
    if (out / "meta.json").exists():
        old = read_meta(out)
        if old.get("teacher") != teacher.name or old.get("kind") != "features":
            raise ValueError(f"{out} already caches {old.get('kind')} of teacher {old.get('teacher')!r}, "
                             f"not features of {teacher.name!r}; choose another --out")
    write_meta(out, meta)
    rows = manifest_items(manifest, splits)
    todo = [r for r in rows if not item_file(out, r["id"]).exists()]
    for row in tqdm(todo, desc=f"teacher {teacher.name}", unit="utt", disable=not progress,
                    initial=len(rows) - len(todo), total=len(rows)):
        wav = load_audio(row["path"], teacher.sample_rate)  # [1, N]
        feats = teacher.features(wav[None])[0]  # [T, D]
        write_item(out, row["id"], {"features": feats.to(torch.float16)})
    return out
