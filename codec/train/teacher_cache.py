"""On-disk caches of teacher features and k-means units, read by codec training.

``codec`` defines the format (it never imports ``adapters``); ``adapters.teachers`` and
``adapters.kmeans`` write it. Layout of one cache dir::

    meta.json                    {"kind": "features"|"units", "teacher": ..., "frame_rate": 50.0,
                                  "dim": 512 | "k": 500, "sample_rate": 16000, ...}
    items/<id>.safetensors       {"features": [T, D] fp16}  or  {"units": [T] int32}

One file per utterance keeps writing resumable (a file is complete once it exists: it is written
to a temporary name and renamed) and lets a crop read only its own utterance.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from codec.runtime import save_safetensors

_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def item_file(cache_dir: str | os.PathLike, utt_id: str) -> Path:
    """Path of one utterance's file (ids are made filesystem-safe)."""
    return Path(cache_dir) / "items" / f"{_SAFE.sub('_', utt_id)}.safetensors"


def write_item(cache_dir: str | os.PathLike, utt_id: str, tensors: dict[str, Tensor]) -> None:
    """Write atomically: a killed writer never leaves a truncated file that looks complete."""
    path = item_file(cache_dir, utt_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    save_safetensors({k: v.contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def write_meta(cache_dir: str | os.PathLike, meta: dict) -> None:
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    (Path(cache_dir) / "meta.json").write_text(json.dumps(meta, indent=2))


def read_meta(cache_dir: str | os.PathLike) -> dict:
    p = Path(cache_dir) / "meta.json"
    if not p.exists():
        raise FileNotFoundError(f"{cache_dir} is not a teacher cache (no meta.json); build it with "
                                "`slm codec teacher-cache` / `slm codec kmeans`")
    return json.loads(p.read_text())


@dataclass
class CacheReader:
    """Reads crops of cached features/units aligned to audio crops.

    ``frame_rate``: frames per second of the cache; ``sample_rate``: of the audio it was computed on.
    """

    cache_dir: Path
    key: str  # "features" or "units"
    frame_rate: float
    sample_rate: int
    meta: dict

    @classmethod
    def open(cls, cache_dir: str | os.PathLike) -> CacheReader:
        meta = read_meta(cache_dir)
        key = {"features": "features", "units": "units"}.get(meta.get("kind", ""))
        if key is None:
            raise ValueError(f"{cache_dir}/meta.json: kind must be 'features' or 'units', got {meta.get('kind')!r}")
        return cls(Path(cache_dir), key, float(meta["frame_rate"]), int(meta["sample_rate"]), meta)

    def has(self, utt_id: str) -> bool:
        return item_file(self.cache_dir, utt_id).exists()

    def full(self, utt_id: str) -> Tensor:
        path = item_file(self.cache_dir, utt_id)
        if not path.exists():
            raise FileNotFoundError(f"no cached {self.key} for utterance {utt_id!r} in {self.cache_dir}")
        return load_file(str(path))[self.key]

    def crop(self, utt_id: str, start_sample: int, n_samples: int) -> Tensor:
        """Frames covering audio ``[start, start + n)``: ``[T, D]`` features or ``[T]`` units.

        ``start`` should be a multiple of the cache's hop (``sample_rate / frame_rate``); the frame
        count is ``ceil(n / hop)``. Frames past the utterance's end repeat its last frame.
        """
        hop = self.sample_rate / self.frame_rate
        if abs(start_sample / hop - round(start_sample / hop)) > 1e-6:
            raise ValueError(f"crop start {start_sample} is not a multiple of the cache hop {hop:g} samples "
                             f"({self.cache_dir}); align crops to the semantic hop")
        x = self.full(utt_id)
        s, t = round(start_sample / hop), math.ceil(n_samples / hop - 1e-6)
        out = x[s : s + t]
        if out.shape[0] < t:
            last = x[-1:] if x.shape[0] else torch.zeros((1, *x.shape[1:]), dtype=x.dtype)
            out = torch.cat([out, last.expand(t - out.shape[0], *x.shape[1:])], dim=0)
        return out
