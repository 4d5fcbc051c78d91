"""The per-variant bottlenecks between the shared encoder and decoder (DESIGN.md §5).

Each maps :class:`EncoderOutput` (+ teacher) to a frame-rate latent ``z [B, D, T]`` for the decoder,
the codes of both streams and unweighted losses, and rebuilds ``z`` from codes alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.config import CodecConfig
from codec.contracts import CodecTokens
from codec.modules.blocks import Downsample, EncoderOutput, PadConv1d, Upsample
from codec.modules.teacher import TeacherBatch, features_at, units_at
from codec.quantizers import (
    AssignableRVQ,
    FactorizedVQ,
    FrozenAnchorCodebook,
    LibraryRVQ,
    SimVQQuantizer,
    usage,
)


@dataclass
class BottleneckOut:
    z: Tensor                  # [B, D, T] decoder input at the 50 Hz frame rate
    semantic: Tensor           # [B, Ks, Ts]
    acoustic: Tensor           # [B, Ka, Ta]
    global_: Tensor | None = None
    losses: dict[str, Tensor] = field(default_factory=dict)
    extras: dict[str, Tensor] = field(default_factory=dict)


def _up(cfg: CodecConfig, stride: int) -> nn.Module:
    return Upsample(cfg.dim, stride) if stride > 1 else nn.Identity()


def _t(x: Tensor) -> Tensor:
    return x.transpose(1, 2)


def acoustic_keep(cfg: CodecConfig, batch: int, training: bool, device: torch.device) -> Tensor | None:
    """``[B, 1, 1]`` mask of the items that keep their acoustic stream under acoustic dropout (training
    only; None when off): each item is decoded from its semantic stream alone with probability
    ``cfg.acoustic_dropout``."""
    if not (training and cfg.acoustic_dropout):
        return None
    return (torch.rand(batch, 1, 1, device=device) >= cfg.acoustic_dropout).float()


class SACBottleneck(nn.Module):
    """SAC (arXiv 2510.16841): semantic stream = frozen teacher units (given at train and encode
    time), embedded with the frozen k-means centroids; acoustic stream = one factorised codebook;
    the two are fused before the decoder, and a head predicts the teacher features from the fusion."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.teacher_codebook = FrozenAnchorCodebook(cfg.semantic_codebook_size, cfg.teacher_dim)
        self.sem_proj = nn.Linear(cfg.teacher_dim, cfg.dim)
        self.sem_up = _up(cfg, cfg.semantic_stride)
        self.ac_down = Downsample(cfg.dim, cfg.acoustic_stride) if cfg.acoustic_stride > 1 else nn.Identity()
        self.vq = FactorizedVQ(cfg.dim, cfg.acoustic_codebook_size, cfg.acoustic_codebook_dim, cfg.commitment_weight)
        self.ac_up = _up(cfg, cfg.acoustic_stride)
        self.fuse = nn.Conv1d(2 * cfg.dim, cfg.dim, 1)
        self.distill_head = nn.Linear(cfg.dim, cfg.teacher_dim)

    def _semantic(self, units: Tensor) -> Tensor:
        return self.sem_up(_t(self.sem_proj(self.teacher_codebook.centroids[units])))  # [B, D, T]

    def forward(self, enc: EncoderOutput, teacher: TeacherBatch | None, text: list[str] | None) -> BottleneckOut:
        b, _, t = enc.base.shape
        ts = t // self.cfg.semantic_stride
        units = units_at(teacher, ts, self.cfg.semantic_codebook_size, b)
        if units is None:
            raise ValueError("the 'sac' codec encodes with its teacher: pass teacher=TeacherBatch(units=[B, Ts]) "
                             "with the frozen k-means units at the semantic rate")
        s = self._semantic(units)
        qa = self.vq(self.ac_down(enc.base))
        a = self.ac_up(qa.z_q)
        keep = acoustic_keep(self.cfg, b, self.training, a.device)
        z = self.fuse(torch.cat([s, a if keep is None else a * keep], 1))
        losses = dict(qa.losses)
        if teacher is not None and teacher.features is not None:
            target = features_at(teacher, t, self.cfg.frame_rate, b)
            losses["semantic/distill"] = F.mse_loss(self.distill_head(_t(z)), target)
        extras = {"latent/semantic": s.detach(), "latent/acoustic": qa.z_q.detach(),
                  "usage/acoustic": usage(qa.codes, self.cfg.acoustic_codebook_size)}
        return BottleneckOut(z, units[:, None], qa.codes, losses=losses, extras=extras)

    def decode_latent(self, tokens: CodecTokens, acoustic: bool = True) -> Tensor:
        s = self._semantic(tokens.semantic[:, 0])
        a = self.ac_up(self.vq.decode(tokens.acoustic))
        return self.fuse(torch.cat([s, a if acoustic else torch.zeros_like(a)], 1))


