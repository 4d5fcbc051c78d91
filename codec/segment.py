"""Split long recordings at pauses, so that models trained on sentences can read them piece by piece.

:func:`split_at_pauses` finds the stretches of a mono waveform that are quieter than the speech around them
(frame RMS level below a threshold set from the recording's own loud frames), cuts in the middle of each
pause, drops the silence at the ends of each piece, and then joins neighbouring pieces back together while they
fit in ``max_seconds``. A stretch of speech longer than ``max_seconds`` with no pause in it is cut at its quietest
frame. Every sample that is not silence lands in exactly one segment, in order.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PauseConfig:
    """How :func:`split_at_pauses` tells pauses from speech.

    - ``max_seconds``: no segment is longer (pieces are joined up to this, and speech without pauses is cut).
    - ``min_pause``: a quiet stretch at least this long (s) is a pause to cut in.
    - ``frame``: analysis frame and hop (s).
    - ``relative_db``: a frame is quiet when its level is this far below the recording's loud level (the 95th
      percentile of frame levels), ...
    - ``floor_db``: ... or below this absolute level (dBFS), whichever threshold is higher.
    - ``pad``: silence kept before and after each segment's speech (s).
    """

    max_seconds: float = 8.0
    min_pause: float = 0.25
    frame: float = 0.02
    relative_db: float = 35.0
    floor_db: float = -60.0
    pad: float = 0.1

    def __post_init__(self):
        if not self.max_seconds > 0 or not self.frame > 0 or self.min_pause < 0 or self.pad < 0:
            raise ValueError(f"PauseConfig: max_seconds and frame must be > 0, min_pause and pad >= 0; got {self}")
        if self.max_seconds < 4 * self.frame:
            raise ValueError(f"PauseConfig: max_seconds ({self.max_seconds:g}) must be at least four frames "
                             f"({4 * self.frame:g} s)")


def frame_levels(wav: Tensor, hop: int) -> Tensor:
    """``[F]`` RMS level in dBFS of each ``hop``-sample frame of a mono ``[N]`` waveform (the last one partial)."""
    n = wav.numel()
    frames = torch.nn.functional.pad(wav, (0, -n % hop)).view(-1, hop)
    counts = torch.full((frames.shape[0],), float(hop))
    counts[-1] = n - hop * (frames.shape[0] - 1)
    rms = (frames.double().pow(2).sum(dim=1) / counts).sqrt()
    return 20 * torch.log10(rms.clamp_min(1e-10)).float()


def split_at_pauses(wav: Tensor, sample_rate: int, cfg: PauseConfig | None = None) -> list[tuple[int, int]]:
    """``(start, end)`` sample spans of the speech in ``wav`` (``[N]`` or ``[1, N]``), each at most
    ``cfg.max_seconds`` long, in order and not overlapping. An all-silent input gives ``[]``."""
    cfg = cfg or PauseConfig()
    wav = torch.as_tensor(wav)
    if wav.dim() == 2 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.dim() != 1:
        raise ValueError(f"split_at_pauses: expected mono audio [N] or [1, N], got shape {tuple(wav.shape)}")
    if wav.numel() == 0:
        return []
    hop = max(1, round(cfg.frame * sample_rate))
    db = frame_levels(wav.float(), hop)
    loud = torch.quantile(db, 0.95).item()
    quiet = db < max(cfg.floor_db, loud - cfg.relative_db)
    if bool(quiet.all()):
        return []
    n_frames = db.numel()
    max_frames = max(4, int(cfg.max_seconds * sample_rate) // hop)

    # speech runs, separated by pauses of at least min_pause (shorter quiet stretches stay inside a run)
    min_pause = max(1, round(cfg.min_pause / cfg.frame))
    runs: list[list[int]] = []
    i = 0
    while i < n_frames:
        if quiet[i]:
            i += 1
            continue
        j = i
        while j < n_frames:
            if not quiet[j]:
                j += 1
                continue
            k = j
            while k < n_frames and quiet[k]:
                k += 1
            if k - j >= min_pause or k == n_frames:
                break
            j = k
        runs.append([i, j])  # frames [i, j) hold speech
        i = j

    # runs longer than the bound are cut at their quietest frame in the second half of each window
    pieces: list[list[int]] = []
    pad = min(round(cfg.pad / cfg.frame), (max_frames - 2) // 4)
    for a, b in runs:
        while b - a > max_frames - 2 * pad:
            lo, hi = a + (max_frames - 2 * pad) // 2, a + max_frames - 2 * pad
            cut = lo + int(torch.argmin(db[lo:hi]).item())
            pieces.append([a, cut])
            a = cut
        pieces.append([a, b])

    # join neighbours while the joined span (with its padding) fits
    joined: list[list[int]] = [pieces[0]]
    for a, b in pieces[1:]:
        if b - joined[-1][0] + 2 * pad <= max_frames:
            joined[-1][1] = b
        else:
            joined.append([a, b])

    n = wav.numel()
    spans = []
    for idx, (a, b) in enumerate(joined):
        # padding takes at most half of the pause to each neighbour, so segments never overlap
        left = (joined[idx - 1][1] + a) // 2 if idx else 0
        right = (b + joined[idx + 1][0]) // 2 if idx + 1 < len(joined) else n_frames
        a, b = max(left, a - pad), min(right, b + pad)
        spans.append((a * hop, min(n, b * hop)))
    return spans
