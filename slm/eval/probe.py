"""Probes on frozen tokens: how much phone content the tokens carry in a form a light model can read.

``train_frame_probe``: a frame phone classifier against the aligned phone at each frame's centre
(accuracy on held-out speakers, next to majority-class chance); sample-efficient, the leading column.

``train_probe``: the ASR probe of EVAL.md (SUPERB-style), a small CTC phone recogniser trained for a
bounded number of steps; its phone error rate on held-out speakers.

CTC model: code embedding -> 2-layer BiLSTM -> linear over phones + blank. The backward direction is a
second LSTM run on each sequence reversed within its own length: exact for padded batches, and ~20x
faster on CPU than ``pack_padded_sequence``, whose backward pass is slow there. Token streams at 12.5 Hz
carry fewer frames than phones (~12-15 phones/s), which CTC cannot emit, so each frame is repeated
``upsample`` times (to >= 30 Hz, twice the phone rate) before the LSTM; the LSTM tells the copies
apart by position.
"""
from __future__ import annotations

import copy
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
    # 2e-3 left the probe in CTC's all-blank phase for 200+ steps on 12.5 Hz codes; with prior_init, 2e-2
    # gave PER 0.82 after 40 steps on the v2 codec's semantic stream (5e-3: 0.99, half the outputs empty)
    # and the same PER as 1e-2 after 150 steps (0.71)
    lr: float = 2e-2
    min_rate: float = 30.0  # upsample frames to at least this rate: CTC needs T >= phones (+ repeats)
    # start the output layer at the label prior (blank share = 1 - phones / frames, phones by their train
    # counts): an untrained probe spends its first ~40 steps learning just that prior
    prior_init: bool = True
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
    empty: float  # share of test items decoded to no phone at all (the all-blank phase of CTC training)


