"""What a codec is handed from its semantic teacher, and how it is put on the codec's frame grid."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class TeacherBatch:
    """Teacher outputs for a batch of audio (computed live or read from a cache on disk).

    features: ``[B, Tt, D]`` float teacher features at ``feature_rate`` Hz, or None.
    units:    ``[B, Ts]`` int64 k-means units at the codec's *semantic* rate, or None.
    """

    features: Tensor | None = None
    units: Tensor | None = None
    feature_rate: float = 50.0

    def __post_init__(self) -> None:
        if self.features is not None and self.features.dim() != 3:
            raise ValueError(f"teacher features must be [B, Tt, D], got shape {tuple(self.features.shape)}")
        if self.units is not None and self.units.dim() != 2:
            raise ValueError(f"teacher units must be [B, Ts], got shape {tuple(self.units.shape)}")


def _fit_length(x: Tensor, n: int) -> Tensor:
    """Trim or edge-pad ``x [B, T, ...]`` along time to ``n`` frames (teachers differ by a frame)."""
    if x.shape[1] >= n:
        return x[:, :n]
    pad = x[:, -1:].expand(-1, n - x.shape[1], *x.shape[2:])
    return torch.cat([x, pad], 1)


def features_at(teacher: TeacherBatch, n_frames: int, frame_rate: float, batch: int) -> Tensor:
    """Teacher features on the codec grid: ``[B, n_frames, D]`` (average pooling when the teacher
    rate is an integer multiple of ``frame_rate``, linear interpolation otherwise)."""
    f = teacher.features
    if f is None:
        raise ValueError("teacher.features is None but this loss needs teacher features")
    if f.shape[0] != batch:
        raise ValueError(f"teacher features have batch {f.shape[0]}, audio has batch {batch}")
    k = teacher.feature_rate / frame_rate
    if abs(k - round(k)) < 1e-6 and round(k) >= 1:
        k = round(k)
        f = _fit_length(f.float(), n_frames * k)
        return F.avg_pool1d(f.transpose(1, 2), k).transpose(1, 2) if k > 1 else f
    f = _fit_length(f.float(), max(1, round(n_frames * k)))
    return F.interpolate(f.transpose(1, 2), size=n_frames, mode="linear", align_corners=False).transpose(1, 2)


def units_at(teacher: TeacherBatch | None, n_frames: int, codebook_size: int, batch: int) -> Tensor | None:
    """Teacher units ``[B, n_frames]`` int64 checked to lie in ``0..codebook_size-1`` (None if absent)."""
    if teacher is None or teacher.units is None:
        return None
    u = teacher.units
    if u.shape[0] != batch:
        raise ValueError(f"teacher units have batch {u.shape[0]}, audio has batch {batch}")
    if abs(u.shape[1] - n_frames) > 2:
        raise ValueError(f"teacher units have {u.shape[1]} frames, the codec expects {n_frames} "
                         "at its semantic rate (units must be at the semantic rate)")
    if u.numel() and (int(u.min()) < 0 or int(u.max()) >= codebook_size):
        raise ValueError(f"teacher units must lie in 0..{codebook_size - 1}, got {int(u.min())}..{int(u.max())}")
    return _fit_length(u.long(), n_frames)
