"""k-means units of teacher features: the frozen semantic codebooks of SAC, SACodec and STACodec.

Teacher features (50 Hz for Whisper/HuBERT) are average-pooled to the codec's semantic rate
(12.5 Hz for sac/sacodec, as SAC's GLM-4-Voice tokenizer; 50 Hz for stacodec/distill) and
clustered with scikit-learn's ``MiniBatchKMeans`` (HuBERT and the DASB recipes use it too).

* the centroids ``[K, D]`` are what ``DualStreamCodec.set_teacher_codebook`` receives;
* the units ``[T']`` (nearest centroid per pooled frame) are what ``TeacherBatch.units`` holds,
  cached per manifest with :func:`cache_units` in the ``codec.train.teacher_cache`` format.

Saved as ``<file>.safetensors`` (centroids) + ``<file>.json`` (teacher, layer, rate, k, ...).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor
from tqdm import tqdm

from codec.runtime import save_safetensors
from codec.train.teacher_cache import CacheReader, item_file, write_item, write_meta


def pool_features(feats: Tensor, from_rate: float, to_rate: float) -> Tensor:
    """Average-pool ``[T, D]`` (or ``[B, T, D]``) from ``from_rate`` to ``to_rate`` Hz.

    The ratio must be a whole number (50 -> 12.5 pools 4 frames); a partial last window is the
    mean of the frames it has, so ``T' = ceil(T / ratio)``.
    """
    ratio = from_rate / to_rate
    if ratio < 1 or abs(ratio - round(ratio)) > 1e-6:
        raise ValueError(f"can only pool by a whole factor: {from_rate:g} Hz -> {to_rate:g} Hz is x{ratio:g}")
    r = round(ratio)
    if r == 1:
        return feats
    squeeze = feats.dim() == 2
    x = feats[None] if squeeze else feats
    x = F.avg_pool1d(x.float().transpose(1, 2), r, r, ceil_mode=True).transpose(1, 2)  # [B, T', D]
    return x[0] if squeeze else x


def centroids_path(path: str | os.PathLike) -> Path:
    """``x`` or ``x.safetensors`` -> ``x.safetensors`` (names like ``k1024-12.5hz`` keep their dot)."""
    p = str(path)
    return Path(p if p.endswith(".safetensors") else p + ".safetensors")


def meta_path(path: str | os.PathLike) -> Path:
    return Path(str(centroids_path(path))[: -len(".safetensors")] + ".json")


@dataclass
class KMeansUnits:
    """A fitted k-means codebook. ``centroids``: ``[K, D]`` float32; ``meta``: provenance."""

    centroids: Tensor
    meta: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.centroids.shape[0]

    @property
    def rate(self) -> float:
        return float(self.meta["rate"])

    def units(self, features: Tensor, feature_rate: float | None = None) -> Tensor:
        """Nearest centroid per frame: ``[T, D] -> [T']`` or ``[B, T, D] -> [B, T']`` int64.

        ``feature_rate`` (default: the teacher's rate in ``meta``) is pooled to ``self.rate`` first.
        """
        if features.shape[-1] != self.centroids.shape[1]:
            raise ValueError(f"features have dim {features.shape[-1]}, centroids expect {self.centroids.shape[1]}")
        fr = float(feature_rate if feature_rate is not None else self.meta.get("feature_rate", self.rate))
        x = pool_features(features.float(), fr, self.rate)
        c = self.centroids.float()
        d = (x.pow(2).sum(-1, keepdim=True) - 2 * x @ c.T + c.pow(2).sum(-1))  # [.., T', K]
        return d.argmin(-1)

    def save(self, path: str | os.PathLike) -> Path:
        p = centroids_path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        save_safetensors({"centroids": self.centroids.float().contiguous()}, str(p))
        meta_path(p).write_text(json.dumps({**self.meta, "k": self.k, "dim": self.centroids.shape[1]},
                                                      indent=2))
        return p

    @classmethod
    def load(cls, path: str | os.PathLike) -> KMeansUnits:
        p = centroids_path(path)
        if not p.exists():
            raise FileNotFoundError(f"no k-means centroids at {p}")
        meta_p = meta_path(p)
        meta = json.loads(meta_p.read_text()) if meta_p.exists() else {}
        return cls(load_file(str(p))["centroids"], meta)


def _ids_for_splits(reader: CacheReader, splits: tuple[str, ...] | None) -> list[str]:
    manifest = reader.meta.get("manifest")
    if manifest and Path(manifest).exists():
        from adapters.teachers.cache import manifest_items

        ids = [r["id"] for r in manifest_items(manifest, splits)]
        return [i for i in ids if reader.has(i)]
    return sorted(p.stem for p in (reader.cache_dir / "items").glob("*.safetensors"))


def fit_kmeans(features_dir: str | os.PathLike, k: int, rate: float, splits: tuple[str, ...] | None = ("train",),
               max_frames: int = 200_000, seed: int = 0, progress: bool = True, max_iter: int = 20,
               n_init: int = 1) -> KMeansUnits:
    """Fit ``k`` centroids on the cached features of ``splits`` pooled to ``rate`` Hz.

    At most ``max_frames`` pooled frames (a random subset) are used: MiniBatchKMeans converges long
    before that on a few hours of speech, and it bounds memory.
    """
    from sklearn.cluster import MiniBatchKMeans

    reader = CacheReader.open(features_dir)
    if reader.key != "features":
        raise ValueError(f"{features_dir} caches {reader.key}, k-means needs teacher features")
    ids = _ids_for_splits(reader, splits)
    if not ids:
        raise ValueError(f"no cached features for splits {splits} in {features_dir}")
    pooled = [pool_features(reader.full(i).float(), reader.frame_rate, rate)
              for i in tqdm(ids, desc="load features", disable=not progress)]
    x = torch.cat(pooled).numpy()
    if len(x) < k:
        raise ValueError(f"only {len(x)} pooled frames for k={k}; cache more audio or lower k")
    rng = np.random.default_rng(seed)
    if len(x) > max_frames:
        x = x[rng.choice(len(x), max_frames, replace=False)]
    # max_iter counts passes over the data; 20 with early stopping is plenty for a few hours of
    # speech and keeps a k=1024 fit to minutes on one CPU thread (HuBERT's recipe runs 100 on GPUs).
    km = MiniBatchKMeans(n_clusters=k, batch_size=min(4096, len(x)), n_init=n_init, max_iter=max_iter,
                         max_no_improvement=20, init_size=min(len(x), 3 * k), random_state=seed,
                         compute_labels=False, verbose=0).fit(x)
    meta = {"teacher": reader.meta.get("teacher"), "spec": reader.meta.get("spec"), "layer": reader.meta.get("layer"), "rate": float(rate),
            "feature_rate": reader.frame_rate, "sample_rate": reader.sample_rate, "splits": list(splits or []),
            "n_frames": len(x), "inertia_per_frame": float(km.inertia_) / len(x) if km.inertia_ else None,
            "features": str(Path(features_dir).resolve())}
    return KMeansUnits(torch.from_numpy(km.cluster_centers_).float(), meta)


def cache_units(km: KMeansUnits, features_dir: str | os.PathLike, out_dir: str | os.PathLike,
                progress: bool = True) -> Path:
    """Units ``[T']`` of every cached utterance (all splits), in the teacher-cache format."""
    reader = CacheReader.open(features_dir)
    out = Path(out_dir)
    write_meta(out, {"kind": "units", "teacher": reader.meta.get("teacher"), "spec": reader.meta.get("spec"),
                     "frame_rate": km.rate,
                     "k": km.k, "sample_rate": reader.sample_rate, "features": str(Path(features_dir).resolve()),
                     "manifest": reader.meta.get("manifest")})
    ids = sorted(p.name[: -len(".safetensors")] for p in (reader.cache_dir / "items").glob("*.safetensors"))
    for i in tqdm(ids, desc="units", disable=not progress):
        if not item_file(out, i).exists():
            write_item(out, i, {"units": km.units(reader.full(i), reader.frame_rate).to(torch.int32)})
    return out


def teacher_batch_for(model, teacher, wav: Tensor):
    """What ``model.encode`` needs from its teacher for ``wav [B, 1, N]``: for codecs that encode
    with their teacher (sac), the units ``[B, Ts]`` = nearest of the model's own frozen centroids
    to the teacher's features pooled to the semantic rate; ``None`` for every other codec."""
    if not model.needs_teacher_at_encode:
        return None
    from codec.modules.teacher import TeacherBatch

    if teacher is None:
        raise ValueError(f"the {model.config.variant!r} codec encodes with its teacher; none was given")
    feats = teacher.features(wav)  # [B, Tt, D]
    cents = model.teacher_centroids()
    km = KMeansUnits(cents, {"rate": model.semantic_rate, "feature_rate": teacher.frame_rate})
    return TeacherBatch(features=feats, units=km.units(feats, teacher.frame_rate), feature_rate=teacher.frame_rate)
