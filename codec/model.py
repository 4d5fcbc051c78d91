"""The dual-stream codec: one model class, configured by :class:`CodecConfig` (DESIGN.md §5).

    wav [B,1,N] -> log-mel @50 Hz -> ConvNeXt encoder -> variant bottleneck (semantic + acoustic codes)
                -> frame-rate latent [B,D,T] -> ConvNeXt decoder -> iSTFT head -> wav [B,1,N']

``N' = ceil(N / semantic_hop) * semantic_hop``: audio is right-padded with zeros to whole tokens.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codec.config import TWO_STREAM, CodecConfig
from codec.contracts import CodecTokens, check_audio
from codec.modules.blocks import Decoder, Encoder
from codec.modules.bottlenecks import RVQBottleneck, SACBottleneck, SACodecBottleneck
from codec.modules.secousti import SecoustiBottleneck
from codec.modules.teacher import TeacherBatch

__all__ = ["CodecOutput", "DualStreamCodec", "TeacherBatch", "weights_match"]


@dataclass
class CodecOutput:
    wav_hat: Tensor                      # [B, 1, N] reconstruction, trimmed to the input length
    tokens: CodecTokens
    losses: dict[str, Tensor] = field(default_factory=dict)  # unweighted scalars, "group/name"
    extras: dict[str, Tensor] = field(default_factory=dict)  # latents, codebook usage (for logging)

    def weighted_loss(self, weights: dict[str, float], extra: dict[str, Tensor] | None = None) -> Tensor:
        """``sum_k weights[k] * loss[k]`` over the model losses (+ e.g. a trainer's ``mel/l1``)."""
        items = {**self.losses, **(extra or {})}
        return sum(weights.get(k, 1.0) * v for k, v in items.items())


def weights_match(a: nn.Module, b: nn.Module, skip: tuple[str, ...] = ()) -> bool:
    """Same state-dict keys and shapes, and equal values at fp16 (the precision bundles store), outside
    the modules named in ``skip``."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    prefixes = tuple(m + "." for m in skip)
    for k, x in sa.items():
        if prefixes and k.startswith(prefixes):
            continue
        y = sb[k]
        if x.shape != y.shape:
            return False
        if x.is_floating_point() or y.is_floating_point():
            x, y = x.to(torch.float16), y.to(torch.float16)
        if not torch.equal(x, y):
            return False
    return True


def decode_only_modules(variant: str) -> tuple[str, ...]:
    """:attr:`DualStreamCodec.decode_only` of a variant, without building the codec."""
    return ("decoder", *(("bottleneck.ac_out", "bottleneck.ac_up") if variant == "sacodec" else ()))


def build_bottleneck(cfg: CodecConfig) -> nn.Module:
    if cfg.variant == "sac":
        return SACBottleneck(cfg)
    if cfg.variant == "sacodec":
        return SACodecBottleneck(cfg)
    if cfg.variant == "secousticodec":
        return SecoustiBottleneck(cfg)
    return RVQBottleneck(cfg)  # stacodec, rvq, distill


class DualStreamCodec(nn.Module):
    """Implements :class:`codec.contracts.Codec` (and ``StreamingCodec`` when ``config.causal``)."""

    def __init__(self, config: CodecConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = Encoder(config)
        self.bottleneck = build_bottleneck(config)
        self.decoder = Decoder(config)

    # ---- the Codec protocol's rates and cardinalities -------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.config.sample_rate

    @property
    def semantic_rate(self) -> float:
        return self.config.semantic_rate

    @property
    def acoustic_rate(self) -> float:
        return self.config.acoustic_rate

    @property
    def semantic_codebook_size(self) -> int:
        return self.config.semantic_codebook_size

    @property
    def acoustic_codebook_size(self) -> int:
        return self.config.acoustic_codebook_size

    @property
    def n_semantic_codebooks(self) -> int:
        return self.config.n_semantic_codebooks

    @property
    def n_acoustic_codebooks(self) -> int:
        return self.config.n_acoustic_codebooks

    @property
    def bitrate(self) -> float:
        return self.config.bitrate

    @property
    def hop_length(self) -> int:
        """Samples per acoustic frame (per semantic frame when there is no acoustic stream)."""
        c = self.config
        return c.hop_length * (c.acoustic_stride if c.n_acoustic_codebooks else c.semantic_stride)

    @property
    def semantic_hop(self) -> int:
        return self.config.hop_length * self.config.semantic_stride

    @property
    def needs_teacher_codebook(self) -> bool:
        return self.config.variant in ("sac", "sacodec")

    @property
    def needs_teacher_at_encode(self) -> bool:
        return self.config.variant == "sac"

    @property
    def decode_only(self) -> tuple[str, ...]:
        """Modules that only turn tokens into audio: changing their weights changes no token. A decoder
        fine-tune (``train_only``) trains these, and a speech LM trained on the codec's tokens stays valid."""
        return decode_only_modules(self.config.variant)

    def tokenises_like(self, other: nn.Module) -> bool:
        """True when ``other`` has this codec's config and its weights (compared at fp16, the precision
        bundles store) in everything but :attr:`decode_only`: then it gives the same tokens, and its audio
        may differ."""
        if getattr(other, "config", None) is None or other.config.to_dict() != self.config.to_dict():
            return False
        return weights_match(self, other, skip=self.decode_only)

    # ---- teacher-side state saved with the weights ----------------------------------------------
    def set_teacher_codebook(self, centroids: Tensor) -> None:
        """Install the frozen teacher k-means centroids ``[K, D]`` (sac, sacodec)."""
        if not self.needs_teacher_codebook:
            raise ValueError(f"the {self.config.variant!r} codec takes no teacher codebook "
                             "(check model.needs_teacher_codebook first)")
        want = (self.config.semantic_codebook_size, self.config.teacher_dim)
        if tuple(centroids.shape) != want:
            raise ValueError(f"teacher codebook must be [K, D] = {list(want)} (semantic_codebook_size, "
                             f"teacher_dim), got {list(centroids.shape)}")
        if not torch.isfinite(centroids).all():
            raise ValueError("teacher codebook contains NaN or Inf")
        self.bottleneck.teacher_codebook.centroids.copy_(centroids.detach().float())

    def teacher_centroids(self) -> Tensor | None:
        """The frozen teacher k-means centroids ``[K, D]`` the semantic codes stand for (sac, sacodec), as a
        float32 CPU copy; None for variants without a teacher codebook."""
        if not self.needs_teacher_codebook:
            return None
        return self.bottleneck.teacher_codebook.centroids.detach().float().cpu()

    def set_text_tokenizer(self, model: str | Path | bytes) -> None:
        """Install the sentencepiece model of the alignment text encoder (secousticodec)."""
        if self.config.variant != "secousticodec":
            raise ValueError(f"the {self.config.variant!r} codec has no text encoder")
        from codec.text_encoder import TextTokenizer

        tok = TextTokenizer(model)
        if tok.vocab_size > self.config.text_vocab_size:
            raise ValueError(f"tokenizer has {tok.vocab_size} pieces, the text encoder only "
                             f"text_vocab_size={self.config.text_vocab_size}")
        self.bottleneck.tokenizer = tok

    # ---- core ------------------------------------------------------------------------------------
    def _prepare(self, wav: Tensor, sample_rate: int | None) -> tuple[Tensor, int]:
        wav = check_audio(wav, self.sample_rate if sample_rate is None else sample_rate, self.sample_rate)
        n = wav.shape[-1]
        padded = math.ceil(n / self.semantic_hop) * self.semantic_hop
        param = next(self.parameters())
        return F.pad(wav, (0, padded - n)).to(param.device), n

    def _bottleneck(self, wav: Tensor, teacher: TeacherBatch | None, text: list[str] | None,
                    global_: Tensor | None = None, frames: Tensor | None = None):
        enc = self.encoder(wav)
        if isinstance(self.bottleneck, SecoustiBottleneck):
            if frames is not None and global_ is None:  # each voice from its own frames, not the padding
                s = self.config.semantic_stride
                global_ = torch.cat([self.bottleneck.global_from_mel(enc.mel[i : i + 1, :, : int(f) * s])
                                     for i, f in enumerate(frames)])
            return enc, self.bottleneck(enc, teacher, text, global_=global_)
        if text is not None:
            raise ValueError(f"text alignment is a secousticodec feature; the {self.config.variant!r} codec "
                             "takes no text")
        if frames is not None and self.config.variant == "stacodec":  # SPD attention skips the padding
            return enc, self.bottleneck(enc, teacher, text, lengths=frames)
        return enc, self.bottleneck(enc, teacher, text)

    def _frames_of(self, lengths: Tensor | list[int], batch: int, n: int) -> Tensor:
        """Validate per-item sample lengths ``[B]`` of a zero-padded batch of ``n`` samples and return
        the valid semantic frames per item, ``ceil(length / semantic_hop)`` (int64 ``[B]``)."""
        lengths = torch.as_tensor(lengths).cpu()
        if lengths.dim() != 1 or lengths.shape[0] != batch:
            raise ValueError(f"lengths must be [B] = [{batch}] sample counts, got shape {tuple(lengths.shape)}")
        if lengths.is_floating_point() and not torch.equal(lengths, lengths.round()):
            raise ValueError(f"lengths must be whole sample counts, got {lengths.tolist()}")
        lengths = lengths.long()
        if int(lengths.min()) < 1 or int(lengths.max()) > n:
            raise ValueError(f"lengths must lie in 1..{n} (the batch has {n} samples per item), got "
                             f"{lengths.tolist()}")
        return (lengths + self.semantic_hop - 1) // self.semantic_hop

    def forward(self, wav: Tensor, teacher: TeacherBatch | None = None, text: list[str] | None = None,
                sample_rate: int | None = None, tokens: CodecTokens | None = None) -> CodecOutput:
        """Training/analysis pass: ``wav [B, 1, N]`` -> :class:`CodecOutput` (``wav_hat [B, 1, N]``).

        ``tokens``: decode these instead of encoding ``wav`` (a decoder fine-tune on tokens from elsewhere,
        e.g. a speech LM's acoustic head); they must cover ``wav`` (``Ts = ceil(N / semantic_hop)``). No
        bottleneck losses then: the tokens are given, only the decode path (:attr:`decode_only`) runs."""
        x, n = self._prepare(wav, sample_rate)
        if tokens is not None:
            self._check_tokens(tokens)
            if tokens.semantic.shape[0] != x.shape[0] or tokens.semantic.shape[-1] * self.semantic_hop != x.shape[-1]:
                raise ValueError(f"tokens of shape {tuple(tokens.semantic.shape)} do not cover audio of shape "
                                 f"{tuple(wav.shape)} ({x.shape[-1] // self.semantic_hop} semantic frames)")
            tokens = tokens.to(x.device)
            wav_hat = self.decoder(self.bottleneck.decode_latent(tokens))[..., :n]
            return CodecOutput(wav_hat=wav_hat, tokens=tokens, losses={}, extras={})
        _, b = self._bottleneck(x, teacher, text)
        wav_hat = self.decoder(b.z)[..., :n]
        tokens = CodecTokens(semantic=b.semantic, acoustic=b.acoustic, global_=b.global_)
        return CodecOutput(wav_hat=wav_hat, tokens=tokens, losses=b.losses, extras=b.extras)

    @torch.no_grad()
    def encode(self, wav: Tensor, teacher: TeacherBatch | None = None, sample_rate: int | None = None,
               lengths: Tensor | list[int] | None = None) -> CodecTokens:
        """``wav [B, 1, N]`` (or ``[N]``, ``[1, N]``) -> :class:`CodecTokens` with ``Ts = ceil(N / semantic_hop)``.

        ``lengths [B]``: valid samples per item of a zero-padded batch. The tokens' ``lengths`` are then
        ``ceil(length / semantic_hop)`` semantic frames per item (all ``Ts`` without it); frames past an
        item's length are padding. A causal codec gives each item exactly the codes it gets alone; a
        non-causal one can differ in the last frames before the padding (its convs see the zeros
        there; stacodec's SPD attention does not). secousticodec pools each voice from its own frames.
        """
        if self.needs_teacher_at_encode and (teacher is None or teacher.units is None):
            raise ValueError("the 'sac' codec encodes with its teacher: encode(wav, teacher=TeacherBatch(units=...)) "
                             "with the teacher's k-means units [B, Ts] at the semantic rate "
                             f"({self.semantic_rate} Hz)")
        x, n = self._prepare(wav, sample_rate)
        frames = None if lengths is None else self._frames_of(lengths, x.shape[0], n)
        _, b = self._bottleneck(x, teacher, None, frames=None if frames is None else frames.to(x.device))
        if frames is None:
            frames = torch.full((x.shape[0],), b.semantic.shape[-1], dtype=torch.long)
        return CodecTokens(semantic=b.semantic, acoustic=b.acoustic, global_=b.global_, lengths=frames.to(x.device))

    def _check_tokens(self, tokens: CodecTokens) -> None:
        c = self.config
        ks, ka = tokens.semantic.shape[1], tokens.acoustic.shape[1]
        if ks != c.n_semantic_codebooks or ka != c.n_acoustic_codebooks:
            raise ValueError(f"expected {c.n_semantic_codebooks} semantic and {c.n_acoustic_codebooks} acoustic "
                             f"codebooks, got {ks} and {ka}")
        ts, ta = tokens.semantic.shape[-1], tokens.acoustic.shape[-1]
        if ka and ta != ts * c.ratio:
            raise ValueError(f"acoustic stream must have r*Ts = {c.ratio}*{ts} frames, got {ta}")
        if ts == 0:
            raise ValueError("empty token sequence (Ts = 0)")
        for name, t, k in (("semantic", tokens.semantic, c.semantic_codebook_size),
                           ("acoustic", tokens.acoustic, c.acoustic_codebook_size)):
            if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
                raise ValueError(f"{name} codes must lie in 0..{k - 1}, got {int(t.min())}..{int(t.max())}")

    @torch.no_grad()
    def decode(self, tokens: CodecTokens, semantic_only: bool = False) -> Tensor:
        """:class:`CodecTokens` -> ``wav [B, 1, Ts * semantic_hop]``.

        ``semantic_only`` (sac, sacodec) decodes the semantic stream alone, the acoustic contribution
        zeroed as acoustic dropout does in training (``CodecConfig.acoustic_dropout``); the acoustic codes
        are then only checked, not used.

        With ``tokens.lengths``, item i's audio is zero past ``lengths[i] * semantic_hop`` samples and
        the batch is trimmed to the longest item (``max(lengths) * semantic_hop`` samples)."""
        self._check_tokens(tokens)
        tokens = tokens.to(next(self.parameters()).device)
        if not semantic_only:
            wav = self.decoder(self.bottleneck.decode_latent(tokens))
        elif self.config.variant in TWO_STREAM:
            wav = self.decoder(self.bottleneck.decode_latent(tokens, acoustic=False))
        else:
            raise ValueError(f"semantic_only decoding needs a two-stream variant {TWO_STREAM}, "
                             f"not {self.config.variant!r}")
        if tokens.lengths is None:
            return wav
        n = tokens.lengths.long() * self.semantic_hop  # [B] valid samples
        wav = wav[..., : int(n.max())]
        return wav * (torch.arange(wav.shape[-1], device=wav.device)[None, None] < n[:, None, None])

    # ---- streaming and persistence live in their own modules -------------------------------------
    def stream_encode(self, chunks: Iterator[Tensor], reference: Tensor | None = None) -> Iterator[CodecTokens]:
        from codec.streaming import stream_encode

        return stream_encode(self, chunks, reference=reference)

    def stream_decode(self, chunks: Iterator[CodecTokens]) -> Iterator[Tensor]:
        from codec.streaming import stream_decode

        return stream_decode(self, chunks)

    def save_pretrained(self, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
        from codec.pretrained import save_pretrained

        return save_pretrained(self, directory, dtype=dtype)

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str = "cpu") -> DualStreamCodec:
        from codec.pretrained import load_pretrained

        return load_pretrained(cls, directory, map_location=map_location)
