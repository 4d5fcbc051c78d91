"""SecoustiCodec's bottleneck (arXiv 2508.02849): causal VAE + FSQ single semantic codebook, a
global paralinguistic embedding fused by a "semantic connector", and contrastive frame-level
speech-text alignment."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.config import CodecConfig
from codec.contracts import CodecTokens
from codec.modules.blocks import EncoderOutput, PadConv1d, Upsample, conv_stack
from codec.modules.bottlenecks import BottleneckOut
from codec.modules.teacher import TeacherBatch
from codec.quantizers import FSQQuantizer, usage
from codec.text_encoder import TextEncoder, TextTokenizer


class GlobalEncoder(nn.Module):
    """log-mel crop ``[B, n_mels, Tc]`` -> paralinguistic embedding ``[B, G]`` (convs + attentive
    mean pooling; SecoustiCodec pools a 300-frame mel crop)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.convs = nn.Sequential(PadConv1d(cfg.n_mels, cfg.dim, 5, False), nn.GELU(),
                                   PadConv1d(cfg.dim, cfg.dim, 5, False), nn.GELU())
        self.attn = nn.Conv1d(cfg.dim, 1, 1)
        self.out = nn.Linear(cfg.dim, cfg.global_dim)

    def forward(self, mel: Tensor) -> Tensor:
        h = self.convs(mel)
        w = torch.softmax(self.attn(h), dim=-1)  # [B, 1, Tc]
        return self.out((h * w).sum(-1))


def info_nce(a: Tensor, b: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between paired rows of ``a [N, E]`` and ``b [N, E]``."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    logits = a @ b.t() / temperature
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


class SecoustiBottleneck(nn.Module):
    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vae = nn.Conv1d(cfg.dim, 2 * cfg.vae_dim, 1)  # -> mu, logvar (frame-local, causal-safe)
        self.fsq = FSQQuantizer(cfg.vae_dim, cfg.fsq_levels)
        self.global_encoder = GlobalEncoder(cfg)
        self.null_global = nn.Parameter(torch.zeros(cfg.global_dim))  # decoding without a voice
        self.tok_in = nn.Conv1d(cfg.vae_dim, cfg.dim, 1)
        self.glob_in = nn.Linear(cfg.global_dim, cfg.dim)
        self.connector = conv_stack(cfg, 2)  # the "semantic connector": tokens + global, causal convs
        self.up = Upsample(cfg.dim, cfg.semantic_stride) if cfg.semantic_stride > 1 else nn.Identity()
        self.text_encoder = TextEncoder(cfg.text_vocab_size, cfg.text_dim, cfg.text_layers)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.vae_dim)
        self.speech_proj = nn.Linear(cfg.vae_dim, cfg.vae_dim)
        self.tokenizer: TextTokenizer | None = None

    def global_from_mel(self, mel: Tensor) -> Tensor:
        crop = max(1, int(self.cfg.global_crop_s * self.cfg.frame_rate))
        return self.global_encoder(mel[..., :crop])

    def connect(self, q: Tensor, g: Tensor | None) -> Tensor:
        """FSQ codes' vectors ``[B, vae_dim, Ts]`` + global ``[B, G]`` -> ``z [B, D, T]``."""
        if g is None:
            g = self.null_global[None].expand(q.shape[0], -1)
        if g.dim() != 2 or g.shape[-1] != self.cfg.global_dim:
            raise ValueError(f"global_ must be [B, {self.cfg.global_dim}] float, got {tuple(g.shape)}")
        return self.up(self.connector(self.tok_in(q) + self.glob_in(g.float())[..., None]))

    def align_loss(self, mu: Tensor, text: list[str]) -> Tensor:
        """Frame-level InfoNCE: text states, spread uniformly over the frames (linear interpolation;
        no forced alignment needed), against the semantic latents at the same positions."""
        if self.tokenizer is None:
            raise ValueError("text given but no text tokenizer set: call model.set_text_tokenizer(path) "
                             "(train one with codec.text_encoder.train_text_tokenizer)")
        if len(text) != mu.shape[0]:
            raise ValueError(f"got {len(text)} texts for a batch of {mu.shape[0]}")
        ids, mask = self.tokenizer(text, mu.device)
        states = self.text_proj(self.text_encoder(ids, mask))  # [B, L, E]
        ts = mu.shape[-1]
        frames = []
        for i in range(len(text)):  # each item's own text length, spread over its frames
            n = int(mask[i].sum())
            frames.append(F.interpolate(states[i : i + 1, :n].transpose(1, 2), size=ts, mode="linear",
                                        align_corners=False)[0].t())
        return info_nce(self.speech_proj(mu.transpose(1, 2)).flatten(0, 1), torch.cat(frames), self.cfg.align_temperature)

    def forward(self, enc: EncoderOutput, teacher: TeacherBatch | None, text: list[str] | None,
                global_: Tensor | None = None) -> BottleneckOut:
        mu, logvar = self.vae(enc.low).chunk(2, dim=1)
        logvar = logvar.clamp(-10, 10)
        zv = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        q = self.fsq(zv)
        g = self.global_from_mel(enc.mel) if global_ is None else global_
        g_dec = g
        if self.training and float(torch.rand(())) < 0.1:  # learn the voice-less default too
            g_dec = self.null_global[None].expand(g.shape[0], -1)
        z = self.connect(q.z_q, g_dec)
        losses = {"vae/kl": (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).mean()}
        if text is not None:
            losses["align/contrastive"] = self.align_loss(mu, text)
        b, _, ts = q.codes.shape
        extras = {"latent/semantic": mu.detach(), "usage/semantic": usage(q.codes, self.cfg.semantic_codebook_size)}
        acoustic = q.codes.new_zeros(b, 0, ts)
        return BottleneckOut(z, q.codes, acoustic, global_=g, losses=losses, extras=extras)

    def decode_latent(self, tokens: CodecTokens) -> Tensor:
        g = tokens.global_
        if g is not None and g.dtype in (torch.int32, torch.int64):
            raise ValueError("secousticodec expects a float global_ embedding [B, G], got integer tokens")
        return self.connect(self.fsq.decode(tokens.semantic), g)