def ctc_batch(items: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(codes [T], labels [L])`` pairs -> padded codes, their lengths, concatenated labels, label lengths."""
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
    if cfg.prior_init:
        counts = torch.bincount(torch.cat([t for _, t in train]), minlength=n_labels).float()
        frames = sum(len(c) for c, _ in train) * up
        blank = max(1.0 - counts.sum().item() / frames, 0.05)
        prior = torch.cat([(1 - blank) * (counts + 1) / (counts + 1).sum(), torch.tensor([blank])])
        with torch.no_grad():
            model.out.bias.copy_(prior.log())
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    ctc = nn.CTCLoss(blank=model.blank, zero_infinity=True)
    losses = []
    for _ in tqdm(range(cfg.steps), desc="ctc probe", disable=not progress):
        codes, lens, targets, tlens = ctc_batch(rng.sample(train, min(cfg.batch_size, len(train))))
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
                       last_loss=sum(losses[-k:]) / k, steps=cfg.steps, upsample=up,
                       empty=sum(not h for h in hyps) / len(hyps))


# --- frame-level phone probe -------------------------------------------------------------------------


@dataclass
class FrameProbeConfig:
    """A frame classifier on frozen codes: embedding -> conv over a short window -> GELU -> linear.

    Why this model: the manifests carry exact phone alignments, so every frame has a label and one
    full-batch step sees every train frame (about 10k at 12.5 Hz from 200 utterances), where the CTC
    probe must first learn to align and spends its first hundreds of steps emitting only blanks. A
    short window (not a per-frame MLP) because a 12.5 Hz code spans 80 ms and a phone centre can sit
    anywhere in it or in a neighbour; the window is fixed in seconds so a 12.5 Hz and a 50 Hz stream
    see the same stretch of speech. Small and early-stopped, because codes from a 1024-8192 entry
    codebook seen on a few thousand frames are easy to memorise (a 64/128-wide probe reached 98-100%
    train and 26-37% held-out accuracy on the v2 codec's streams).
    """
    embed_dim: int = 16
    hidden: int = 64
    context_s: float = 0.08  # frames within +-80 ms: +-1 at 12.5 Hz, +-4 at 50 Hz
    steps: int = 300  # full-batch steps (at most): each is one pass over all train frames
    lr: float = 1e-2
    weight_decay: float = 1e-2
    dropout: float = 0.3
    val_share: float = 0.1  # train utterances held out to pick the step (early stopping)
    eval_every: int = 10
    seed: int = 0


class FrameProbe(nn.Module):
    def __init__(self, n_codes: int, n_labels: int, context: int, cfg: FrameProbeConfig) -> None:
        super().__init__()
        self.pad = n_codes  # padding id: its embedding stays zero
        self.embed = nn.Embedding(n_codes + 1, cfg.embed_dim, padding_idx=n_codes)
        self.conv = nn.Conv1d(cfg.embed_dim, cfg.hidden, 2 * context + 1, padding=context)
        self.drop = nn.Dropout(cfg.dropout)
        self.out = nn.Conv1d(cfg.hidden, n_labels, 1)

    def forward(self, codes: Tensor) -> Tensor:
        """``codes [B, T]`` (padding = ``n_codes``) -> logits ``[B, n_labels, T]``."""
        x = self.embed(codes).transpose(1, 2)  # [B, E, T]
        return self.out(self.drop(nn.functional.gelu(self.conv(x))))


@dataclass
class FrameProbeResult:
    accuracy: float  # frame phone accuracy on the test items
    chance: float  # majority-class accuracy: the train set's most frequent label on every test frame
    train_accuracy: float
    first_loss: float
    last_loss: float
    steps: int
    best_step: int  # the step whose weights were kept (best accuracy on the held-out train utterances)
    val_accuracy: float
    context: int  # frames either side
    n_train_frames: int
    n_test_frames: int


def _pad(items: list[tuple[Tensor, Tensor]], pad: int) -> tuple[Tensor, Tensor]:
    codes = nn.utils.rnn.pad_sequence([c for c, _ in items], batch_first=True, padding_value=pad)
    labels = nn.utils.rnn.pad_sequence([y for _, y in items], batch_first=True, padding_value=-100)
    return codes, labels


def _accuracy(logits: Tensor, labels: Tensor) -> float:
    mask = labels >= 0
    return float((logits.argmax(1)[mask] == labels[mask]).float().mean())


def train_frame_probe(train: list[tuple[Tensor, Tensor]], test: list[tuple[Tensor, Tensor]], n_codes: int,
                      n_labels: int, frame_rate: float, cfg: FrameProbeConfig | None = None,
                      progress: bool = True) -> FrameProbeResult:
    """Train on ``(codes [T], frame labels [T])`` pairs (full batch), report frame accuracy on ``test``."""
    cfg = cfg or FrameProbeConfig()
    if not train or not test:
        raise ValueError(f"expected train and test items, got {len(train)} and {len(test)}")
    for c, y in train + test:
        if c.shape != y.shape or c.dim() != 1:
            raise ValueError(f"expected codes [T] and labels [T] of one length, got {tuple(c.shape)} and "
                             f"{tuple(y.shape)}")
        if len(c) and (int(c.max()) >= n_codes or int(c.min()) < 0):
            raise ValueError(f"expected codes in [0, {n_codes}), got {int(c.min())}..{int(c.max())}")
    torch.manual_seed(cfg.seed)
    order = torch.randperm(len(train)).tolist()
    n_val = max(1, round(cfg.val_share * len(train))) if len(train) > 1 else 0
    val = [train[i] for i in order[:n_val]] or train
    fit = [train[i] for i in order[n_val:]]
    context = max(0, round(cfg.context_s * frame_rate))
    model = FrameProbe(n_codes, n_labels, context, cfg)
    codes, labels = _pad(fit, n_codes)
    val_codes, val_labels = _pad(val, n_codes)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses, best = [], (-1.0, 0, copy.deepcopy(model.state_dict()))
    for step in tqdm(range(1, cfg.steps + 1), desc="frame probe", disable=not progress):
        model.train()
        loss = nn.functional.cross_entropy(model(codes), labels, ignore_index=-100)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            with torch.no_grad():
                acc = _accuracy(model(val_codes), val_labels)
            if acc > best[0]:
                best = (acc, step, copy.deepcopy(model.state_dict()))
    model.load_state_dict(best[2])
    model.eval()
    test_codes, test_labels = _pad(test, n_codes)
    with torch.no_grad():
        acc, train_acc = _accuracy(model(test_codes), test_labels), _accuracy(model(codes), labels)
    train_y, test_y = labels[labels >= 0], test_labels[test_labels >= 0]
    majority = int(torch.bincount(train_y, minlength=n_labels).argmax())
    k = max(1, len(losses) // 10)
    return FrameProbeResult(accuracy=acc, chance=float((test_y == majority).float().mean()),
                            train_accuracy=train_acc, first_loss=sum(losses[:k]) / k if losses else float("nan"),
                            last_loss=sum(losses[-k:]) / k if losses else float("nan"), steps=cfg.steps,
                            best_step=best[1], val_accuracy=best[0], context=context,
                            n_train_frames=int(train_y.numel()), n_test_frames=int(test_y.numel()))
