"""Frame-rate audio front end and iSTFT synthesis head (the Vocos idea: arXiv 2306.00814).

Both sides frame the waveform explicitly (pad, then ``center=False`` / overlap-add with ``fold``) so
that the causal configuration is exactly streamable: the analysis frame ``t`` sees samples up to
``(t + 1) * hop`` and the synthesis frame ``t`` only writes samples from ``t * hop`` on. We
hand-write the overlap-add instead of calling ``torch.istft`` because streaming needs the running
overlap buffer and a window envelope that does not depend on the total length.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn


class MelFrontend(nn.Module):
    """``wav [B, 1, N]`` (N a multiple of hop) -> log-mel ``[B, n_mels, N / hop]``."""

    def __init__(self, sample_rate: int, n_fft: int, hop: int, n_mels: int, causal: bool) -> None:
        super().__init__()
        self.n_fft, self.hop, self.causal = n_fft, hop, causal
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, 0.0, sample_rate / 2, n_mels, sample_rate)
        self.register_buffer("fbank", fb, persistent=False)  # [F, n_mels]

    def pad(self, wav: Tensor) -> Tensor:
        extra = self.n_fft - self.hop
        left = extra if self.causal else extra // 2
        return F.pad(wav, (left, extra - left))

    def forward(self, wav: Tensor) -> Tensor:
        x = self.pad(wav[:, 0])  # [B, N + n_fft - hop]
        spec = torch.stft(x, self.n_fft, self.hop, window=self.window, center=False, return_complex=True)
        mel = torch.einsum("bft,fm->bmt", spec.abs().pow(2), self.fbank)
        return torch.log(mel.clamp(min=1e-5))  # [B, n_mels, T]


def overlap_add_envelope(n_frames: int, n_fft: int, hop: int, window: Tensor) -> Tensor:
    """Sum of squared windows at each output sample for frames placed at ``t * hop``: ``[L]``."""
    w2 = window.pow(2)[None, :, None].expand(1, n_fft, n_frames)
    length = (n_frames - 1) * hop + n_fft
    return F.fold(w2, (1, length), (1, n_fft), stride=(1, hop))[0, 0, 0]


class ISTFTHead(nn.Module):
    """``x [B, D, T]`` -> ``wav [B, 1, T * hop]`` via predicted log-magnitude and phase.

    Synthesis frame ``t`` covers samples ``[t*hop - offset, t*hop - offset + n_fft)`` where ``offset``
    is 0 for the causal model (no look-ahead) and ``(n_fft - hop) / 2`` otherwise (frames centred
    like the analysis frames).
    """

    def __init__(self, dim: int, n_fft: int, hop: int, causal: bool) -> None:
        super().__init__()
        self.n_fft, self.hop, self.causal = n_fft, hop, causal
        self.offset = 0 if causal else (n_fft - hop) // 2
        self.proj = nn.Linear(dim, n_fft + 2)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def frames(self, x: Tensor) -> Tensor:
        """Windowed time-domain frames ``[B, n_fft, T]``."""
        h = self.proj(x.transpose(1, 2)).transpose(1, 2)  # [B, n_fft + 2, T]
        log_mag, phase = h.chunk(2, dim=1)
        # fp32 here under any autocast: torch.polar needs matching dtypes, and the iSTFT wants the precision
        mag = torch.exp(log_mag.float().clamp(max=6.0))
        spec = torch.polar(mag, phase.float())  # [B, F, T]
        return torch.fft.irfft(spec, n=self.n_fft, dim=1) * self.window[None, :, None]

    def envelope(self, start: int, length: int, device: torch.device) -> Tensor:
        """Window-power normaliser for absolute output samples ``[start, start + length)``.

        With frames from ``t = 0`` on it depends only on the sample position (not on the total
        length), which is what makes streamed and offline output identical.
        """
        n_frames = (start + length + self.offset) // self.hop + self.n_fft // self.hop + 1
        env = overlap_add_envelope(n_frames, self.n_fft, self.hop, self.window.to(device))
        return env[start + self.offset : start + self.offset + length].clamp(min=1e-3)

    def forward(self, x: Tensor) -> Tensor:
        fr = self.frames(x)
        n = fr.shape[-1]
        length = (n - 1) * self.hop + self.n_fft
        y = F.fold(fr, (1, length), (1, self.n_fft), stride=(1, self.hop))[:, :, 0]  # [B, 1, L]
        y = y[..., self.offset : self.offset + n * self.hop]
        return y / self.envelope(0, n * self.hop, x.device)
