"""Chunked encode/decode for causal codecs, equal to the offline result.

Every layer of a causal codec is either frame-local or a left-padded conv, so a window holding the
last ``context`` tokens plus the new chunk yields, for the new frames, exactly the offline values
(the zero padding at the window start only reaches frames inside the context, which are dropped).
Recomputing a short context is simpler and less error-prone than per-layer conv caches, and costs
little at 12.5-50 Hz. Synthesis keeps the iSTFT overlap-add tail between chunks.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from codec.contracts import CodecTokens, check_audio

if TYPE_CHECKING:
    from codec.model import DualStreamCodec


def _require_causal(model: DualStreamCodec) -> None:
    if not model.config.causal:
        raise ValueError(f"streaming needs a causal codec config (causal=True); this {model.config.variant!r} "
                         "codec is non-causal: use encode/decode")


def encoder_context_tokens(model: DualStreamCodec) -> int:
    """Semantic frames of left context that cover the encoder + bottleneck receptive field."""
    c = model.config
    s, k1 = c.semantic_stride, c.kernel_size - 1
    frames = (c.n_fft // c.hop_length - 1) + k1 * (1 + c.encoder_blocks) + (s - 1) + k1 * s * c.encoder_low_blocks
    frames += 2  # sacodec's residual activation conv (kernel 3)
    if c.variant == "stacodec":  # SPD transformer: each layer looks back spd_context semantic frames
        frames += s * c.spd_layers * c.spd_context
    return math.ceil(frames / s) + 1


def decoder_context_tokens(model: DualStreamCodec) -> int:
    """Semantic frames of left context that cover the token -> latent -> decoder receptive field."""
    c = model.config
    s, k1 = c.semantic_stride, c.kernel_size - 1
    frames = k1 * c.decoder_blocks + (k1 * s * 2 if c.variant == "secousticodec" else 0)
    return math.ceil(frames / s) + 1


@torch.no_grad()
def stream_encode(model: DualStreamCodec, chunks: Iterator[Tensor],
                  reference: Tensor | None = None) -> Iterator[CodecTokens]:
    """Audio chunks ``[B, 1, n]`` (any sizes) -> one :class:`CodecTokens` per completed group of tokens.

    secousticodec's global embedding comes from ``reference`` audio if given, else from the first
    chunk; with a first chunk at least ``global_crop_s`` long it equals the offline one.
    """
    _require_causal(model)
    if model.needs_teacher_at_encode:
        raise ValueError("the 'sac' codec needs teacher units at encode time and cannot stream alone")
    hop, sr = model.semantic_hop, model.sample_rate
    ctx = encoder_context_tokens(model) * hop
    history: Tensor | None = None
    pending: Tensor | None = None
    global_: Tensor | None = None
    device = next(model.parameters()).device
    secousti = model.config.variant == "secousticodec"
    if secousti and reference is not None:
        ref, _ = model._prepare(reference, None)
        global_ = model.bottleneck.global_from_mel(model.encoder.frontend(ref))

    def window(new: Tensor) -> CodecTokens:
        nonlocal history, global_
        n_tok = new.shape[-1] // hop
        x = new if history is None else torch.cat([history, new], -1)
        enc = model.encoder(x)
        if secousti:
            b = model.bottleneck(enc, None, None, global_=global_)
        else:
            b = model.bottleneck(enc, None, None)
        history = x[..., -ctx:]
        r = model.config.ratio if model.n_acoustic_codebooks else 1
        return CodecTokens(semantic=b.semantic[..., -n_tok:], acoustic=b.acoustic[..., -n_tok * r:], global_=global_)

    for chunk in chunks:
        chunk = check_audio(chunk, sr, sr, name="audio chunk").to(device)
        if secousti and global_ is None:  # from the first chunk as it came (the crop is causal mel)
            global_ = model.bottleneck.global_from_mel(model.encoder.frontend(chunk))
        pending = chunk if pending is None else torch.cat([pending, chunk], -1)
        n = pending.shape[-1] // hop * hop
        if n:
            new, pending = pending[..., :n], pending[..., n:]
            yield window(new)
    if pending is not None and pending.shape[-1]:
        yield window(F.pad(pending, (0, hop - pending.shape[-1])))


@torch.no_grad()
def stream_decode(model: DualStreamCodec, chunks: Iterator[CodecTokens]) -> Iterator[Tensor]:
    """Token chunks -> audio chunks ``[B, 1, Ts_chunk * semantic_hop]`` concatenating to ``decode``.

    The global embedding (secousticodec) is taken from the first chunk that carries one.
    """
    _require_causal(model)
    c = model.config
    head = model.decoder.head
    ctx = decoder_context_tokens(model)
    r = c.ratio if c.n_acoustic_codebooks else 1
    hist: CodecTokens | None = None
    tail: Tensor | None = None
    global_: Tensor | None = None
    pos = 0
    for tok in chunks:
        model._check_tokens(tok)
        tok = tok.to(next(model.parameters()).device)
        if global_ is None and tok.global_ is not None:
            global_ = tok.global_
        win = tok if hist is None else CodecTokens(
            semantic=torch.cat([hist.semantic, tok.semantic], -1), acoustic=torch.cat([hist.acoustic, tok.acoustic], -1))
        win.global_ = global_
        frames = head.frames(model.decoder.features(model.bottleneck.decode_latent(win)))
        m = tok.semantic.shape[-1] * c.semantic_stride
        frames = frames[..., -m:]
        length = (m - 1) * head.hop + head.n_fft
        y = F.fold(frames, (1, length), (1, head.n_fft), stride=(1, head.hop))[:, :, 0]  # [B, 1, L]
        if tail is not None:
            y[..., : tail.shape[-1]] += tail
        out, tail = y[..., : m * head.hop], y[..., m * head.hop :]
        yield out / head.envelope(pos, m * head.hop, out.device)
        pos += m * head.hop
        hist = CodecTokens(semantic=win.semantic[..., -ctx:], acoustic=win.acoustic[..., -ctx * r:])
