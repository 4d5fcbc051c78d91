"""Frame-rate conv backbone: ConvNeXt blocks (Vocos backbone) with optional causal padding."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.config import CodecConfig
from codec.modules.audio import ISTFTHead, MelFrontend


class PadConv1d(nn.Conv1d):
    """Stride-1 conv that keeps the length: left padding when causal, symmetric otherwise."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, causal: bool, groups: int = 1) -> None:
        super().__init__(c_in, c_out, kernel_size, groups=groups)
        total = kernel_size - 1
        self.pads = (total, 0) if causal else (total // 2, total - total // 2)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(F.pad(x, self.pads))


class ChannelNorm(nn.LayerNorm):
    """LayerNorm over channels of ``[B, D, T]`` (per frame, so causal-safe)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class ConvNeXtBlock(nn.Module):
    """``[B, D, T] -> [B, D, T]``: depthwise conv, norm, pointwise MLP, layer scale, residual."""

    def __init__(self, dim: int, mlp_ratio: int, kernel_size: int, causal: bool) -> None:
        super().__init__()
        self.dw = PadConv1d(dim, dim, kernel_size, causal, groups=dim)
        self.norm = nn.LayerNorm(dim)
        self.pw1 = nn.Linear(dim, dim * mlp_ratio)
        self.pw2 = nn.Linear(dim * mlp_ratio, dim)
        self.scale = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.dw(x).transpose(1, 2)  # [B, T, D]
        h = self.pw2(F.gelu(self.pw1(self.norm(h)))) * self.scale
        return x + h.transpose(1, 2)


def conv_stack(cfg: CodecConfig, n_blocks: int, dim: int | None = None) -> nn.Sequential:
    d = dim or cfg.dim
    return nn.Sequential(*[ConvNeXtBlock(d, cfg.mlp_ratio, cfg.kernel_size, cfg.causal) for _ in range(n_blocks)])


class Downsample(nn.Conv1d):
    """``[B, D, T] -> [B, D, T / s]``; kernel == stride, so it never looks across its own block."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__(dim, dim, stride, stride=stride)


class Upsample(nn.ConvTranspose1d):
    """``[B, D, T] -> [B, D, T * s]``; kernel == stride (no overlap: frame-local, streamable)."""

    def __init__(self, dim: int, stride: int) -> None:
        super().__init__(dim, dim, stride, stride=stride)


@dataclass
class EncoderOutput:
    mel: Tensor   # [B, n_mels, T] log-mel at the 50 Hz frame rate
    base: Tensor  # [B, D, T] latent at the frame rate
    low: Tensor   # [B, D, T / semantic_stride] latent at the semantic rate


class Encoder(nn.Module):
    """``wav [B, 1, N]`` (N a multiple of the semantic hop) -> :class:`EncoderOutput`."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.frontend = MelFrontend(cfg.sample_rate, cfg.n_fft, cfg.hop_length, cfg.n_mels, cfg.causal)
        self.inp = PadConv1d(cfg.n_mels, cfg.dim, cfg.kernel_size, cfg.causal)
        self.blocks = conv_stack(cfg, cfg.encoder_blocks)
        self.down = Downsample(cfg.dim, cfg.semantic_stride) if cfg.semantic_stride > 1 else nn.Identity()
        self.low_blocks = conv_stack(cfg, cfg.encoder_low_blocks)
        self.norm = ChannelNorm(cfg.dim)

    def forward(self, wav: Tensor) -> EncoderOutput:
        mel = self.frontend(wav)
        base = self.blocks(self.inp(mel))
        low = self.norm(self.low_blocks(self.down(base)))
        return EncoderOutput(mel=mel, base=base, low=low)


class Decoder(nn.Module):
    """Latent at the frame rate ``[B, D, T]`` -> ``wav [B, 1, T * hop]``."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.blocks = conv_stack(cfg, cfg.decoder_blocks)
        self.norm = ChannelNorm(cfg.dim)
        self.head = ISTFTHead(cfg.dim, cfg.n_fft, cfg.hop_length, cfg.causal)

    def features(self, z: Tensor) -> Tensor:
        return self.norm(self.blocks(z))

    def forward(self, z: Tensor) -> Tensor:
        return self.head(self.features(z))
