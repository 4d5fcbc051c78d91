"""Matplotlib figures of the demo: spectrograms with token strips, prompt/continuation, codec A/B.

Figures are built with ``matplotlib.figure.Figure`` (not pyplot): no global state, so concurrent
requests cannot draw into each other's figure, and nothing has to be closed.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor

_N_MELS = 80


def log_mel(wav: Tensor, sample_rate: int, hop_seconds: float = 0.01) -> np.ndarray:
    """``[N]`` or ``[1, N]`` audio -> ``[n_mels, T]`` log-mel in dB (peak at 0 dB), T at 1/hop Hz."""
    import torchaudio

    x = wav.detach().float().cpu().reshape(-1)
    hop = max(1, round(sample_rate * hop_seconds))
    n_fft = 1 << int(np.ceil(np.log2(4 * hop)))
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=n_fft, hop_length=hop, n_mels=_N_MELS,
                                               f_max=min(8000.0, sample_rate / 2))(x)
    db = 10.0 * torch.log10(mel.clamp_min(1e-10))
    return (db - db.max()).clamp_min(-80.0).numpy()


def _spec(ax, wav: Tensor, sample_rate: int, title: str) -> float:
    """Draw a log-mel spectrogram on ``ax`` with a seconds axis; returns the duration."""
    seconds = wav.numel() / sample_rate
    ax.imshow(log_mel(wav, sample_rate), origin="lower", aspect="auto", cmap="magma",
              extent=(0.0, seconds, 0, _N_MELS), vmin=-80, vmax=0)
    ax.set_ylabel("mel bin")
    ax.set_title(title, fontsize=10, loc="left")
    return seconds


def _codes(ax, codes: np.ndarray, rate: float, label: str, max_labels: int = 48) -> None:
    """Draw ``[K, T]`` integer codes as an image on a seconds axis; print ids when they fit."""
    k, t = codes.shape
    if k == 0 or t == 0:
        ax.text(0.5, 0.5, f"no {label} stream", ha="center", va="center", transform=ax.transAxes)
        ax.set_yticks([])
        return
    ax.imshow(codes, origin="lower", aspect="auto", cmap="tab20", interpolation="nearest",
              extent=(0.0, t / rate, -0.5, k - 0.5))
    if t <= max_labels and k <= 4:
        for ki in range(k):
            for ti in range(t):
                ax.text((ti + 0.5) / rate, ki, str(int(codes[ki, ti])), ha="center", va="center", fontsize=6,
                        color="black")
    ax.set_ylabel(f"{label}\ncodebook")
    ax.set_yticks(range(k) if k <= 8 else [0, k - 1])


def tokens_over_spectrogram(wav: Tensor, sample_rate: int, semantic: Tensor, semantic_rate: float,
                            title: str = "input") -> Figure:
    """Log-mel spectrogram with the semantic codes ``[Ks, Ts]`` underneath on the same time axis."""
    fig = Figure(figsize=(9, 4.2), layout="constrained")
    ax_spec, ax_tok = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    _spec(ax_spec, wav, sample_rate, f"{title}: log-mel spectrogram")
    codes = semantic.detach().cpu().reshape(-1, semantic.shape[-1]).numpy()
    _codes(ax_tok, codes, semantic_rate, "semantic")
    ax_tok.set_xlabel(f"time (s) - semantic tokens at {semantic_rate:g} Hz")
    return fig


def continuation_plot(prompt: Tensor, continuation: Tensor, sample_rate: int) -> Figure:
    """Waveform and spectrogram of prompt + continuation, the two parts shaded and labelled."""
    p, c = prompt.detach().float().cpu().reshape(-1), continuation.detach().float().cpu().reshape(-1)
    full = torch.cat([p, c])
    tp, total = p.numel() / sample_rate, full.numel() / sample_rate
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax_wav, ax_spec = fig.subplots(2, 1, sharex=True)
    t = np.arange(full.numel()) / sample_rate
    ax_wav.plot(t[: p.numel()], p.numpy(), color="#1f77b4", lw=0.5, label="prompt")
    ax_wav.plot(t[p.numel():], c.numpy(), color="#d62728", lw=0.5, label="continuation")
    ax_wav.set_ylim(-1, 1)
    ax_wav.legend(loc="upper right", fontsize=8)
    ax_wav.set_ylabel("amplitude")
    _spec(ax_spec, full, sample_rate, "log-mel spectrogram")
    for ax in (ax_wav, ax_spec):
        ax.axvspan(0, tp, color="#1f77b4", alpha=0.08)
        ax.axvspan(tp, total, color="#d62728", alpha=0.08)
        ax.axvline(tp, color="white" if ax is ax_spec else "black", ls="--", lw=1)
    ax_wav.set_title(f"prompt 0-{tp:.2f} s | continuation {tp:.2f}-{total:.2f} s", fontsize=10, loc="left")
    ax_spec.set_xlabel("time (s)")
    return fig


def ab_spectrograms(original: Tensor, reconstruction: Tensor, sample_rate: int, label_b: str) -> Figure:
    """Original and reconstruction spectrograms stacked on one time axis."""
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax_a, ax_b = fig.subplots(2, 1, sharex=True)
    _spec(ax_a, original, sample_rate, "A: original")
    _spec(ax_b, reconstruction, sample_rate, f"B: {label_b}")
    ax_b.set_xlabel("time (s)")
    return fig


def token_streams(semantic: Tensor, acoustic: Tensor, semantic_rate: float, acoustic_rate: float) -> Figure:
    """The two token streams of one utterance: semantic ``[Ks, Ts]`` above acoustic ``[Ka, Ta]``."""
    s = semantic.detach().cpu().reshape(-1, semantic.shape[-1]).numpy()
    a = acoustic.detach().cpu().reshape(-1, acoustic.shape[-1]).numpy()
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    ax_s, ax_a = fig.subplots(2, 1, sharex=True, height_ratios=[1, max(1, min(4, a.shape[0]))])
    _codes(ax_s, s, semantic_rate, "semantic", max_labels=0)
    ax_s.set_title(f"semantic: {s.shape[0]} x {s.shape[1]} codes at {semantic_rate:g} Hz", fontsize=10, loc="left")
    _codes(ax_a, a, acoustic_rate or 1.0, "acoustic", max_labels=0)
    ax_a.set_title(f"acoustic: {a.shape[0]} x {a.shape[1]} codes at {acoustic_rate:g} Hz", fontsize=10, loc="left")
    ax_a.set_xlabel("time (s)")
    return fig
