"""SecoustiCodec's bottleneck (arXiv 2508.02849): causal VAE + FSQ single semantic codebook, a
global paralinguistic embedding fused by a "semantic connector", and contrastive frame-level
speech-text alignment.

Alignment targets. With :class:`TimedText` (word times from the corpus alignments) each semantic
frame is paired with the text-encoder state of the word whose span holds the frame centre (the
mean of that word's piece states: at 12.5 Hz a word covers 2-5 frames, so splitting a word's span
among its pieces would be a guess at the frame resolution). Frames between words (pauses, crop
padding) are left out of the loss rather than paired with a learned silence embedding: silence has
no text to align to, and one shared silence row would be the positive of a large share of the
frames, turning much of the loss into a speech/silence classifier that the reconstruction already
provides. Frames of one word share one target, so the loss is InfoNCE with several positives per
text row (:func:`frame_info_nce`). A plain string (no alignment known, e.g. a hub dataset) is
spread evenly over the crop's frames, as before word times existed.

Stages ("acoustic-constrained multi-stage optimisation"; the paper gives no stage details, this is
our reading of its released model, which reconstructs either from a continuous acoustic embedding
or from tokens + paralinguistic embedding). The acoustic embedding is the encoder's frame-rate
latent ``enc.base``; the token path ``connect(FSQ(VAE(enc.low)), global)`` is trained to predict it
(``acoustic/constraint``: L2 to the detached embedding relative to its energy) in every stage
except ``single``:

- ``acoustic``: the decoder reads the acoustic embedding; encoder + decoder learn reconstruction,
  the VAE, FSQ, connector and global encoder learn the constraint; no text alignment.
- ``semantic``: the decoder reads the token path; the alignment is on; the acoustic encoder (up to
  ``enc.base``) and the decoder are frozen (:func:`apply_training_stage`), so the acoustic space the
  tokens must reach stays the stage-1 one.
- ``joint``: as ``semantic`` with everything trainable (final fine-tuning).
- ``single`` (default, no schedule): tokens + alignment from the first step, no constraint.

Outside training (``eval()``) encode/decode always use the token path.
"""
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
from codec.text_encoder import TextEncoder, TextTokenizer, TimedText, word_frame_index

STAGES = ("single", "acoustic", "semantic", "joint")
MAX_TEXT = 512  # the text encoder's positions


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


