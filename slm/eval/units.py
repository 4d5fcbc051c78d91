"""Frame-level phone labels and the unit-quality measures of HuBERT (phone purity, cluster purity, PNMI).

Definitions follow fairseq ``examples/hubert/measure_teacher_quality.py``: from the joint distribution
``P(p, c)`` of frame-aligned phones ``p`` and codes ``c``,

* phone purity   = sum_c max_p P(p, c)  (how well a code predicts its phone),
* cluster purity = sum_p max_c P(p, c)  (how well a phone predicts its code),
* PNMI           = I(p; c) / H(p)       (share of phone information the codes carry).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from adapters.corpus.phones import INVENTORY, PHONE_TO_ID


def frame_labels(phones: list, n_frames: int, frame_rate: float) -> np.ndarray:
    """``[[start_s, end_s, label], ...]`` -> ``[n_frames]`` phone ids, the phone at each frame's centre.

    Frames past the last segment take the last label (a codec pads to whole tokens).
    """
    if not phones:
        raise ValueError("expected a non-empty phone alignment [[start_s, end_s, label], ...], got none")
    ends = np.array([float(p[1]) for p in phones])
    try:
        ids = np.array([PHONE_TO_ID[p[2]] for p in phones])
    except KeyError as e:
        raise ValueError(f"phone label {e.args[0]!r} is not in the shared inventory {INVENTORY}") from e
    centres = (np.arange(n_frames) + 0.5) / frame_rate
    idx = np.minimum(np.searchsorted(ends, centres, side="right"), len(phones) - 1)
    return ids[idx]


@dataclass
class UnitQuality:
    phone_purity: float
    cluster_purity: float
    pnmi: float
    n_frames: int
    n_codes_used: int

    def as_dict(self) -> dict:
        return asdict(self)


def _entropy(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def unit_quality(phones: np.ndarray, codes: np.ndarray) -> UnitQuality:
    """Purity and PNMI of ``codes`` against ``phones`` (both ``[N]`` int frame labels, same length)."""
    phones, codes = np.asarray(phones).reshape(-1), np.asarray(codes).reshape(-1)
    if phones.shape != codes.shape:
        raise ValueError(f"expected one code per phone frame, got {phones.shape[0]} phones and {codes.shape[0]} codes")
    if phones.size == 0:
        raise ValueError("expected at least one frame, got none")
    _, pi = np.unique(phones, return_inverse=True)
    cu, ci = np.unique(codes, return_inverse=True)
    joint = np.zeros((pi.max() + 1, ci.max() + 1))
    np.add.at(joint, (pi, ci), 1.0)
    joint /= joint.sum()  # P(p, c): rows phones, columns codes
    p_p, p_c = joint.sum(1), joint.sum(0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(p_p, p_c)[nz])).sum())
    h_p = _entropy(p_p)
    return UnitQuality(phone_purity=float(joint.max(0).sum()), cluster_purity=float(joint.max(1).sum()),
                       pnmi=mi / h_p if h_p > 0 else float("nan"), n_frames=int(phones.size),
                       n_codes_used=int(cu.size))


def chance_pnmi(phones: np.ndarray, codes: np.ndarray, seed: int = 0) -> float:
    """PNMI of the same codes shuffled across frames: the plug-in estimator's floor at this sample size.

    I(p; c) estimated from counts is biased upwards by about (|P|-1)(|C|-1) / (2N) nats, which is large
    when many codes share few frames (1024 codes at 12.5 Hz on a few minutes of audio); report PNMI
    next to this floor, or use more frames.
    """
    c = np.random.default_rng(seed).permutation(np.asarray(codes).reshape(-1))
    return unit_quality(phones, c).pnmi