class SACodecBottleneck(nn.Module):
    """SACodec (arXiv 2512.20944): a light projector anchors encoder features onto the frozen teacher
    k-means codebook (nearest centroid, straight-through); the residual, through a small residual
    activation module, is quantised by single-layer SimVQ."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.projector = nn.Sequential(nn.Linear(cfg.dim, cfg.dim), nn.GELU(), nn.Linear(cfg.dim, cfg.teacher_dim))
        self.teacher_codebook = FrozenAnchorCodebook(cfg.semantic_codebook_size, cfg.teacher_dim)
        self.back = nn.Linear(cfg.teacher_dim, cfg.dim)
        self.sem_up = _up(cfg, cfg.semantic_stride)
        # Residual activation module: a causal-capable conv + GELU + projection to the SimVQ space.
        self.residual = nn.Sequential(PadConv1d(cfg.dim, cfg.dim, 3, cfg.causal), nn.GELU(),
                                      nn.Conv1d(cfg.dim, cfg.acoustic_codebook_dim, 1))
        self.ac_down = (Downsample(cfg.acoustic_codebook_dim, cfg.acoustic_stride)
                        if cfg.acoustic_stride > 1 else nn.Identity())
        self.vq = SimVQQuantizer(cfg.acoustic_codebook_dim, cfg.acoustic_codebook_size, cfg.commitment_weight)
        self.ac_out = nn.Conv1d(cfg.acoustic_codebook_dim, cfg.dim, 1)
        self.ac_up = _up(cfg, cfg.acoustic_stride)

    def forward(self, enc: EncoderOutput, teacher: TeacherBatch | None, text: list[str] | None) -> BottleneckOut:
        b, _, ts = enc.low.shape
        p = self.projector(_t(enc.low))  # [B, Ts, Dt]
        q, idx = self.teacher_codebook(p)
        s = self.sem_up(_t(self.back(q)))  # [B, D, T]
        qa = self.vq(self.ac_down(self.residual(enc.base - s)))
        a = self.ac_up(self.ac_out(qa.z_q))
        keep = acoustic_keep(self.cfg, b, self.training, a.device)
        z = s + (a if keep is None else a * keep)
        losses = dict(qa.losses)
        # Semantic anchoring: an MSE pulls the projector to the teacher feature; with units alone, to each
        # frame's unit centroid (the feature's k-means reconstruction: the units' cross-entropy pulls with a
        # bounded force, and the reconstruction gradient through the straight-through anchor walked p off
        # the codebook, docs/results/anchor_units); without a teacher, to its own nearest centroid.
        extras = {}
        units = units_at(teacher, ts, self.cfg.semantic_codebook_size, b)
        if teacher is not None and teacher.features is not None:
            target = features_at(teacher, ts, self.cfg.semantic_rate, b)
        else:
            target = self.teacher_codebook.centroids[idx if units is None else units]
        anchor = [F.mse_loss(p, target)]
        if units is not None:
            temperature = self.cfg.anchor_temperature or self.cfg.teacher_dim ** 0.5
            logits = self.teacher_codebook.logits(p) / temperature
            anchor.append(F.cross_entropy(logits.transpose(1, 2), units))
            extras["anchor/accuracy"] = (idx == units).float().mean().detach()
        losses["semantic/anchor"] = sum(anchor)
        extras.update({"latent/semantic": s.detach(), "latent/acoustic": qa.z_q.detach(),
                       "usage/semantic": usage(idx, self.cfg.semantic_codebook_size),
                       "usage/acoustic": usage(qa.codes, self.cfg.acoustic_codebook_size)})
        return BottleneckOut(z, idx[:, None], qa.codes, losses=losses, extras=extras)

    def decode_latent(self, tokens: CodecTokens, acoustic: bool = True) -> Tensor:
        s = self.sem_up(_t(self.back(self.teacher_codebook.centroids[tokens.semantic[:, 0]])))
        return s + self.ac_up(self.ac_out(self.vq.decode(tokens.acoustic))) if acoustic else s


def _rotary(x: Tensor) -> Tensor:
    """Rotary position embedding of ``x [B, H, T, Dh]`` (positions 0..T-1, half-split pairs).

    Angles in float64 so large positions keep their precision; scores then depend only on the
    offset between two frames, which is what lets a streaming window (starting anywhere) match."""
    t, dh = x.shape[-2], x.shape[-1]
    inv = 10000.0 ** (-torch.arange(0, dh, 2, dtype=torch.float64, device=x.device) / dh)
    ang = torch.arange(t, dtype=torch.float64, device=x.device)[:, None] * inv  # [T, Dh/2]
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], -1)


class SPDLayer(nn.Module):
    """Pre-norm transformer layer ``[B, T, D] -> [B, T, D]`` with rotary positions.

    Hand-written rather than ``nn.TransformerEncoderLayer`` because that layer has no hook for
    rotary embeddings, and relative (rotary) positions are what keep a causal head streamable: the
    chunked streamer runs it on a window that starts at a different absolute frame than the offline
    pass, and absolute (learned/sinusoidal) positions would change its output there."""

    def __init__(self, dim: int, heads: int, ff_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, ff_ratio * dim), nn.GELU(), nn.Linear(ff_ratio * dim, dim))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(_rotary(q), _rotary(k), v, attn_mask=mask)  # [B, H, T, Dh]
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.ff(self.norm2(x))


class SPDHead(nn.Module):
    """STACodec's semantic pre-distillation head: a transformer that predicts teacher units from the
    pre-quantisation features, with time/feature masking (p=0.5) in training, so inference needs no
    teacher. Causal configs attend only to the last ``spd_context`` frames (streamable)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.p = cfg.spd_mask_prob
        self.causal, self.context = cfg.causal, cfg.spd_context
        self.inp = nn.Linear(cfg.dim, cfg.spd_dim)
        self.layers = nn.ModuleList(SPDLayer(cfg.spd_dim, cfg.spd_heads, cfg.spd_ff_ratio)
                                    for _ in range(cfg.spd_layers))
        self.norm = nn.LayerNorm(cfg.spd_dim)
        self.out = nn.Linear(cfg.spd_dim, cfg.semantic_codebook_size)

    def _load_from_state_dict(self, state_dict: dict[str, Tensor], prefix: str, *args, **kwargs) -> None:
        # Any load path (save_pretrained dirs, a trainer's resume) meets weights of the former conv
        # head as "<prefix>blocks.*": say so instead of listing missing and unexpected keys.
        if any(k.startswith(prefix + "blocks.") for k in state_dict):
            raise ValueError(f"these stacodec weights hold the former convolutional SPD head ({prefix}blocks.*); "
                             "the SPD head is now a transformer (spd_layers, spd_dim, spd_heads): retrain the codec")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _mask(self, h: Tensor) -> Tensor:
        b, d, t = h.shape
        keep = torch.ones(b, d, t, device=h.device)
        for i in range(b):
            if float(torch.rand(())) < self.p:  # one time span of up to 20% of the frames
                w = int(torch.randint(0, max(1, t // 5) + 1, ()))
                s = int(torch.randint(0, t - w + 1, ()))
                keep[i, :, s : s + w] = 0
            if float(torch.rand(())) < self.p:  # one feature band of up to 20% of the channels
                w = int(torch.randint(0, max(1, d // 5) + 1, ()))
                s = int(torch.randint(0, d - w + 1, ()))
                keep[i, s : s + w] = 0
        return h * keep

    def attention_mask(self, t: int, lengths: Tensor | None, device: torch.device) -> Tensor | None:
        """Boolean ``[B|1, 1, T, T]`` (True = may attend), or None for full attention.

        Causal: frame i sees frames i - spd_context .. i (right padding is never seen, so ``lengths``
        is not needed). Non-causal with ``lengths`` (valid frames per item of a zero-padded batch):
        keys beyond an item's length are hidden, so its padding changes nothing in its valid frames;
        every row keeps at least one key (no NaN rows)."""
        if self.causal:
            i = torch.arange(t, device=device)
            off = i[:, None] - i[None, :]
            return ((off >= 0) & (off <= self.context))[None, None]
        if lengths is None:
            return None
        valid = torch.arange(t, device=device)[None] < lengths.to(device)[:, None].clamp(min=1)  # [B, T]
        return valid[:, None, None, :]

    def forward(self, h: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``h [B, D, Ts]`` (+ optional valid frames ``[B]``) -> logits ``[B, K, Ts]``."""
        if self.training and self.p > 0:
            h = self._mask(h)
        mask = self.attention_mask(h.shape[-1], lengths, h.device)
        x = self.inp(_t(h))
        for layer in self.layers:
            x = layer(x, mask)
        return _t(self.out(self.norm(x)))


class RVQBottleneck(nn.Module):
    """RVQ at the semantic rate. ``stacodec``: layer 1 assigned teacher units (STA) + SPD head;
    ``distill``: RVQ-1 output distilled to teacher features; ``rvq``: plain. Semantic stream =
    RVQ-1, acoustic = RVQ 2..N (same rate)."""

    def __init__(self, cfg: CodecConfig) -> None:
        super().__init__()
        self.cfg = cfg
        n_q = cfg.n_semantic_codebooks + cfg.n_acoustic_codebooks
        if cfg.variant == "stacodec":
            self.rvq: nn.Module = AssignableRVQ(cfg.dim, n_q, cfg.semantic_codebook_size, cfg.sta_ema_decay,
                                                cfg.commitment_weight)
            self.spd = SPDHead(cfg)
        else:
            self.rvq = LibraryRVQ(cfg.dim, n_q, cfg.semantic_codebook_size, cfg.commitment_weight)
        if cfg.variant == "distill":
            self.distill_head = nn.Linear(cfg.dim, cfg.teacher_dim)
        self.up = _up(cfg, cfg.semantic_stride)

    def forward(self, enc: EncoderOutput, teacher: TeacherBatch | None, text: list[str] | None,
                lengths: Tensor | None = None) -> BottleneckOut:
        """``lengths``: valid semantic frames per item of a zero-padded batch; only the stacodec SPD
        head reads it (its attention must not see the padding); the conv paths have no use for it."""
        h = enc.low
        b, _, ts = h.shape
        losses: dict[str, Tensor] = {}
        extras: dict[str, Tensor] = {}
        if self.cfg.variant == "stacodec":
            logits = self.spd(h, lengths)
            units = units_at(teacher, ts, self.cfg.semantic_codebook_size, b)
            if units is not None:
                losses["semantic/spd_ce"] = F.cross_entropy(logits, units)
                extras["spd/accuracy"] = (logits.argmax(1) == units).float().mean().detach()
            first = units if units is not None else logits.max(1).indices
            q = self.rvq(h, first)
        else:
            q = self.rvq(h)
        if self.cfg.variant == "distill" and teacher is not None and teacher.features is not None:
            pred = self.distill_head(_t(q.layers[0]))
            target = features_at(teacher, ts, self.cfg.semantic_rate, b)
            losses["semantic/distill"] = (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
        losses.update(q.losses)
        k = self.cfg.n_semantic_codebooks
        extras.update({"latent/semantic": q.layers[0].detach(), "latent/acoustic": (q.z_q - q.layers[0]).detach(),
                       "usage/semantic": usage(q.codes[:, :k], self.cfg.semantic_codebook_size)})
        return BottleneckOut(self.up(q.z_q), q.codes[:, :k], q.codes[:, k:], losses=losses, extras=extras)

    def decode_latent(self, tokens: CodecTokens) -> Tensor:
        return self.up(self.rvq.decode(torch.cat([tokens.semantic, tokens.acoustic], 1)))
