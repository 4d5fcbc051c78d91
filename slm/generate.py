"""Decoding loops with a KV cache and a vocabulary constrained per span (DESIGN.md §6).

Why our own loop and not ``model.generate``: after every semantic token the acoustic head must run on
the hidden state that sampled it, the allowed vocabulary switches between text and audio spans, and
audio must stream out frame by frame. The loop is a plain "forward one token with the cache, mask,
sample" step; everything else (cache, attention) is transformers'.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from slm.acoustic_head import AcousticHead, sample
from slm.layout import TokenLayout


@dataclass
class Sampling:
    """Sampling controls for the semantic stream (and the head)."""

    temperature: float = 0.8  # <= 0: greedy
    top_k: int = 50
    top_p: float = 0.95
    repetition_penalty: float = 1.0  # CTRL-style, over the last `repetition_window` generated tokens
    repetition_window: int = 32
    head_temperature: float = 0.7
    head_top_k: int = 50

    def __post_init__(self) -> None:
        if self.top_k < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0:
            raise ValueError(f"bad sampling settings: top_k={self.top_k} (>=0), top_p={self.top_p} (0..1], "
                             f"repetition_penalty={self.repetition_penalty} (>0)")


@dataclass
class Frame:
    """One generated semantic frame: its code and (if there is a head) its ``[L]`` acoustic codes."""

    code: int
    acoustic: Tensor | None
    hidden: Tensor  # [D] backbone state that sampled the code


class Decoder:
    """Incremental decoding state for one sequence (batch of one)."""

    def __init__(self, model: torch.nn.Module, prompt: Tensor):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache()
        self.device = next(model.parameters()).device
        self.ids: list[int] = prompt.tolist()
        self.logits, self.hidden = self._forward(prompt)

    @torch.no_grad()
    def _forward(self, ids: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(input_ids=ids.view(1, -1).to(self.device), past_key_values=self.cache, use_cache=True,
                         output_hidden_states=True, logits_to_keep=1)
        self.cache = out.past_key_values
        return out.logits[0, -1].float(), out.hidden_states[-1][0, -1]

    def push(self, token: int) -> None:
        self.ids.append(token)
        self.logits, self.hidden = self._forward(torch.tensor([token]))


def _penalise(logits: Tensor, recent: list[int], penalty: float) -> Tensor:
    if penalty == 1.0 or not recent:
        return logits
    idx = torch.tensor(sorted(set(recent)))
    v = logits[idx]
    logits = logits.clone()
    logits[idx] = torch.where(v > 0, v / penalty, v * penalty)
    return logits


def _pick(logits: Tensor, allowed: Tensor, s: Sampling, recent: list[int], gen: torch.Generator | None) -> int:
    """Sample among the ``allowed`` ids only (``[A]`` int64): gathering first makes top-k/top-p work on
    ~1k audio ids instead of the whole ~50k vocabulary."""
    logits = _penalise(logits, recent[-s.repetition_window:], s.repetition_penalty)
    sub = logits[allowed.to(logits.device)]
    return int(allowed[int(sample(sub[None], s.temperature, s.top_k, s.top_p, gen)[0])])


def generate_frames(model: torch.nn.Module, layout: TokenLayout, prompt: Tensor, head: AcousticHead | None,
                    sampling: Sampling, max_frames: int, voice: Tensor | None = None,
                    generator: torch.Generator | None = None, min_frames: int = 1) -> Iterator[Frame]:
    """Generate semantic frames after ``prompt`` (which ends inside an audio span) until
    ``<|audio_end|>`` or ``max_frames``; the head turns each frame into acoustic codes on the fly.

    Only semantic tokens and ``<|audio_end|>`` can be sampled (``<|audio_end|>`` not before ``min_frames``)."""
    if max_frames <= 0:
        raise ValueError(f"max_frames must be > 0, got {max_frames}")
    vocab = model.get_input_embeddings().weight.shape[0]
    allowed = layout.audio_mask(vocab)
    early = allowed.clone()
    early[layout.audio_end] = False
    allowed, early = allowed.nonzero().flatten(), early.nonzero().flatten()
    dec = Decoder(model, prompt)
    recent: list[int] = []
    for n in range(max_frames):
        tok = _pick(dec.logits, early if n < min_frames else allowed, sampling, recent, generator)
        if tok == layout.audio_end:
            return
        code = tok - layout.semantic_offset
        acoustic = None
        if head is not None:
            h = dec.hidden[None].to(head.in_proj.weight.dtype)
            acoustic = head.generate(h, torch.tensor([code], device=h.device), voice, sampling.head_temperature,
                                     sampling.head_top_k, generator)[0]
        yield Frame(code, acoustic, dec.hidden)
        recent.append(tok)
        if n + 1 < max_frames:
            dec.push(tok)


def generate_text(model: torch.nn.Module, prompt: Tensor, allowed: Tensor, stop_ids: set[int],
                  max_new_tokens: int, sampling: Sampling | None = None,
                  generator: torch.Generator | None = None) -> list[int]:
    """Generate text ids after ``prompt`` restricted to ``allowed`` ``[V]``; stops at any of ``stop_ids``
    (not returned) or after ``max_new_tokens``. Greedy by default."""
    s = sampling or Sampling(temperature=0.0, top_k=0, top_p=1.0)
    allowed = allowed.clone()
    for i in stop_ids:
        allowed[i] = True
    allowed = allowed.nonzero().flatten()
    dec = Decoder(model, prompt)
    out: list[int] = []
    for n in range(max_new_tokens):
        tok = _pick(dec.logits, allowed, s, out, generator)
        if tok in stop_ids:
            break
        out.append(tok)
        if n + 1 < max_new_tokens:
            dec.push(tok)
    return out
