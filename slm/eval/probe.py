"""ASR probe on frozen tokens (SUPERB-style): a small CTC phone recogniser trained for a bounded
number of steps; its phone error rate on held-out speakers says how much linguistic content the
tokens carry in a form a light model can read.

Model: code embedding -> 2-layer BiLSTM -> linear over phones + blank. The backward direction is a
second LSTM run on each sequence reversed within its own length: exact for padded batches, and ~20x
faster on CPU than ``pack_padded_sequence``, whose backward pass is slow there. Token streams at 12.5 Hz
carry fewer frames than phones (~12-15 phones/s), which CTC cannot emit, so each frame is repeated
``upsample`` times (to >= 30 Hz, twice the phone rate) before the LSTM; the LSTM tells the copies
apart by position.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm


@dataclass
class ProbeConfig:
    embed_dim: int = 64
    hidden: int = 96  # per direction; ~0.3 M parameters: a probe, not a recogniser of its own
    layers: int = 2
    steps: int = 300  # bounded: the probe compares token streams, it is not trained to convergence
    batch_size: int = 8
    lr: float = 5e-3  # 2e-3 left the probe in CTC's all-blank phase for 200+ steps on 12.5 Hz codes
    min_rate: float = 30.0  # upsample frames to at least this rate: CTC needs T >= phones (+ repeats)
    seed: int = 0


def reverse_padded(x: Tensor, lengths: Tensor) -> Tensor:
    """Reverse ``x [B, T, D]`` along time within each item's first ``lengths[b]`` frames (padding stays)."""
    t = torch.arange(x.shape[1], device=x.device)[None].expand(x.shape[0], -1)  # [B, T]
    rev = lengths[:, None].to(x.device) - 1 - t
    idx = torch.where(rev >= 0, rev, t)
    return x.gather(1, idx[..., None].expand_as(x))


class CTCProbe(nn.Module):
    def __init__(self, n_codes: int, n_labels: int, upsample: int, cfg: ProbeConfig) -> None:
        super().__init__()
        self.upsample = upsample
        self.embed = nn.Embedding(n_codes, cfg.embed_dim)
        dims = [cfg.embed_dim] + [2 * cfg.hidden] * (cfg.layers - 1)
        self.fwd = nn.ModuleList(nn.LSTM(d, cfg.hidden, batch_first=True) for d in dims)
        self.bwd = nn.ModuleList(nn.LSTM(d, cfg.hidden, batch_first=True) for d in dims)
        self.out = nn.Linear(2 * cfg.hidden, n_labels + 1)  # index n_labels is the CTC blank

    @property
    def blank(self) -> int:
        return self.out.out_features - 1

    def forward(self, codes: Tensor, lengths: Tensor | None = None) -> Tensor:
        """``codes [B, T]`` (+ valid ``lengths [B]``) -> log-probs ``[B, T * upsample, n_labels + 1]``."""
        x = self.embed(codes).repeat_interleave(self.upsample, dim=1)  # [B, T*u, E]
        lens = (torch.full((codes.shape[0],), codes.shape[1]) if lengths is None else lengths) * self.upsample
        for f, b in zip(self.fwd, self.bwd):
            back = reverse_padded(b(reverse_padded(x, lens))[0], lens)
            x = torch.cat([f(x)[0], back], -1)  # [B, T*u, 2H]
        return self.out(x).log_softmax(-1)


@dataclass
class ProbeResult:
    per: float  # phone error rate on the test items
    first_loss: float
    last_loss: float
    steps: int
    upsample: int


def _batch(items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    codes = nn.utils.rnn.pad_sequence([c for c, _ in items], batch_first=True)
    lens = torch.tensor([len(c) for c, _ in items])
    targets = torch.cat([t for _, t in items])
    tlens = torch.tensor([len(t) for _, t in items])
    return codes, lens, targets, tlens


def greedy_decode(logp: Tensor, length: int, blank: int) -> list[int]:
    ids = logp[:length].argmax(-1).tolist()
    out, prev = [], None
    for i in ids:
        if i != prev and i != blank:
            out.append(i)
        prev = i
    return out


def train_probe(train: list[tuple[Tensor, Tensor]], test: list[tuple[Tensor, Tensor]], n_codes: int,
                n_labels: int, frame_rate: float, cfg: ProbeConfig | None = None,
                progress: bool = True) -> ProbeResult:
    """Train on ``(codes [T], phone ids [L])`` pairs, report phone error rate on ``test``."""
    import jiwer

    cfg = cfg or ProbeConfig()
    if not train or not test:
        raise ValueError(f"expected train and test items, got {len(train)} and {len(test)}")
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    up = max(1, math.ceil(cfg.min_rate / frame_rate))
    model = CTCProbe(n_codes, n_labels, up, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    ctc = nn.CTCLoss(blank=model.blank, zero_infinity=True)
    losses = []
    for _ in tqdm(range(cfg.steps), desc="ctc probe", disable=not progress):
        codes, lens, targets, tlens = _batch(rng.sample(train, min(cfg.batch_size, len(train))))
        logp = model(codes, lens)  # [B, T*up, L+1]
        loss = ctc(logp.transpose(0, 1), targets, lens * up, tlens)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    model.eval()
    refs, hyps = [], []
    with torch.no_grad():
        for codes, target in test:
            logp = model(codes[None])[0]
            hyp = greedy_decode(logp, len(codes) * up, model.blank)
            refs.append(" ".join(f"p{i}" for i in target.tolist()))
            hyps.append(" ".join(f"p{i}" for i in hyp))
    k = max(1, len(losses) // 10)  # average the first/last tenth: single batches are noisy
    return ProbeResult(per=float(jiwer.wer(refs, hyps)), first_loss=sum(losses[:k]) / k,
                       last_loss=sum(losses[-k:]) / k, steps=cfg.steps, upsample=up)