def frame_info_nce(frames: Tensor, rows: Tensor, target: Tensor, temperature: float) -> Tensor:
    """Symmetric InfoNCE between speech frames ``[F, E]`` and text rows ``[R, E]``; frame f's
    positive is row ``target[f]`` and a row may own several frames (all frames of one word).

    speech -> text: cross-entropy over the rows. text -> speech: for each row that owns frames, the
    mean log-probability of its frames under a softmax over all frames (the multi-positive form of
    supervised contrastive learning, arXiv 2004.11362). With one frame per row and ``target =
    arange`` this is exactly :func:`info_nce`.
    """
    a, b = F.normalize(frames, dim=-1), F.normalize(rows, dim=-1)
    logits = a @ b.t() / temperature  # [F, R]
    s2t = F.cross_entropy(logits, target)
    pos = F.one_hot(target, b.shape[0]).t().to(logits.dtype)  # [R, F]
    n_pos = pos.sum(1)
    has = n_pos > 0
    t2s = -((logits.t().log_softmax(-1) * pos).sum(1)[has] / n_pos[has]).mean()
    return 0.5 * (s2t + t2s)


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
        self.text_encoder = TextEncoder(cfg.text_vocab_size, cfg.text_dim, cfg.text_layers, MAX_TEXT)
        self.text_proj = nn.Linear(cfg.text_dim, cfg.vae_dim)
        self.speech_proj = nn.Linear(cfg.vae_dim, cfg.vae_dim)
        self.tokenizer: TextTokenizer | None = None
        self.stage = "single"  # training stage (module docstring), set per step by apply_training_stage

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

    def align_targets(self, text: list[str | TimedText], ts: int) -> tuple[list[list[int]], list[Tensor | None]]:
        """Text ids per item and its timing: for a :class:`TimedText` a pair ``(piece_word [L],
        frame_word [Ts])`` (the word index of each id; the word under each frame, -1 between
        words), None for a plain string."""
        if self.tokenizer is None:
            raise ValueError("text given but no text tokenizer set: call model.set_text_tokenizer(path) "
                             "(train one with codec.text_encoder.train_text_tokenizer)")
        frame_s = self.cfg.hop_length * self.cfg.semantic_stride / self.cfg.sample_rate
        seqs, timing = [], []
        for t in text:
            if isinstance(t, str):
                seqs.append(self.tokenizer.sp.encode(t))
                timing.append(None)
                continue
            if not isinstance(t, TimedText):
                raise TypeError(f"text items must be str or TimedText, got {type(t).__name__}")
            ids: list[int] = []
            piece_word: list[int] = []
            for k, p in enumerate(self.tokenizer.encode_words([w for _, _, w in t.words])):
                if len(ids) + len(p) > MAX_TEXT:  # longer than the text encoder: later words drop out
                    break
                ids += p
                piece_word += [k] * len(p)
            frame_word = word_frame_index(t.words, ts, frame_s)
            with_pieces = torch.tensor(sorted(set(piece_word)), dtype=torch.long)
            frame_word[~torch.isin(frame_word, with_pieces)] = -1  # words that gave no piece / dropped out
            seqs.append(ids)
            timing.append((torch.tensor(piece_word, dtype=torch.long), frame_word))
        return seqs, timing

    def align_loss(self, mu: Tensor, text: list[str | TimedText]) -> tuple[Tensor, dict[str, Tensor]]:
        """Frame-level InfoNCE between the semantic latents ``mu [B, E, Ts]`` and text states: the
        covering word's state per frame for :class:`TimedText` items (frames between words left
        out), the text spread uniformly over the frames (linear interpolation) for plain strings.
        Returns the loss and logging scalars (share of timed items, share of frames used)."""
        if len(text) != mu.shape[0]:
            raise ValueError(f"got {len(text)} texts for a batch of {mu.shape[0]}")
        ts = mu.shape[-1]
        seqs, timing = self.align_targets(text, ts)
        ids, mask = self.tokenizer.pad(seqs, mu.device)
        states = self.text_proj(self.text_encoder(ids, mask))  # [B, L, E]
        speech = self.speech_proj(mu.transpose(1, 2))  # [B, Ts, E]
        frames, rows, targets, n_rows = [], [], [], 0
        for i, tm in enumerate(timing):
            if tm is None:  # each item's own text length, spread over its frames
                n = int(mask[i].sum())
                rows.append(F.interpolate(states[i : i + 1, :n].transpose(1, 2), size=ts, mode="linear",
                                          align_corners=False)[0].t())
                frames.append(speech[i])
                targets.append(torch.arange(ts) + n_rows)
                n_rows += ts
                continue
            piece_word, frame_word = tm
            if not len(piece_word):  # no words in this crop: nothing to align
                continue
            n_words = int(piece_word.max()) + 1
            pool = F.one_hot(piece_word, n_words).t().to(mu.device, states.dtype)  # [W, L]
            rows.append(pool @ states[i, : len(piece_word)] / pool.sum(1, keepdim=True).clamp_min(1))  # word means
            keep = frame_word >= 0
            frames.append(speech[i][keep.to(mu.device)])
            targets.append(frame_word[keep] + n_rows)
            n_rows += n_words
        n_frames = sum(f.shape[0] for f in frames)
        stats = {"align/timed_items": mu.new_tensor(sum(tm is not None for tm in timing) / len(text)),
                 "align/frames_used": mu.new_tensor(n_frames / (mu.shape[0] * ts))}
        if n_frames == 0:  # e.g. every crop fell into silence: no term, but keep the graph connected
            return speech.sum() * 0.0, stats
        loss = frame_info_nce(torch.cat(frames), torch.cat(rows), torch.cat(targets).to(mu.device),
                              self.cfg.align_temperature)
        return loss, stats

    def forward(self, enc: EncoderOutput, teacher: TeacherBatch | None, text: list[str | TimedText] | None,
                global_: Tensor | None = None) -> BottleneckOut:
        stage = self.stage if self.training else "single"
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
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
        extras = {"latent/semantic": mu.detach(), "usage/semantic": usage(q.codes, self.cfg.semantic_codebook_size)}
        if stage != "single":
            target = enc.base.detach().float()  # the acoustic embedding the token path must reproduce
            losses["acoustic/constraint"] = F.mse_loss(z.float(), target) / target.pow(2).mean().clamp_min(1e-8)
            extras["train/stage"] = mu.new_tensor(float(STAGES.index(stage)))
            if stage == "acoustic":
                z = enc.base
        if text is not None and stage != "acoustic":
            losses["align/contrastive"], stats = self.align_loss(mu, text)
            extras.update(stats)
        b, _, ts = q.codes.shape
        acoustic = q.codes.new_zeros(b, 0, ts)
        return BottleneckOut(z, q.codes, acoustic, global_=g, losses=losses, extras=extras)

    def decode_latent(self, tokens: CodecTokens) -> Tensor:
        g = tokens.global_
        if g is not None and g.dtype in (torch.int32, torch.int64):
            raise ValueError("secousticodec expects a float global_ embedding [B, G], got integer tokens")
        return self.connect(self.fsq.decode(tokens.semantic), g)


