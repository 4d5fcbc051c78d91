"""Reconstruction and adversarial losses of codec training, returned as ``"group/name"`` dicts.

DAC style (descript-audio-codec): every term is a named scalar in one dict and the total is one
weighted sum (:func:`weighted_sum`), so configs, logs and TensorBoard share the same names:

* ``recon/mel``      multi-resolution log-mel L1 (DAC uses 7 window sizes 32..2048; SAC weights it x15);
* ``recon/stft_sc``  spectral convergence, ``recon/stft_mag`` log-magnitude L1, over several STFTs
                     (Parallel WaveGAN, arXiv 1910.11480);
* ``adv/gen``, ``adv/feat``  generator adversarial and feature-matching terms (HiFi-GAN / MelGAN);
* ``disc/loss``      the discriminator's own loss (hinge, as in DAC/EnCodec, or least squares, as HiFi-GAN).

Spectrograms come from torchaudio (``MelSpectrogram``, ``Spectrogram``) rather than hand-written STFTs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torchaudio
from torch import Tensor, nn


@dataclass
class ReconstructionLossConfig:
    sample_rate: int = 16000
    # DAC's seven mel scales reach 2048-sample windows; the top ones cost most on CPU and matter
    # least at 16 kHz, so the default stops at 1024 (window lengths, hop = window / 4).
    mel_windows: tuple[int, ...] = (32, 64, 128, 256, 512, 1024)
    mel_bins: tuple[int, ...] = (5, 10, 20, 40, 80, 80)  # few bins for tiny windows (DAC: 5..320)
    # Parallel WaveGAN's three resolutions (FFT, hop, window) scaled to 16 kHz.
    stft_resolutions: tuple[tuple[int, int, int], ...] = ((512, 128, 512), (1024, 256, 1024), (256, 64, 256))
    clamp_eps: float = 1e-5  # floor before the log: silence would otherwise dominate the L1
    mag_weight: float = 1.0  # DAC adds a linear-magnitude L1 to the log-mel L1 at each scale
    log_weight: float = 1.0


class MultiResolutionMelLoss(nn.Module):
    """L1 between log-mel spectrograms at several window sizes.

    ``forward(x_hat [B, 1, N], x [B, 1, N]) -> scalar``; 0 exactly when the inputs are equal.
    """

    def __init__(self, cfg: ReconstructionLossConfig) -> None:
        super().__init__()
        if len(cfg.mel_windows) != len(cfg.mel_bins):
            raise ValueError(f"mel_windows ({len(cfg.mel_windows)}) and mel_bins ({len(cfg.mel_bins)}) "
                             "must have the same length")
        self.cfg = cfg
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(
                sample_rate=cfg.sample_rate, n_fft=w, win_length=w, hop_length=w // 4, n_mels=m,
                power=1.0, center=True, f_min=0.0, f_max=cfg.sample_rate / 2, norm="slaney", mel_scale="slaney",
            )
            for w, m in zip(cfg.mel_windows, cfg.mel_bins)
        )

    def forward(self, x_hat: Tensor, x: Tensor) -> Tensor:
        x_hat, x = _match_length(x_hat, x)
        loss = x.new_zeros(())
        for mel in self.mels:
            s_hat, s = mel(x_hat.float()), mel(x.float())  # [B, 1, M, F]
            lin = (s_hat - s).abs().mean()
            log = (s_hat.clamp_min(self.cfg.clamp_eps).log10() - s.clamp_min(self.cfg.clamp_eps).log10()).abs().mean()
            loss = loss + self.cfg.mag_weight * lin + self.cfg.log_weight * log
        return loss / len(self.mels)


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + log-magnitude L1 over several STFT resolutions.

    ``forward(x_hat [B, 1, N], x [B, 1, N]) -> (sc, mag)`` scalars, both 0 for equal inputs.
    """

    def __init__(self, cfg: ReconstructionLossConfig) -> None:
        super().__init__()
        self.eps = cfg.clamp_eps
        self.specs = nn.ModuleList(
            torchaudio.transforms.Spectrogram(n_fft=n, hop_length=h, win_length=w, power=1.0)
            for n, h, w in cfg.stft_resolutions
        )

    def forward(self, x_hat: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        x_hat, x = _match_length(x_hat, x)
        sc = x.new_zeros(())
        mag = x.new_zeros(())
        for spec in self.specs:
            s_hat, s = spec(x_hat.float()), spec(x.float())  # [B, 1, F, T]
            sc = sc + torch.linalg.norm((s - s_hat).flatten(1), dim=1).div(
                torch.linalg.norm(s.flatten(1), dim=1).clamp_min(self.eps)).mean()
            mag = mag + (s_hat.clamp_min(self.eps).log() - s.clamp_min(self.eps).log()).abs().mean()
        return sc / len(self.specs), mag / len(self.specs)


class ReconstructionLoss(nn.Module):
    """All spectral reconstruction terms as one dict: ``recon/mel``, ``recon/stft_sc``, ``recon/stft_mag``."""

    def __init__(self, cfg: ReconstructionLossConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg or ReconstructionLossConfig()
        self.mel = MultiResolutionMelLoss(self.cfg)
        self.stft = MultiResolutionSTFTLoss(self.cfg)

    def forward(self, x_hat: Tensor, x: Tensor) -> dict[str, Tensor]:
        """``x_hat``, ``x``: ``[B, 1, N]`` audio (lengths may differ by a few samples; the shorter wins)."""
        if x_hat.dim() != 3 or x.dim() != 3:
            raise ValueError(f"expected [B, 1, N] audio, got {tuple(x_hat.shape)} and {tuple(x.shape)}")
        sc, mag = self.stft(x_hat, x)
        return {"recon/mel": self.mel(x_hat, x), "recon/stft_sc": sc, "recon/stft_mag": mag}


def _match_length(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    n = min(a.shape[-1], b.shape[-1])
    return a[..., :n], b[..., :n]


# --- adversarial --------------------------------------------------------------------------------


def discriminator_loss(real: list[Tensor], fake: list[Tensor], kind: str = "hinge") -> Tensor:
    """Discriminator loss summed over sub-discriminators; ``real``/``fake`` are their logits."""
    if len(real) != len(fake):
        raise ValueError(f"got {len(real)} real and {len(fake)} fake logit maps")
    loss = real[0].new_zeros(())
    for r, f in zip(real, fake):
        if kind == "hinge":
            loss = loss + torch.relu(1 - r).mean() + torch.relu(1 + f).mean()
        elif kind == "lsgan":
            loss = loss + ((r - 1) ** 2).mean() + (f ** 2).mean()
        else:
            raise ValueError(f"adversarial loss kind must be 'hinge' or 'lsgan', got {kind!r}")
    return loss / len(real)


def generator_adv_loss(fake: list[Tensor], kind: str = "hinge") -> Tensor:
    """Generator's adversarial loss: push the discriminators' logits on ``fake`` towards "real"."""
    loss = fake[0].new_zeros(())
    for f in fake:
        if kind == "hinge":
            loss = loss + torch.relu(1 - f).mean()
        elif kind == "lsgan":
            loss = loss + ((f - 1) ** 2).mean()
        else:
            raise ValueError(f"adversarial loss kind must be 'hinge' or 'lsgan', got {kind!r}")
    return loss / len(fake)


def feature_matching_loss(real: list[list[Tensor]], fake: list[list[Tensor]]) -> Tensor:
    """Mean L1 between the discriminators' hidden feature maps on real and generated audio.

    Each inner list holds one sub-discriminator's maps; the real ones are detached (targets).
    Normalised by the real maps' mean magnitude (EnCodec's relative feature loss) so that layers
    with large activations do not dominate.
    """
    loss, n = None, 0
    for fr, ff in zip(real, fake):
        for r, f in zip(fr, ff):
            r = r.detach()
            term = (r - f).abs().mean() / r.abs().mean().clamp_min(1e-5)
            loss = term if loss is None else loss + term
            n += 1
    if loss is None:
        raise ValueError("feature_matching_loss: no feature maps given")
    return loss / n


# --- weighting ----------------------------------------------------------------------------------


@dataclass
class LossWeights:
    """Weights of the trainer-side terms; model-side terms (``vq/*``, ``semantic/*``) come from the model config."""

    weights: dict[str, float] = field(default_factory=lambda: {
        "recon/mel": 15.0,       # SAC / DAC: x15
        "recon/stft_sc": 0.0,    # off by default: the mel terms already cover it; switch on per config
        "recon/stft_mag": 0.0,
        "adv/gen": 1.0,          # SAC: adversarial x1, feature matching x2
        "adv/feat": 2.0,
    })


def weighted_sum(losses: dict[str, Tensor], weights: dict[str, float]) -> Tensor:
    """``sum(w[k] * losses[k])`` over the weighted terms present; unweighted terms are only logged."""
    terms = [weights[k] * v for k, v in losses.items() if weights.get(k, 0.0) != 0.0]
    if not terms:
        raise ValueError(f"no weighted loss among {sorted(losses)}; weights given for {sorted(weights)}")
    return torch.stack([t.float() for t in terms]).sum()
