"""Multi-period and multi-resolution STFT discriminators (HiFi-GAN MPD, UnivNet/DAC-style MRD).

Both return, per sub-discriminator, the final logits and the hidden feature maps (for feature
matching). Defaults are small (channel widths 8..128) so that a GAN step runs on a 2-core CPU;
SAC uses DAC's full-size MPD (periods 2, 3, 5, 7, 11) plus a multi-band STFT discriminator at
FFT 2048/1024/512 — raise ``channels`` and ``stft_ffts`` in the config for that.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def _conv_stack(convs: nn.ModuleList, post: nn.Module, h: Tensor) -> tuple[Tensor, list[Tensor]]:
    """Leaky-ReLU conv stack + output conv; returns (logits [B, -1], every layer's features)."""
    feats = []
    for conv in convs:
        h = F.leaky_relu(conv(h), 0.1)
        feats.append(h)
    h = post(h)
    feats.append(h)
    return h.flatten(1), feats


@dataclass
class DiscriminatorConfig:
    periods: tuple[int, ...] = (2, 3, 5, 7, 11)  # primes, so periods do not share sub-patterns (HiFi-GAN)
    mpd_channels: tuple[int, ...] = (16, 32, 64, 128)  # HiFi-GAN: 32..1024; small for CPU
    stft_ffts: tuple[int, ...] = (1024, 512, 256)  # DAC: 2048/1024/512 at 44.1 kHz; one octave lower at 16 kHz
    stft_channels: int = 16  # DAC: 32
    use_mpd: bool = True
    use_stft: bool = True


@dataclass
class DiscriminatorOutput:
    """``logits``: one map per sub-discriminator; ``features``: each one's hidden maps (same order)."""

    logits: list[Tensor] = field(default_factory=list)
    features: list[list[Tensor]] = field(default_factory=list)


class PeriodDiscriminator(nn.Module):
    """Folds ``[B, 1, N]`` into ``[B, 1, N/p, p]`` and runs 2-D convs along time only (HiFi-GAN)."""

    def __init__(self, period: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.period = period
        chans = (1, *channels)
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(cin, cout, (5, 1), (3, 1), padding=(2, 0)))
            for cin, cout in itertools.pairwise(chans)
        )
        self.convs.append(weight_norm(nn.Conv2d(chans[-1], chans[-1], (5, 1), 1, padding=(2, 0))))
        self.post = weight_norm(nn.Conv2d(chans[-1], 1, (3, 1), 1, padding=(1, 0)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        b, c, n = x.shape
        pad = (-n) % self.period
        if pad:
            x = F.pad(x, (0, pad), mode="reflect" if pad < n else "constant")
        x = x.view(b, c, -1, self.period)  # [B, 1, N/p, p]
        return _conv_stack(self.convs, self.post, x)


class STFTDiscriminator(nn.Module):
    """2-D convs over a complex STFT (real and imaginary parts as channels), one resolution."""

    def __init__(self, n_fft: int, channels: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        c = channels
        self.convs = nn.ModuleList([
            weight_norm(nn.Conv2d(2, c, (3, 9), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 9), stride=(1, 2), padding=(1, 4))),
            weight_norm(nn.Conv2d(c, c, (3, 3), padding=(1, 1))),
        ])
        self.post = weight_norm(nn.Conv2d(c, 1, (3, 3), padding=(1, 1)))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        spec = torch.stft(x.squeeze(1).float(), self.n_fft, self.n_fft // 4, window=self.window,
                          return_complex=True)  # [B, F, T]
        h = torch.stack([spec.real, spec.imag], dim=1).transpose(2, 3)  # [B, 2, T, F]
        return _conv_stack(self.convs, self.post, h)


class CodecDiscriminator(nn.Module):
    """Multi-period + multi-resolution STFT discriminator. ``forward(wav [B, 1, N]) -> DiscriminatorOutput``."""

    def __init__(self, cfg: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or DiscriminatorConfig()
        subs: list[nn.Module] = []
        if cfg.use_mpd:
            subs += [PeriodDiscriminator(p, cfg.mpd_channels) for p in cfg.periods]
        if cfg.use_stft:
            subs += [STFTDiscriminator(n, cfg.stft_channels) for n in cfg.stft_ffts]
        if not subs:
            raise ValueError("DiscriminatorConfig enables no sub-discriminator (use_mpd and use_stft both off)")
        self.subs = nn.ModuleList(subs)

    def forward(self, wav: Tensor) -> DiscriminatorOutput:
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"discriminator expects [B, 1, N] audio, got {tuple(wav.shape)}")
        # DC offset removal and peak-safe scaling as in DAC's discriminator input.
        wav = wav - wav.mean(dim=-1, keepdim=True)
        wav = 0.8 * wav / wav.abs().amax(dim=-1, keepdim=True).clamp_min(1e-9).clamp_min(1.0)
        out = DiscriminatorOutput()
        for sub in self.subs:
            logits, feats = sub(wav)
            out.logits.append(logits)
            out.features.append(feats)
        return out