def acoustic_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The acoustic side of a secousticodec :class:`~codec.model.DualStreamCodec`: the encoder up to
    its frame-rate latent ``enc.base`` (the acoustic embedding) and the decoder."""
    enc = model.encoder
    return [*enc.frontend.parameters(), *enc.inp.parameters(), *enc.blocks.parameters(),
            *model.decoder.parameters()]


def stage_at(step: int, semantic_stage_step: int, joint_stage_step: int) -> str:
    """The training stage of 0-based ``step`` (module docstring); no schedule: ``single``."""
    if semantic_stage_step <= 0:
        return "single"
    if step < semantic_stage_step:
        return "acoustic"
    return "joint" if 0 < joint_stage_step <= step else "semantic"


def apply_training_stage(model: nn.Module, step: int, semantic_stage_step: int, joint_stage_step: int,
                         freeze_acoustic: bool = True) -> str | None:
    """Put ``model`` (unwrapped) in the stage of 0-based ``step`` before that step's forward: set the
    bottleneck's stage and (un)freeze the acoustic side. A function of the step alone, so a resumed
    run lands in the same stage. Returns the stage, or None (nothing done) without a schedule.
    Frozen parameters get no gradient, so AdamW leaves them (and their moments) as they are; tested in
    one process (under DDP they are unused parameters of ``find_unused_parameters=True``)."""
    if semantic_stage_step <= 0 and joint_stage_step <= 0:
        return None  # single stage: every variant trains exactly as without a schedule
    if model.config.variant != "secousticodec":
        raise ValueError("semantic_stage_step / joint_stage_step are secousticodec's training stages; the "
                         f"{model.config.variant!r} codec has none (set both to 0)")
    if semantic_stage_step <= 0 or (joint_stage_step and joint_stage_step <= semantic_stage_step):
        raise ValueError(f"joint_stage_step ({joint_stage_step}) needs semantic_stage_step "
                         f"({semantic_stage_step}) > 0 and must come after it, or be 0")
    stage = stage_at(step, semantic_stage_step, joint_stage_step)
    model.bottleneck.stage = stage
    frozen = freeze_acoustic and stage == "semantic"
    for p in acoustic_parameters(model):
        p.requires_grad_(not frozen)
    return stage
