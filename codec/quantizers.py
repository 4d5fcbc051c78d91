"""Quantizers of the codec family, all behind one small interface.

Every quantizer maps a latent ``[B, D, T]`` to :class:`QuantOut` (``z_q [B, D, T]``, ``codes [B, K, T]``
int64, unweighted losses ``"group/name"``) and back with ``decode(codes) -> [B, D, T]``.
vector-quantize-pytorch does the work wherever it has the behaviour (factorised VQ, SimVQ, FSQ, RVQ);
two are hand-written because the library lacks what the seed method needs: STACodec's RVQ with
teacher-label assignment in layer 1, and SACodec's nearest-centroid lookup in a *frozen* external
(teacher k-means) codebook.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from vector_quantize_pytorch import FSQ, ResidualVQ, SimVQ, VectorQuantize


@dataclass
class QuantOut:
    z_q: Tensor                     # [B, D, T] quantised latent (straight-through gradients)
    codes: Tensor                   # [B, K, T] int64
    losses: dict[str, Tensor] = field(default_factory=dict)
    layers: Tensor | None = None    # [K, B, D, T] per-layer outputs (RVQ only)


def usage(codes: Tensor, size: int) -> Tensor:
    """Fraction of the ``size`` codes used at least once in ``codes`` (any shape)."""
    return torch.bincount(codes.flatten(), minlength=size).gt(0).float().mean()


class FactorizedVQ(nn.Module):
    """One large codebook looked up in a small L2-normalised space (SAC / DAC factorised VQ).

    Library: ``VectorQuantize(codebook_dim=8, use_cosine_sim=True)`` with EMA codebook updates and
    dead-code replacement (threshold 2, as in SAC's config).
    """

    def __init__(self, dim: int, codebook_size: int, codebook_dim: int, commitment_weight: float) -> None:
        super().__init__()
        self.vq = VectorQuantize(dim=dim, codebook_size=codebook_size, codebook_dim=codebook_dim,
                                 use_cosine_sim=True, threshold_ema_dead_code=2, commitment_weight=1.0)
        self.commitment_weight = commitment_weight

    def forward(self, z: Tensor) -> QuantOut:
        if not self.training:  # inference: a plain max-similarity lookup, ~30x faster on CPU than
            return self._lookup(z)  # the library's one-hot path (same indices)
        q, idx, loss = self.vq(rearrange(z, "b d t -> b t d"))
        return QuantOut(rearrange(q, "b t d -> b d t"), idx[:, None], {"vq/commit": loss * self.commitment_weight})

    def _lookup(self, z: Tensor) -> QuantOut:
        x = F.normalize(self.vq.project_in(rearrange(z, "b d t -> b t d")), dim=-1, eps=1e-6)
        codebook = F.normalize(self.vq.codebook, dim=-1, eps=1e-6)
        idx = (x @ codebook.t()).max(-1).indices  # [B, T]; .max is much faster than argmax here
        return QuantOut(self.decode(idx[:, None]), idx[:, None], {"vq/commit": z.new_zeros(())})

    def decode(self, codes: Tensor) -> Tensor:
        return rearrange(self.vq.get_output_from_indices(codes[:, 0]), "b t d -> b d t")


class SimVQQuantizer(nn.Module):
    """Single-layer SimVQ (arXiv 2411.02038): frozen random codebook times a learnt linear map,
    which keeps the whole codebook in use (SACodec's acoustic quantizer)."""

    def __init__(self, dim: int, codebook_size: int, commitment_weight: float) -> None:
        super().__init__()
        self.vq = SimVQ(dim=dim, codebook_size=codebook_size, commitment_weight=1.0)
        self.commitment_weight = commitment_weight

    def forward(self, z: Tensor) -> QuantOut:
        q, idx, loss = self.vq(rearrange(z, "b d t -> b t d"))
        return QuantOut(rearrange(q, "b t d -> b d t"), idx[:, None], {"vq/commit": loss * self.commitment_weight})

    def decode(self, codes: Tensor) -> Tensor:
        return rearrange(self.vq.indices_to_codes(codes[:, 0]), "b t d -> b d t")


class FSQQuantizer(nn.Module):
    """Finite scalar quantisation (arXiv 2309.15505), one implicit codebook of prod(levels) codes
    (SecoustiCodec: [3]*8 = 6561). No codebook, so no commitment loss."""

    def __init__(self, dim: int, levels: list[int]) -> None:
        super().__init__()
        self.fsq = FSQ(levels=list(levels), dim=dim)

    def forward(self, z: Tensor) -> QuantOut:
        q, idx = self.fsq(rearrange(z, "b d t -> b t d"))
        return QuantOut(rearrange(q, "b t d -> b d t"), idx[:, None].long())

    def decode(self, codes: Tensor) -> Tensor:
        return rearrange(self.fsq.indices_to_codes(codes[:, 0]), "b t d -> b d t")


class LibraryRVQ(nn.Module):
    """Plain residual VQ (EnCodec/DAC-like), library ``ResidualVQ``; per-layer outputs kept so the
    distillation baseline can read RVQ-1."""

    def __init__(self, dim: int, n_q: int, codebook_size: int, commitment_weight: float) -> None:
        super().__init__()
        self.rvq = ResidualVQ(dim=dim, num_quantizers=n_q, codebook_size=codebook_size,
                              threshold_ema_dead_code=2, kmeans_init=False, commitment_weight=1.0)
        self.commitment_weight = commitment_weight

    def forward(self, z: Tensor) -> QuantOut:
        q, idx, losses, layers = self.rvq(rearrange(z, "b d t -> b t d"), return_all_codes=True)
        return QuantOut(rearrange(q, "b t d -> b d t"), rearrange(idx, "b t k -> b k t"),
                        {"vq/commit": losses.sum() * self.commitment_weight},
                        layers=rearrange(layers, "k b t d -> k b d t"))

    def decode(self, codes: Tensor) -> Tensor:
        return rearrange(self.rvq.get_output_from_indices(rearrange(codes, "b k t -> b t k")), "b t d -> b d t")


class EMACodebook(nn.Module):
    """Euclidean codebook with EMA updates (EnCodec / STACodec ``core_vq``) that accepts *assigned*
    indices: hand-written because the library picks nearest codes only (STA needs label override)."""

    def __init__(self, dim: int, size: int, decay: float, eps: float = 1e-5) -> None:
        super().__init__()
        self.decay, self.eps = decay, eps
        self.register_buffer("embed", torch.randn(size, dim) * 0.1)
        self.register_buffer("cluster_size", torch.zeros(size))
        self.register_buffer("embed_sum", self.embed.clone())
        self.register_buffer("initted", torch.tensor(False))

    def nearest(self, x: Tensor) -> Tensor:
        """``x [N, D]`` -> nearest code index ``[N]``."""
        return torch.cdist(x, self.embed).min(dim=-1).indices

    @torch.no_grad()
    def update(self, x: Tensor, idx: Tensor) -> None:
        """EMA step of the codes towards the mean of the frames assigned to them."""
        onehot = F.one_hot(idx, self.embed.shape[0]).type(x.dtype)  # [N, K]
        counts, sums = onehot.sum(0), onehot.t() @ x
        if not bool(self.initted):  # first batch: used codes start at their frames' mean
            seen = counts > 0
            self.embed[seen] = sums[seen] / counts[seen, None]
            self.embed_sum.copy_(self.embed)
            self.cluster_size.fill_(1.0)
            self.initted.fill_(True)
            return
        self.cluster_size.mul_(self.decay).add_(counts, alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.cluster_size.sum()
        size = (self.cluster_size + self.eps) / (n + self.embed.shape[0] * self.eps) * n
        self.embed.copy_(self.embed_sum / size[:, None])


class AssignableRVQ(nn.Module):
    """Residual VQ whose first layer can be *assigned* indices (STACodec's STA, arXiv 2602.06180).

    In training with teacher units, layer 1's nearest-code index is replaced by the teacher k-means
    label, its codebook entry is EMA-updated toward the frames assigned to it, and layers 2..N
    quantise the residual. At inference the caller passes the SPD head's argmax instead.
    """

    def __init__(self, dim: int, n_q: int, codebook_size: int, decay: float, commitment_weight: float) -> None:
        super().__init__()
        self.layers = nn.ModuleList(EMACodebook(dim, codebook_size, decay) for _ in range(n_q))
        self.commitment_weight = commitment_weight

    def forward(self, z: Tensor, first: Tensor | None = None) -> QuantOut:
        """``z [B, D, T]``; ``first [B, T]`` optional assigned layer-1 indices."""
        b, _, t = z.shape
        x = rearrange(z, "b d t -> (b t) d")
        residual, out, codes, outs, commit = x, torch.zeros_like(x), [], [], x.new_zeros(())
        for i, cb in enumerate(self.layers):
            r = residual.detach()
            idx = first.reshape(-1) if (i == 0 and first is not None) else cb.nearest(r)
            if self.training:
                cb.update(r, idx)
            q = cb.embed[idx]
            commit = commit + F.mse_loss(residual, q.detach())
            out = out + q
            residual = residual - q
            codes.append(idx)
            outs.append(rearrange(q, "(b t) d -> b d t", b=b))
        z_q = x + (out - x).detach()  # straight-through
        return QuantOut(rearrange(z_q, "(b t) d -> b d t", b=b), torch.stack(codes, 1).view(b, t, -1).transpose(1, 2),
                        {"vq/commit": commit * self.commitment_weight}, layers=torch.stack(outs))

    def decode(self, codes: Tensor) -> Tensor:
        out = sum(cb.embed[codes[:, i]] for i, cb in enumerate(self.layers))  # [B, T, D]
        return rearrange(out, "b t d -> b d t")


class FrozenAnchorCodebook(nn.Module):
    """Nearest centroid of a *frozen* teacher k-means codebook ``[K, Dt]`` (SACodec's semantic
    anchoring). Hand-written: the codebook lives in teacher space and must never move."""

    def __init__(self, size: int, teacher_dim: int) -> None:
        super().__init__()
        self.register_buffer("centroids", torch.zeros(size, teacher_dim))

    def logits(self, p: Tensor) -> Tensor:
        """``p [B, T, Dt]`` -> negative squared distances ``[B, T, K]``."""
        c = self.centroids
        return -(p.pow(2).sum(-1, keepdim=True) - 2 * p @ c.t() + c.pow(2).sum(-1))

    def forward(self, p: Tensor) -> tuple[Tensor, Tensor]:
        """``p [B, T, Dt]`` -> (straight-through centroid ``[B, T, Dt]``, index ``[B, T]``)."""
        idx = self.logits(p).max(-1).indices
        c = self.centroids[idx]
        return p + (c - p).detach(), idx
