"""Decoding loops with a KV cache and a vocabulary constrained per span (DESIGN.md §6).

Why our own loop and not ``model.generate``: after every semantic token the acoustic head must run on
the hidden state that sampled it, the allowed vocabulary switches between text and audio spans, and
audio must stream out frame by frame. The loop is a plain "forward one token with the cache, mask,
sample" step; everything else (cache, attention) is transformers'.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from adapters.backbones import cache_kw, out_cache
from slm.acoustic_head import AcousticHead, FrameContext, sample
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
    # TTS: classifier-free guidance on the semantic tokens (1 = off). The unconditional stream is the same
    # audio in the continuation form (no text); each semantic step samples from
    # log p(s|text) + (scale - 1) (log p(s|text) - log p(s)), at the cost of a second LM pass per frame
    cfg_scale: float = 1.0
    # TTS length bound from the text: a sentence of n characters gets at most 0.5 + n * this many seconds
    # (0 = only `max_seconds`). `slm train` writes twice the training data's median seconds per character
    # into the model dir, above every training utterance's own length: it stops runaway speech, not speech.
    max_seconds_per_char: float = 0.0
    # and at least n * this many seconds before <|audio_end|> may be sampled (0 = one frame). `slm train`
    # writes half the training data's median, below every training utterance's own rate: it stops a model
    # that ends a sentence after a frame or two, without padding real speech.
    min_seconds_per_char: float = 0.0
    # TTS: sample this many candidates of each sentence and speak the one the model's CTC reader
    # (slm.ctc_reader) reads as the sentence most probably (1 = off). The candidates decode side by side
    # (generate_candidates: on CPU with int8 weights 4 cost ~1.7x the time of 1); a sentence's audio starts
    # once its candidates are done, or their first `best_of_words` words are; needs a model dir with a reader
    best_of: int = 1
    # with best_of > 1 in aligned TTS: choose among the candidates every this many words (generate_best): the
    # chosen words stream at once and every candidate goes on from the chosen one (0 = one choice per sentence)
    best_of_words: int = 0

    def __post_init__(self) -> None:
        for name in ("temperature", "head_temperature"):
            t = getattr(self, name)
            if not math.isfinite(t):
                raise ValueError(f"{name} must be a finite number (<= 0: greedy), got {t}")
        if not 1 <= self.best_of <= 16:
            raise ValueError(f"best_of must be in 1..16, got {self.best_of}")
        if not 0 <= self.best_of_words <= 64:
            raise ValueError(f"best_of_words must be in 0..64 (0: choose once per sentence), got {self.best_of_words}")
        if (self.top_k < 0 or not 0 < self.top_p <= 1 or self.repetition_penalty <= 0 or self.max_seconds_per_char < 0
                or self.min_seconds_per_char < 0 or not 0 < self.cfg_scale <= 10):
            raise ValueError(f"bad sampling settings: top_k={self.top_k} (>=0), top_p={self.top_p} (0..1], "
                             f"repetition_penalty={self.repetition_penalty} (>0), cfg_scale={self.cfg_scale} (0..10], "
                             f"max_seconds_per_char={self.max_seconds_per_char} (>=0), "
                             f"min_seconds_per_char={self.min_seconds_per_char} (>=0)")

    def max_frames(self, text: str, max_seconds: float, rate: float) -> int:
        """Frame budget of one sentence: ``max_seconds``, tightened by the text-length bound if set."""
        sec = max_seconds if not self.max_seconds_per_char else min(max_seconds, 0.5 + self.max_seconds_per_char * len(text))
        return max(1, int(sec * rate))

    def word_caps(self, words: list[str], rate: float) -> list[int]:
        """Aligned TTS: most frames each word may get: its characters at the upper bound (0.15 s per
        character where none is set) plus 0.25 s for a pause after it; at least 2."""
        per_char = self.max_seconds_per_char or 0.15
        return [max(2, int((0.25 + per_char * len(w)) * rate)) for w in words]

    def min_frames(self, text: str, rate: float, max_frames: int) -> int:
        """Frames one sentence gets before it may end: the text-length lower bound, within ``max_frames``."""
        return max(1, min(max_frames, int(self.min_seconds_per_char * len(text) * rate)))


@dataclass
class Frame:
    """One generated semantic frame: its code and (if there is a head) its ``[L]`` acoustic codes."""

    code: int
    acoustic: Tensor | None
    hidden: Tensor  # [D] backbone state that sampled the code
    word: int = 0  # aligned TTS: the index of the word it is spoken over (0 in the plain form)


class Decoder:
    """Incremental decoding state for one sequence (batch of one).

    ``allowed`` (``[A]`` int64 ids, or None for the whole vocabulary): :attr:`logits` holds only those
    ids' logits, in that order. For a plain transformers causal LM the loop runs the decoder body and
    projects the last state itself: onto the ``allowed`` rows only when they are few (audio spans: ~1k
    of ~50k ids; the same dot products, ~20% of SmolLM2-135M's per-token work saved), and, when the
    model has a :class:`FusedStep` (see :func:`inference_copy`) and ``max_new`` is given, one token at
    a time through it. peft-wrapped models (training, ``disable_adapter``) take transformers' full
    forward with ``logits_to_keep=1`` and gather."""

    def __init__(self, model: torch.nn.Module, prompt: Tensor, allowed: Tensor | None = None,
                 need_hidden: bool = True, max_new: int | None = None):
        from transformers import DynamicCache

        self.model = model
        self.cache = DynamicCache()
        self.device = next(model.parameters()).device
        self.allowed = None if allowed is None else allowed.to(self.device)
        self.need_hidden = need_hidden
        self.rows = _output_rows(model, self.allowed)
        # the module _forward calls, and its KV-cache keyword (looked up once, not per token)
        self.body = model.get_decoder() if self.rows is not None else model
        self.cache_kw = cache_kw(self.body)
        self.ids: list[int] = prompt.tolist()
        fused = getattr(model, "fused_step", None)
        if fused is not None and self.rows is not None and fused.prefill_prompt:
            self.cache, self.hidden = fused.prefill(prompt)
            self.logits = self._project(self.hidden)
        else:
            self.logits, self.hidden = self._forward(prompt)
        self.fast = (fused.start(self.cache, prompt.numel(), prompt.numel() + max_new)
                     if fused is not None and self.rows is not None and max_new else None)

    def _project(self, h: Tensor) -> Tensor:
        logits = F.linear(h, *self.rows[:2]).float()
        return logits[self.allowed] if self.rows[2] else logits

    @torch.no_grad()
    def _forward(self, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        ids = ids.view(1, -1).to(self.device)
        if self.rows is not None:
            out = self.body(input_ids=ids, use_cache=True, **{self.cache_kw: self.cache})
            self.cache = out_cache(out)
            h = out.last_hidden_state[0, -1]
            return self._project(h), h
        out = self.body(input_ids=ids, use_cache=True, output_hidden_states=self.need_hidden, logits_to_keep=1,
                        **{self.cache_kw: self.cache})
        self.cache = out_cache(out)
        logits = out.logits[0, -1].float()
        return (logits if self.allowed is None else logits[self.allowed],
                out.hidden_states[-1][0, -1] if self.need_hidden else None)

    @torch.no_grad()
    def push(self, token: int) -> None:
        self.ids.append(token)
        if self.fast is None:
            self.logits, self.hidden = self._forward(torch.tensor([token]))
        else:
            self.hidden = self.fast.step(token)
            self.logits = self._project(self.hidden)

    @torch.no_grad()
    def push_many(self, tokens: list[int]) -> None:
        """Feed several tokens at once (one forward pass); :attr:`logits` are then those after the last."""
        tokens = [int(t) for t in tokens]
        self.ids += tokens
        if self.fast is None:
            self.logits, self.hidden = self._forward(torch.tensor(tokens))
        else:
            self.hidden = self.fast.step_many(tokens)
            self.logits = self._project(self.hidden)


def _output_rows(model: torch.nn.Module, allowed: Tensor | None) -> tuple[Tensor, Tensor | None, bool] | None:
    """(weight, bias, gather) of the output projection: restricted to ``allowed`` when that set is small
    (``gather`` False), else the whole matrix (gather the logits after). None where projecting the
    decoder's last state is not exactly the model's own logits (peft wrappers, logit scaling/capping)."""
    if hasattr(model, "peft_config") or not hasattr(model, "get_decoder"):
        return None
    out, cfg = model.get_output_embeddings(), getattr(model, "config", None)
    if (not isinstance(out, torch.nn.Linear) or getattr(cfg, "final_logit_softcapping", None)
            or getattr(cfg, "logit_scale", None) or getattr(cfg, "logits_scaling", None)):
        return None
    if allowed is None or allowed.numel() * 4 > out.weight.shape[0]:
        return out.weight.detach(), None if out.bias is None else out.bias.detach(), allowed is not None
    w = out.weight.detach()[allowed].contiguous()
    return w, None if out.bias is None else out.bias.detach()[allowed].contiguous(), False


class FusedStep:
    """One-token decoding for Llama-architecture backbones (SmolLM2) with fused projections.

    Hand-written on purpose: at batch 1 on CPU, transformers' per-layer module calls and small ops
    (~45 per layer: norms in 7 ops, rotary, cache bookkeeping) cost ~13 ms of a ~47 ms SmolLM2-135M step.
    This step does ~20 ops per layer: q/k/v and gate/up as one matmul each, called as plain functions of
    ``[rows, in]`` (:func:`_rows_fn`: no module calls, the int8 kernel's bf16 output promoted by the fp32
    operands it meets instead of cast back), ``F.rms_norm``, rotary on q and k together in 4 ops, K/V written
    into preallocated buffers, and gives bit-identical hidden states in fp32 (tests compare with
    transformers). The prompt runs through transformers in fp32 (its cache is copied in). The model's own
    q/k/v/gate/up weights become views of the fused matrices (no extra memory). ``int8`` (a setting of
    :func:`int8_mode`): the fused matrices as :class:`Int8Linear`; ``"w8a8"`` gives qkv and gate_up int8
    activations, o and down int8 weights only. ``calibration`` (token ids, with ``"w8a8"``): run once through the
    fp32 layers to smooth those matrices' input channels for int8 activations (:class:`Int8Linear` ``act_max``);
    without it, none.

    ``bf16_prompt`` (int8 only; None: on where the CPU multiplies bf16 natively, :func:`fast_bf16`): the prompt
    runs through this loop (:meth:`prefill`) with its matrices on bf16 copies of the weights (~+50% of the fp32
    matrices' memory), norms, rotary, attention and residual in fp32. A 172-token TTS prompt of the bundle took
    1.7-1.9x less time than transformers' fp32 forward, with the last layer's keys 0.5% (relative) from it
    (docs/results/bf16_prompt)."""

    def __init__(self, model: torch.nn.Module, int8: bool | str = False, calibration: Tensor | None = None,
                 bf16_prompt: bool | None = None):
        if not self.supports(model):
            raise ValueError(f"FusedStep supports Llama-architecture models without biases, got "
                             f"{type(model).__name__}")
        body, cfg = model.get_decoder(), model.config
        self.embed, self.norm, self.eps = body.embed_tokens.weight, body.norm.weight, body.norm.variance_epsilon
        self.rotary = body.rotary_emb
        self.nh, self.nkv = cfg.num_attention_heads, cfg.num_key_value_heads
        self.hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.nh
        layers, mode = [], int8_mode(int8)
        for layer in body.layers:
            a, m = layer.self_attn, layer.mlp
            layers.append((layer.input_layernorm.weight, _fuse([a.q_proj, a.k_proj, a.v_proj]),
                           _fuse([a.o_proj]), layer.post_attention_layernorm.weight,
                           _fuse([m.gate_proj, m.up_proj]), _fuse([m.down_proj])))
        self.layers = layers
        if bf16_prompt is None:
            bf16_prompt = bool(mode) and self.embed.is_cpu and fast_bf16("cpu")
        if bf16_prompt and not mode:
            raise ValueError("bf16_prompt runs the prompt on bf16 copies of int8 layers' weights: give it with int8")
        # prefill: the prompt through this loop (its K/V into a transformers cache) instead of transformers'
        self.prefill_prompt = bool(bf16_prompt)
        if mode:
            amax = self._input_max(calibration) if mode == "w8a8" and calibration is not None else None
            act = _W8A8 if mode == "w8a8" else ()
            bulk = torch.bfloat16 if bf16_prompt else None
            self.layers = [tuple(Int8Linear(x, activations=j in act, act_max=None if amax is None or j not in act
                                            else amax[i][j], bulk_dtype=bulk) if j in _MATRICES else x
                                 for j, x in enumerate(layer))
                           for i, layer in enumerate(self.layers)]

    @property
    def layers(self) -> list[tuple]:
        """Per layer ``(input norm weight, qkv, o, post-attention norm weight, gate_up, down)``: the matrices as
        modules (``nn.Linear`` or :class:`Int8Linear`) or callables. Setting it rebuilds what the loop calls
        (:func:`_rows_fn`: each matrix as a function of ``[rows, in]``)."""
        return self._layers

    @layers.setter
    def layers(self, layers: list[tuple]) -> None:
        self._layers = layers
        self._run = [tuple(_rows_fn(x) if j in _MATRICES else x for j, x in enumerate(layer)) for layer in layers]
        self._native = self._native_args(layers)

    def _native_args(self, layers: list[tuple]) -> tuple | None:
        """The per-layer tensors :func:`slm.native.fused_layers` takes, where every matrix is an int8
        weight-only :class:`Int8Linear` without bias on CPU and the native library is available; else None
        (the Python loop)."""
        mats = [layer[j] for layer in layers for j in _MATRICES]
        if not mats or not all(isinstance(m, Int8Linear) and m.packed is None and m.dense.bias is None
                                and m.qweight.is_cpu for m in mats):
            return None
        if not (self.embed.is_cpu and self.embed.dtype == torch.float32
                and all(layer[j].dtype == torch.float32 for layer in layers for j in (0, 3))):
            return None
        from slm.native import fused_layers

        op = fused_layers()
        if op is None:
            return None
        lists = [[layer[0].detach().contiguous() for layer in layers]]
        for j in _MATRICES[:2]:
            lists += [[layer[j].qweight for layer in layers], [layer[j].scale for layer in layers]]
        lists.append([layer[3].detach().contiguous() for layer in layers])
        for j in _MATRICES[2:]:
            lists += [[layer[j].qweight for layer in layers], [layer[j].scale for layer in layers]]
        rows = {m.max_rows for m in mats}
        bulk = all(m.bulk is not None and m.bulk.dtype == torch.bfloat16 for m in mats)
        if len(rows) != 1 or (not bulk and any(m.bulk is not None for m in mats)):
            return None  # mixed settings: the Python loop, which asks each matrix
        # the bf16 copies, for passes of more than max_rows rows (none: such passes keep the Python loop)
        lists += [[layer[j].bulk for layer in layers] if bulk else [] for j in _MATRICES]
        # the int8 matrices' row sums, which the native int8 kernel takes (slm.native.int8_mm)
        lists += [[layer[j].qweight.sum(1, dtype=torch.int32) for layer in layers] for j in _MATRICES]
        return op, lists, native_int8_rows(rows.pop()), bulk

    def native_rows(self, rows: int) -> bool:
        """Whether a pass of ``rows`` new tokens in all runs through the native layer loop: up to the int8
        matrices' ``max_rows``, and beyond it where they have bf16 copies (the rows a word or a best-of batch
        feeds at once; prompts go through :meth:`prefill`)."""
        return self._native is not None and (rows <= self._native[2] or self._native[3])

    def native_forward(self, x: Tensor, k: Tensor, v: Tensor, pos: Tensor, cos: Tensor, sin: Tensor,
                       mask: Tensor | None, span: int, shared: int = 0) -> Tensor:
        """:meth:`layers_forward` in C++ (:func:`slm.native.fused_layers`; check :meth:`native_rows` first):
        ``x [B, n, D]`` the new tokens' embeddings, written as K/V into ``k``/``v`` ``[layers, B, nkv, max_len,
        hd]`` at ``pos [B, n]``; ``cos``/``sin`` ``[max_len, hd]`` the rotary tables; ``mask`` SDPA's boolean mask
        over the first ``span`` positions (None: each row's one query sees all of them); ``shared`` the first
        positions, which every row's K/V holds alike and no row writes (its attention reads them once for all
        rows: the same bits). Returns the hidden states before the final norm."""
        op, lists, max_rows, _ = self._native
        return op(x.contiguous(), *lists, k, v, pos, cos, sin, mask, span, self.nh, self.nkv, float(self.eps),
                  max_rows, shared)

    @torch.no_grad()
    def tap_inputs(self, seqs, fn: Callable[[int, int, Tensor], None]) -> None:
        """Each sequence of token ids in ``seqs`` (a ``[T]`` tensor or a list of them, each from position 0, causal)
        through this loop, calling ``fn(layer, slot, x)`` with each fused matrix's input ``x [rows, in]`` before
        that matrix runs (``slot``: its index in the layer tuple). The matrices keep their own form: through a
        plain step they see what the fp32 layers feed them (calibration: int8 activation maxima, quantizer
        Hessians)."""
        seqs = [seqs] if isinstance(seqs, Tensor) else list(seqs)
        if not all(isinstance(ids, Tensor) for ids in seqs):
            raise TypeError("tap_inputs takes a tensor of token ids or a list of such tensors (one per sequence)")
        seqs = [ids.flatten().to(self.embed.device) for ids in seqs]
        if not seqs or any(not ids.numel() for ids in seqs):
            raise ValueError("calibration needs at least one token in every sequence")
        kept = self.layers

        def tap(i: int, j: int, lin):
            run = _rows_fn(lin)

            def tapped(x: Tensor) -> Tensor:
                fn(i, j, x)
                return run(x)
            return tapped

        self.layers = [tuple(tap(i, j, x) if j in _MATRICES else x for j, x in enumerate(layer))
                       for i, layer in enumerate(kept)]
        try:
            for ids in seqs:
                cos, sin = self.rotary(self.embed[:1], torch.arange(ids.numel(), device=ids.device)[None])
                self.layers_forward(self.embed[ids][None], cos[0][:, None], sin[0][:, None],
                                    lambda i, q, k, v: F.scaled_dot_product_attention(
                                        q, k.transpose(1, 2), v.transpose(1, 2), is_causal=True,
                                        enable_gqa=self.nh != self.nkv))
        finally:
            self.layers = kept

    def _input_max(self, ids: Tensor) -> list[dict[int, Tensor]]:
        """Per layer and fused matrix (index in the layer tuple): each input channel's largest magnitude over
        ``ids`` (:meth:`tap_inputs`: one causal pass through the fp32 layers, from position 0)."""
        seen: list[dict[int, Tensor]] = [{} for _ in self.layers]

        def keep(i: int, j: int, x: Tensor) -> None:
            m = x.abs().amax(0)
            seen[i][j] = torch.maximum(seen[i][j], m) if j in seen[i] else m

        self.tap_inputs(torch.as_tensor(ids), keep)
        return seen

    @staticmethod
    def supports(model: torch.nn.Module) -> bool:
        cfg = getattr(model, "config", None)
        if getattr(cfg, "model_type", None) != "llama" or hasattr(model, "peft_config"):
            return False
        if getattr(cfg, "hidden_act", "silu") != "silu" or getattr(cfg, "pretraining_tp", 1) != 1:
            return False
        lin = [m for n, m in model.get_decoder().named_modules() if n.endswith("_proj")]
        return bool(lin) and all(type(m) is torch.nn.Linear and m.bias is None for m in lin)

    def layers_forward(self, x: Tensor, cos: Tensor, sin: Tensor,
                       attend: Callable[[int, Tensor, Tensor, Tensor], Tensor]) -> Tensor:
        """``x [B, n, D]`` (new tokens' embeddings) through every layer; returns the hidden states before the
        final norm. ``cos``/``sin`` broadcast to ``[B, n, 1, hd]`` (the new tokens' positions). Where the
        keys/values live is the caller's: ``attend(layer, q [B, nh, n, hd], k [B, n, nkv, hd],
        v [B, n, nkv, hd])`` stores the new k/v and returns the attention output ``[B, nh, n, hd]``."""
        B, n, D = x.shape
        nh, nkv, hd, half, rows, dt = self.nh, self.nkv, self.hd, self.hd // 2, B * n, x.dtype
        # The matrices run on [rows, in] and may give bf16 (the int8 kernel's output); the rotary's and the
        # residual's fp32 operands promote it exactly, so no cast back is needed (see _rows_fn).
        # Rotary (half-split layout): rotate_half(t) * sin == roll(t, half) * sin with its first half negated,
        # bit for bit, in 4 ops a layer instead of 7.
        sin = torch.cat((-sin[..., :half], sin[..., half:]), -1)
        for i, (n1, qkv, o, n2, gate_up, down) in enumerate(self._run):
            y = qkv(F.rms_norm(x, (D,), n1, self.eps).view(rows, D)).view(B, n, nh + 2 * nkv, hd)
            qk = y[:, :, : nh + nkv]
            qk = qk * cos + qk.roll(half, -1) * sin
            att = attend(i, qk[:, :, :nh].transpose(1, 2).to(dt), qk[:, :, nh:].to(dt), y[:, :, nh + nkv:].to(dt))
            x = x + o(att.transpose(1, 2).reshape(rows, nh * hd)).view(B, n, D)
            g, u = gate_up(F.rms_norm(x, (D,), n2, self.eps).view(rows, D)).to(dt).chunk(2, -1)
            x = x + down(F.silu(g) * u).view(B, n, D)
        return x.to(dt)

    @torch.no_grad()
    def prefill(self, ids: Tensor):
        """A prompt ``ids`` (``[T]``, from position 0) through this loop: ``(cache, hidden)``, its K/V as a
        transformers ``DynamicCache`` (what :meth:`start` and :meth:`start_batch` copy in, and what transformers
        can go on from) and the last token's final-norm hidden state ``[D]``. With int8 layers built with
        ``bf16_prompt``, the prompt's matrices run on bf16 copies of the weights (:class:`Int8Linear` ``bulk``)."""
        from transformers import DynamicCache

        ids = torch.as_tensor(ids).flatten().to(self.embed.device)
        if not ids.numel():
            raise ValueError("prefill needs at least one token")
        cache = DynamicCache()
        cos, sin = self.rotary(self.embed[:1], torch.arange(ids.numel(), device=ids.device)[None])

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            k, v = cache.update(k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous(), i)
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=self.nh != self.nkv)

        x = self.layers_forward(self.embed[ids][None], cos[0][:, None], sin[0][:, None], attend)
        return cache, F.rms_norm(x[0, -1], (x.shape[-1],), self.norm, self.eps)

    def start(self, cache, length: int, max_len: int) -> _FusedState:
        """Per-sequence state after a prompt of ``length`` tokens whose K/V are in ``cache`` (transformers')."""
        return _FusedState(self, cache, length, max_len)

    def start_batch(self, cache, length: int, max_len: int, rows: int) -> _FusedBatch:
        """``rows`` sequences that share one prompt (its K/V in ``cache``, computed once) and go on apart."""
        return _FusedBatch(self, cache, length, max_len, rows)


class _FusedState:
    def __init__(self, f: FusedStep, cache, length: int, max_len: int):
        self.f, self.t, self.max_len = f, length, max_len
        p = f.embed
        self.k = torch.zeros(len(f.layers), 1, f.nkv, max_len, f.hd, dtype=p.dtype, device=p.device)
        self.v = torch.zeros_like(self.k)
        for i, layer in enumerate(cache.layers):
            self.k[i, :, :, :length], self.v[i, :, :, :length] = layer.keys, layer.values
        cos, sin = f.rotary(self.k, torch.arange(max_len, device=p.device)[None])
        self.cos, self.sin = cos[0], sin[0]  # [max_len, hd]

    def step(self, token: int) -> Tensor:
        """Feed one token; returns the final-norm hidden state ``[D]`` (what the LM head reads)."""
        f, t = self.f, self.t
        if t >= self.max_len:
            raise RuntimeError(f"FusedStep state is full ({self.max_len} positions)")

        if f.native_rows(1):
            x = f.native_forward(f.embed[token].view(1, 1, -1), self.k, self.v, torch.tensor([[t]]), self.cos,
                                 self.sin, None, t + 1)
            self.t = t + 1
            return F.rms_norm(x, (x.shape[-1],), f.norm, f.eps)[0, -1]

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            self.k[i, 0, :, t], self.v[i, 0, :, t] = k[0, 0], v[0, 0]
            return F.scaled_dot_product_attention(q, self.k[i, :, :, : t + 1], self.v[i, :, :, : t + 1],
                                                  enable_gqa=f.nh != f.nkv)

        x = f.layers_forward(f.embed[token].view(1, 1, -1), self.cos[t], self.sin[t], attend)
        self.t = t + 1
        return F.rms_norm(x, (x.shape[-1],), f.norm, f.eps)[0, -1]

    def step_many(self, tokens: list[int]) -> Tensor:
        """Feed several tokens in one pass (causal among themselves); returns the last one's final-norm
        hidden state ``[D]``. On CPU a few rows cost about what one does (the weights are read once), so an
        aligned-TTS word of n tokens costs one step, not n."""
        if len(tokens) == 1:
            return self.step(int(tokens[0]))
        f, t, n = self.f, self.t, len(tokens)
        if not n or t + n > self.max_len:
            raise RuntimeError(f"FusedStep state is full ({self.max_len} positions) or no tokens given")
        pos = torch.arange(t + n, device=f.embed.device)
        mask = pos[None, :] <= pos[t:, None]  # [n, t+n]: each new token sees the past and itself
        if f.native_rows(n):
            x = f.embed[torch.tensor(tokens, device=f.embed.device)].view(1, n, -1)
            x = f.native_forward(x, self.k, self.v, pos[t:].view(1, n), self.cos, self.sin, mask, t + n)
            self.t = t + n
            return F.rms_norm(x, (x.shape[-1],), f.norm, f.eps)[0, -1]

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            self.k[i, 0, :, t : t + n], self.v[i, 0, :, t : t + n] = k[0].transpose(0, 1), v[0].transpose(0, 1)
            return F.scaled_dot_product_attention(q, self.k[i, :, :, : t + n], self.v[i, :, :, : t + n],
                                                  attn_mask=mask, enable_gqa=f.nh != f.nkv)

        x = f.embed[torch.tensor(tokens, device=f.embed.device)].view(1, n, -1)
        x = f.layers_forward(x, self.cos[t : t + n, None], self.sin[t : t + n, None], attend)
        self.t = t + n
        return F.rms_norm(x, (x.shape[-1],), f.norm, f.eps)[0, -1]


class _FusedBatch:
    """Several sequences after one shared prompt, decoded side by side: each step feeds every row its own
    tokens (none, one, or a word's few) in one pass of ``[rows, n]`` (padded to the longest feed).

    Why: decoding reads every weight once per step whatever the rows, so on CPU two rows cost far less than
    two steps (the int8 kernel: ~1.3x the time of one row for two). Best-of-N TTS draws its candidates this
    way. Each row has its own position; a row's padding writes K/V at positions it has not reached, which
    its next real tokens overwrite, and no real query attends past its own position."""

    def __init__(self, f: FusedStep, cache, length: int, max_len: int, rows: int):
        self.f, self.max_len = f, max_len
        p = f.embed
        self.t = torch.full((rows,), length, dtype=torch.long, device=p.device)
        self.k = torch.zeros(len(f.layers), rows, f.nkv, max_len, f.hd, dtype=p.dtype, device=p.device)
        self.v = torch.zeros_like(self.k)
        for i, layer in enumerate(cache.layers):
            self.k[i, :, :, :length], self.v[i, :, :, :length] = layer.keys, layer.values
        self.shared = length  # positions every row holds alike (the prompt)
        cos, sin = f.rotary(self.k[0], torch.arange(max_len, device=p.device)[None])
        self.cos, self.sin = cos[0], sin[0]  # [max_len, hd]

    def adopt(self, b: int) -> None:
        """Every row continues from row ``b``: its K/V (the positions it has written after the prompt, which all
        rows hold alike) and its position."""
        t, p = int(self.t[b]), self.shared
        for buf in (self.k, self.v):  # broadcast over the rows; later positions get written
            buf[:, :, :, p:t] = buf[:, b : b + 1, :, p:t].clone()
        self.t.fill_(t)
        self.shared = t  # every row now holds positions below t alike

    def step(self, feeds: list[list[int]]) -> Tensor:
        """Feed row b the tokens ``feeds[b]`` (may be empty: that row stays where it is); returns each row's
        final-norm hidden state after its last fed token ``[rows, D]`` (rows fed nothing: meaningless)."""
        f, rows = self.f, len(feeds)
        if rows != self.t.numel():
            raise ValueError(f"{len(feeds)} feeds for {self.t.numel()} rows")
        n = max(1, max(len(x) for x in feeds))
        lens = torch.tensor([len(x) for x in feeds], device=self.t.device)
        at = self.t[:, None] + torch.arange(n, device=self.t.device)  # [rows, n] positions written
        if int(at.max()) >= self.max_len:
            raise RuntimeError(f"FusedStep batch state is full ({self.max_len} positions)")
        tok = torch.tensor([list(x) + [0] * (n - len(x)) for x in feeds], device=f.embed.device)
        span = int(at.max()) + 1
        mask = (torch.arange(span, device=at.device) <= at[:, :, None])[:, None]  # [rows, 1, n, span]
        r = torch.arange(rows, device=at.device)[:, None]

        def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
            self.k[i][r, :, at], self.v[i][r, :, at] = k, v  # [rows, n, nkv, hd]
            return F.scaled_dot_product_attention(q, self.k[i, :, :, :span], self.v[i, :, :, :span],
                                                  attn_mask=mask, enable_gqa=f.nh != f.nkv)

        if f.native_rows(rows * n):
            x = f.native_forward(f.embed[tok], self.k, self.v, at, self.cos, self.sin, mask, span, self.shared)
        else:
            x = f.layers_forward(f.embed[tok], self.cos[at][:, :, None], self.sin[at][:, :, None], attend)
        self.t = self.t + lens
        last = x[torch.arange(rows, device=x.device), (lens - 1).clamp_min(0)]
        return F.rms_norm(last, (last.shape[-1],), f.norm, f.eps)


_MATRICES = (1, 2, 4, 5)  # where a FusedStep layer tuple holds its matrices (qkv, o, gate_up, down)
# Which of them take int8 activations in the "w8a8" mode: qkv and gate_up (~2/3 of the weights). o and down stay
# weight-only: their inputs (attention outputs; silu(gate) * up, with a few huge channels) round worst to one
# activation scale. On the bundle they gave over half of w8a8's divergence from fp32 (docs/results/int8_w8a8).
_W8A8 = (1, 4)


def _rows_fn(m: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """A :class:`FusedStep` matrix slot as the function its loop calls on ``[rows, in]``: an :class:`Int8Linear`'s
    :meth:`~Int8Linear.rows_kernel`, an ``nn.Linear``'s ``F.linear`` (no module call), anything else as it is."""
    if isinstance(m, Int8Linear):
        return m.rows_kernel()
    if type(m) is torch.nn.Linear:
        return lambda x: F.linear(x, m.weight, m.bias)
    return m


def _fuse(linears: list[torch.nn.Linear]) -> torch.nn.Linear:
    """One Linear over the concatenated rows of ``linears``; theirs become views of it."""
    w = torch.cat([m.weight.detach() for m in linears]) if len(linears) > 1 else linears[0].weight.detach()
    fused = torch.nn.Linear(w.shape[1], w.shape[0], bias=False, device=w.device, dtype=w.dtype)
    fused.weight = torch.nn.Parameter(w, requires_grad=False)
    start = 0
    for m in linears:
        n = m.weight.shape[0]
        m.weight = torch.nn.Parameter(w[start: start + n], requires_grad=False)
        start += n
    return fused


def _positions(allowed: Tensor, vocab: int) -> Tensor:
    """``[V]`` position of each id inside ``allowed`` (-1 where not allowed)."""
    pos = torch.full((vocab,), -1, dtype=torch.long)
    pos[allowed.cpu()] = torch.arange(allowed.numel())
    return pos


def _pick(logits: Tensor, allowed: Tensor, pos: Tensor, s: Sampling, recent: list[int],
          gen: torch.Generator | None, subset: Tensor | None = None) -> int:
    """Sample one id. ``logits`` ``[A]`` are those of ``allowed`` (``[A]`` ids, ``pos`` maps ids to their
    index); ``subset`` (indices into ``allowed``) narrows the choice further. The repetition penalty is
    applied to the recent ids that are allowed (penalising others could not change the draw); sampling
    runs on ~1k audio ids instead of the whole ~50k vocabulary."""
    window = recent[-s.repetition_window:]
    if s.repetition_penalty != 1.0 and window:
        idx = pos[torch.tensor(sorted(set(window)))]
        idx = idx[idx >= 0].to(logits.device)
        if idx.numel():
            v = logits[idx]
            logits = logits.clone()
            logits[idx] = torch.where(v > 0, v / s.repetition_penalty, v * s.repetition_penalty)
    if subset is not None:
        logits, allowed = logits[subset], allowed[subset]
    return int(allowed[int(sample(logits[None], s.temperature, s.top_k, s.top_p, gen)[0])])


def fast_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` multiplies bfloat16 matrices natively (CUDA with bf16; a CPU with AVX512-BF16 or AMX).
    Elsewhere bf16 matmuls are emulated and slower than float32."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if dev.type != "cpu":
        return False
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, c, lambda: False)()) for c in checks)


INT8_MODES = ("weights", "w8a8")


def int8_mode(int8: bool | str | None) -> str | None:
    """An int8 decoding setting as a mode: False/None: None (fp32); True or ``"weights"``: int8 weights with bf16
    activations (:class:`Int8Linear`); ``"w8a8"``: int8 activations as well, where they round well (a Llama backbone's
    qkv and gate_up matrices; every matrix of other backbones). Anything else: a clear error."""
    if int8 is None or int8 is False:
        return None
    if int8 is True:
        return "weights"
    if isinstance(int8, str) and int8 in INT8_MODES:
        return int8
    raise ValueError(f"int8 must be true/false or one of {', '.join(INT8_MODES)}, got {int8!r}")


# Above this many rows an int8 layer with a bf16 copy of its weights (FusedStep's bf16_prompt, on CPUs that multiply
# bf16 natively) multiplies on the copy: see Int8Linear. The same in both loops, with torch's int8 kernel or the
# native loop's own (docs/results/vnni_step: 10 rows on the own kernel gained no measurable speed and no accuracy).
BF16_BULK_ROWS = 4


def native_int8_rows(max_rows: int) -> int:
    """The row limit of the native loop's int8 matmul: the matrices' ``max_rows``, or ``SLM_NATIVE_INT8_ROWS``
    where set (passes of more rows take the bf16 copies where the matrices have them)."""
    env = os.environ.get("SLM_NATIVE_INT8_ROWS", "").strip()
    if not env:
        return max_rows
    try:
        rows = int(env)
    except ValueError:
        rows = 0
    if rows < 1:
        raise ValueError(f"SLM_NATIVE_INT8_ROWS must be a positive whole number of rows, got {env!r}")
    return rows


class Int8Linear(torch.nn.Module):
    """Int8 form of an ``nn.Linear`` for few-row decoding on CPU (opt-in, approximate).

    Decoding one token reads every weight once, so its time is mostly memory traffic: int8 weights
    (symmetric, one scale per output row) with bf16 activations through torch's fused CPU kernel
    (``torch._weight_int8pack_mm``) halve SmolLM2-135M's per-token matmul time here, where bf16 weights
    alone are no faster than fp32. Up to ``max_rows`` rows (a word fed at once, best-of candidates side by
    side) take the int8 kernel too; more rows at once (the prompt) run on the kept fp32 weights, or on a bf16
    copy (``bulk_dtype``, where the CPU multiplies bf16 natively). ``max_rows`` (None: the default for the form)
    is 32 over fp32 weights (at 32 rows the int8 kernel is still ~2x faster than fp32 GEMM here) and
    :data:`BF16_BULK_ROWS` (4) over a bf16 copy: the int8 kernel works in blocks of 4 rows, each costing about
    what the first did, where AMX's bf16 GEMM barely grows with the rows, so from 5 rows on the bf16 copy is
    faster (one step's four matrices: 1.3x at 5-8 rows, 1.9x at 10-12; docs/results/native_step). The native
    loop's own int8 kernel (AVX512-VNNI or AMX: :func:`slm.native.int8_mm`) keeps the same threshold.

    ``activations`` (the ``"w8a8"`` mode): the input is quantized to int8 too, one scale per call, and the
    product runs in integers (``quantized::linear_dynamic``, fbgemm; VNNI where the CPU has it). Why: the
    weight-only kernel's time grows with the rows (two rows ~1.2x one, eight ~2.5x), where the integer kernel's
    barely does (eight rows ~1.1x), so best-of candidates side by side and whole words fed at once cost
    little more than one token. Its logits are further from fp32 than the weight-only kernel's, most for inputs
    with a few huge channels, so :class:`FusedStep` gives it only qkv and gate_up (docs/results/int8_w8a8).

    ``act_max`` (with ``activations``; each input channel's largest magnitude on calibration tokens): the
    input channels are smoothed before rounding, SmoothQuant-style: channel j is divided by
    ``s_j = sqrt(act_max_j / max_i |w_ij|)`` and the weights' column j multiplied by it (the same product in
    exact arithmetic), so a few large-valued channels no longer set the one activation scale alone. On the
    bundle it halves w8a8's divergence from the fp32 logits (docs/results/int8_w8a8)."""

    def __init__(self, linear: torch.nn.Linear, max_rows: int | None = None, activations: bool = False,
                 act_max: Tensor | None = None, bulk_dtype: torch.dtype | None = None):
        super().__init__()
        if max_rows is None:
            max_rows = BF16_BULK_ROWS if bulk_dtype == torch.bfloat16 and not activations else 32
        w = linear.weight.detach().float()
        self.dense, self.max_rows, self.packed, self.inv = linear, max_rows, None, None
        # more rows than max_rows (the prompt) on a copy in bulk_dtype (bf16 where the CPU multiplies it natively:
        # 1.7x fp32 GEMM on a prompt); None: on the kept fp32 weights
        self.bulk = None if bulk_dtype is None else w.to(bulk_dtype).contiguous()
        if act_max is not None and not activations:
            raise ValueError("act_max smooths int8 activations: give it with activations=True")
        if activations:
            engines = torch.backends.quantized.supported_engines
            if not {"x86", "fbgemm"} & set(engines):
                raise RuntimeError(f"int8 activations (w8a8) need torch's x86/fbgemm quantized engine; this torch "
                                   f"has {engines}: use int8 weights only")
            if act_max is not None:
                if act_max.shape != (w.shape[1],):
                    raise ValueError(f"act_max has shape {tuple(act_max.shape)}, the layer {w.shape[1]} inputs")
                sm = (act_max.float().clamp_min(1e-5) / w.abs().amax(0).clamp_min(1e-5)).sqrt().clamp(1e-3, 1e3)
                w, self.inv = w * sm, (1 / sm).to(w.device)
            scale = w.abs().amax(1).clamp_min(1e-12) / 127
            q = torch.quantize_per_channel(w, scale.double(), torch.zeros(w.shape[0], dtype=torch.long), 0,
                                           torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(q, None)  # weights in the kernel's own layout
            return
        scale = (w.abs().amax(1).clamp_min(1e-12) / 127).to(torch.bfloat16)  # the kernel takes bf16 scales
        self.register_buffer("qweight", torch.round(w / scale.float()[:, None]).clamp(-127, 127).to(torch.int8)
                             .contiguous(), persistent=False)
        self.register_buffer("scale", scale, persistent=False)

    @property
    def weight(self) -> Tensor:
        """The kept fp32 weight (what callers asking a layer for its device or dtype read)."""
        return self.dense.weight

    def rows_kernel(self) -> Callable[[Tensor], Tensor]:
        """This layer as a function of ``[rows, in]`` giving ``[rows, out]`` in the kernel's own dtype (bf16 from
        the weight-only kernel; fp32 with int8 activations or on the kept fp32 weights): what
        :class:`FusedStep`'s loop calls, and :meth:`forward` between a reshape and a cast back. Called directly,
        without the module call, reshape and cast back, a one-row int8 decoding step ran 1.15x faster
        (docs/results/fused_step_calls)."""
        lim, bias, bulk = self.max_rows, self.dense.bias, self.bulk
        if bulk is None:
            dense = self.dense
        else:
            bulk_bias = None if bias is None else bias.to(bulk.dtype)

            def dense(x: Tensor) -> Tensor:
                return F.linear(x.to(bulk.dtype), bulk, bulk_bias) if x.is_cpu else self.dense(x)
        if self.packed is not None:
            packed, inv, qlin = self.packed, self.inv, torch.ops.quantized.linear_dynamic

            def run(x: Tensor) -> Tensor:  # int8 x int8; reduce_range off: full 8-bit activations (no VNNI overflow)
                if x.shape[0] > lim or not x.is_cpu:
                    return dense(x)
                x = x.float()
                y = qlin(x if inv is None else x * inv, packed, False)
                return y if bias is None else y + bias
        else:
            qweight, scale, mm = self.qweight, self.scale, torch._weight_int8pack_mm

            def run(x: Tensor) -> Tensor:
                if x.shape[0] > lim or not x.is_cpu:
                    return dense(x)
                y = mm(x.to(torch.bfloat16), qweight, scale)
                return y if bias is None else y + bias
        return run

    def forward(self, x: Tensor) -> Tensor:
        return self.rows_kernel()(x.reshape(-1, x.shape[-1])).to(x.dtype).view(*x.shape[:-1], -1)


def quantize_int8(model: torch.nn.Module, activations: bool = False) -> int:
    """Swap every ``nn.Linear`` of ``model``'s decoder body (not the output projection) for
    :class:`Int8Linear` (``activations``: the w8a8 form), in place; returns how many. A module without a decoder
    body (the acoustic head) has all its plain ``nn.Linear`` swapped (attention's packed input projection is not
    one). For a copy used only to generate."""
    if not hasattr(torch, "_weight_int8pack_mm"):
        raise RuntimeError(f"int8 decoding needs torch._weight_int8pack_mm (torch {torch.__version__} lacks it)")
    body = model.get_decoder() if hasattr(model, "get_decoder") else model
    targets = [(n, m) for n, m in body.named_modules() if type(m) is torch.nn.Linear]
    for name, lin in targets:
        parent, _, attr = name.rpartition(".")
        setattr(body.get_submodule(parent) if parent else body, attr, Int8Linear(lin, activations=activations))
    return len(targets)


def inference_copy(lm: torch.nn.Module, int8: bool | str = False, calibration: Tensor | None = None,
                   bf16_prompt: bool | None = None) -> torch.nn.Module:
    """A plain copy of ``lm`` to generate with: a peft adapter (LoRA + trained token rows) merged into the
    weights, no grads, a :class:`FusedStep` attached for Llama backbones; ``int8`` (True, ``"weights"`` or
    ``"w8a8"``: :func:`int8_mode`): int8 matmuls for decoding (:class:`Int8Linear`); ``calibration``: token ids
    that smooth w8a8's activations; ``bf16_prompt`` (with int8; None: where the CPU multiplies bf16 natively):
    prompts through the fused loop on bf16 weights (both :class:`FusedStep`). Returns ``lm`` itself when there
    is nothing to do.

    Why merge: peft's wrappers cost per step: every LoRA projection runs two extra matmuls and the
    trainable-token layer rebuilds the whole ~50k x 576 embedding on every forward (twice: tied input
    and output); merged, SmolLM2-135M decodes ~2-3x faster. Logits differ by float rounding only."""
    import copy

    mode = int8_mode(int8)
    if not hasattr(lm, "merge_and_unload") and not mode and not FusedStep.supports(lm):
        return lm
    out = copy.deepcopy(lm)
    out = out.merge_and_unload() if hasattr(out, "merge_and_unload") else out
    out.eval()
    for p in out.parameters():
        p.requires_grad_(False)
    if FusedStep.supports(out):
        out.fused_step = FusedStep(out, mode, calibration, bf16_prompt)  # int8 goes to its fused matrices
    elif mode:
        quantize_int8(out, mode == "w8a8")
    return out


def generate_frames(model: torch.nn.Module, layout: TokenLayout, prompt: Tensor, head: AcousticHead | None,
                    sampling: Sampling, max_frames: int, voice: Tensor | None = None,
                    generator: torch.Generator | None = None, min_frames: int = 1,
                    words: list[list[int]] | None = None,
                    max_word_frames: int | list[int] | None = None,
                    past_acoustic: list[Tensor] | None = None,
                    uncond_prompt: Tensor | None = None) -> Iterator[Frame]:
    """Generate semantic frames after ``prompt`` (which ends inside an audio span) until
    ``<|audio_end|>`` or ``max_frames``; the head turns each frame into acoustic codes on the fly.

    Only semantic tokens and ``<|audio_end|>`` can be sampled (``<|audio_end|>`` not before ``min_frames``).

    ``words`` (token ids of each word): aligned TTS (slm.templates.tts_aligned_example). The first word is
    fed after the prompt; then at each step the model chooses between another frame of the current word
    and the first token of the next one (the rest of that word is fed, not sampled); ``<|audio_end|>``
    only after the last word. Every word gets at least one frame and at most ``max_word_frames`` (one
    number for all, or one per word; then the next word is fed, or the sentence ends).

    A head with acoustic context sees the codes of the frames before (``past_acoustic``: the frames of
    the same audio span already in the prompt, e.g. a continuation's, ``[L]`` each; then its own).

    ``uncond_prompt`` (with ``sampling.cfg_scale != 1``): classifier-free guidance. A second decoder reads the
    same frames after this prompt (the continuation form: audio without the text) and the semantic logits
    become ``c + (scale - 1)(c - u)`` in log-probabilities over the semantic ids; how likely it is to move
    to the next word or end stays the conditional model's. Until the unconditional stream has seen a frame
    (no voice prompt) there is nothing to guide with, so the first frame is the conditional model's."""
    sp = _FramePlan(model, layout, prompt, max_frames, min_frames, words, max_word_frames)
    prompt, allowed, pos, sem, leave = sp.prompt, sp.allowed, sp.pos, sp.sem, sp.leave
    dec = Decoder(model, prompt, allowed, max_new=sp.max_new)
    guide = uncond_prompt is not None and sampling.cfg_scale != 1.0
    udec = Decoder(model, uncond_prompt, allowed, need_hidden=False, max_new=max_frames) if guide else None
    # the continuation form trains no prediction of its first frame: guide once one is there
    u_ready = guide and int(layout.is_semantic(uncond_prompt).sum()) > 0

    def logits() -> Tensor:
        return _guided(dec.logits, udec.logits, sem, sampling.cfg_scale) if u_ready else dec.logits

    recent: list[int] = []
    k, in_word = 0, 0  # current word, its frames so far
    hist = FrameContext(head.cfg.context, head.cfg.frame_len) if head is not None else None
    for f in past_acoustic or []:
        hist.push(f)
    for n in range(max_frames):
        tok = sp.choose(logits, sampling, recent, generator, n, k, in_word)
        if words is not None and tok == leave[k] and tok != layout.audio_end:
            k, in_word = k + 1, 0
            dec.push_many(words[k])  # the whole word in one pass
            tok = _pick(logits(), allowed, pos, sampling, recent, generator, sem)  # its first frame
        if tok == layout.audio_end:
            return
        code = tok - layout.semantic_offset
        acoustic = None
        if head is not None:
            h = dec.hidden[None].to(head.in_proj.weight.dtype)
            ctx = hist.tensor()
            acoustic = head.generate(h, torch.tensor([code], device=h.device), voice, sampling.head_temperature,
                                     sampling.head_top_k, generator, None if ctx is None else ctx.to(h.device))[0]
            hist.push(acoustic)
        yield Frame(code, acoustic, dec.hidden, k)
        recent.append(tok)
        in_word += 1
        if n + 1 < max_frames:
            dec.push(tok)
            if udec is not None:
                udec.push(tok)
                u_ready = True


class _FramePlan:
    """What :func:`generate_frames` and :func:`generate_candidates` decide before the first frame: the prompt
    (with an aligned sentence's first word), the ids that may be sampled and, per word, its frame cap and its
    way out (the next word's first token; ``<|audio_end|>`` after the last)."""

    def __init__(self, model: torch.nn.Module, layout: TokenLayout, prompt: Tensor, max_frames: int,
                 min_frames: int, words: list[list[int]] | None, max_word_frames: int | list[int] | None):
        if max_frames <= 0:
            raise ValueError(f"max_frames must be > 0, got {max_frames}")
        vocab = model.get_input_embeddings().weight.shape[0]
        mask = layout.audio_mask(vocab)
        if words is not None:
            if not words or not all(words):
                raise ValueError(f"words must be a non-empty list of non-empty token-id lists, got {words!r}")
            if len(words) > 1:
                mask[torch.tensor([w[0] for w in words[1:]])] = True
            prompt = torch.cat([prompt.cpu(), torch.tensor(words[0], dtype=torch.long)])
        self.prompt, self.words, self.max_frames, self.min_frames = prompt, words, max_frames, min_frames
        self.allowed = mask.nonzero().flatten()
        self.pos = _positions(self.allowed, vocab)
        self.early = (self.allowed != layout.audio_end).nonzero().flatten()  # positions without <|audio_end|>
        self.sem = layout.is_semantic(self.allowed).nonzero().flatten()
        self.caps = (list(max_word_frames) if isinstance(max_word_frames, (list, tuple))
                     else [max_word_frames or max_frames] * len(words or []))
        if words is not None and len(self.caps) != len(words):
            raise ValueError(f"max_word_frames has {len(self.caps)} entries for {len(words)} words")
        self.leave = [w[0] for w in (words or [])[1:]] + [layout.audio_end]
        self.or_leave = [torch.cat([self.sem, self.pos[t : t + 1]]) for t in self.leave[: len(words or [])]]
        self.max_new = max_frames + sum(len(w) for w in (words or [[]])[1:])  # tokens fed after the prompt
        # a frame budget the backbone's context could never hold is a request error, not a buffer to allocate (the
        # budget is an upper bound: the words' tokens and an early end are left to the decoding)
        ctx = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if ctx and prompt.numel() + max_frames > ctx:
            raise ValueError(f"{max_frames} frames after a {prompt.numel()}-token prompt exceed the backbone's context "
                             f"of {ctx} positions: at most {max(ctx - prompt.numel(), 0)} frames fit; ask for fewer "
                             "seconds")

    def choose(self, logits, s: Sampling, recent: list[int], gen: torch.Generator | None, made: int, k: int,
               in_word: int) -> int:
        """The next token of a sequence that has ``made`` frames, is in word ``k`` with ``in_word`` frames of it:
        a frame, or (aligned) the next word's first token / ``<|audio_end|>``. ``logits``: a callable giving
        the allowed ids' logits (called only when something is sampled)."""
        if self.words is None:
            return _pick(logits(), self.allowed, self.pos, s, recent, gen, self.early if made < self.min_frames else None)
        if in_word >= self.caps[k]:  # this word has had its frames: on to the next one, or the end
            return self.leave[k]
        # a word gets one frame before it may be left, and the last one not before min_frames
        stay = in_word == 0 or (k == len(self.words) - 1 and made < self.min_frames)
        return _pick(logits(), self.allowed, self.pos, s, recent, gen, self.sem if stay else self.or_leave[k])


def generate_candidates(model: torch.nn.Module, layout: TokenLayout, prompt: Tensor, head: AcousticHead | None,
                        sampling: Sampling, max_frames: int, n: int, voice: Tensor | None = None,
                        generator: torch.Generator | None = None, min_frames: int = 1,
                        words: list[list[int]] | None = None,
                        max_word_frames: int | list[int] | None = None,
                        uncond_prompt: Tensor | None = None) -> list[list[Frame]]:
    """``n`` independent draws of :func:`generate_frames`' frames (same arguments), for best-of-N TTS.

    With a :class:`FusedStep` (Llama backbones after :func:`inference_copy`) the ``n`` candidates decode side
    by side (:class:`_FusedBatch`): the prompt runs once and every step feeds all rows in one pass, the
    acoustic head too; each row follows generate_frames' rules (its own words, caps, repetition window and
    end). The random draws interleave across rows, so a candidate is not the frames generate_frames gives for
    the same seed, but the same seed gives the same candidates. Otherwise (other backbones, peft wrappers,
    guidance) the candidates are drawn one after another."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not _side_by_side(model, sampling, uncond_prompt) or n == 1:
        return [list(generate_frames(model, layout, prompt, head, sampling, max_frames, voice, generator,
                                     min_frames, words, max_word_frames, uncond_prompt=uncond_prompt))
                for _ in range(n)]
    rows = _Rows(model, layout, _FramePlan(model, layout, prompt, max_frames, min_frames, words, max_word_frames),
                 head, sampling, n, voice, generator)
    rows.run()
    return rows.out


def generate_best(model: torch.nn.Module, layout: TokenLayout, prompt: Tensor, head: AcousticHead | None,
                  sampling: Sampling, max_frames: int, n: int, score: Callable[[list[Frame], int | None], float],
                  every: int = 0, voice: Tensor | None = None, generator: torch.Generator | None = None,
                  min_frames: int = 1, words: list[list[int]] | None = None,
                  max_word_frames: int | list[int] | None = None,
                  uncond_prompt: Tensor | None = None) -> Iterator[Frame]:
    """Best-of-``n`` frames, chosen as they go: ``n`` rows decode side by side (:func:`generate_candidates`)
    and, in the aligned form with ``every > 0``, stop each time they have spoken ``every`` more words. Then
    ``score(frames, words_spoken)`` (higher is better) ranks each row's frames so far, the best row's new frames
    are yielded (so speech can stream), and every row goes on from that row's state (its K/V, word, repetition
    window and acoustic context), drawing anew. At the end of the sentence (``words_spoken`` None) the rows are
    ranked once more. ``every == 0`` (or the plain form, or no side-by-side decoding): one choice per sentence,
    among whole candidates.

    Why: choosing once per sentence makes the first audio wait for the whole sentence's ``n`` candidates; and a
    sentence's one bad word sinks a candidate whose other words were good, where a choice every few words
    keeps the good parts of each."""
    nw = len(words or [])
    if n == 1:
        yield from generate_frames(model, layout, prompt, head, sampling, max_frames, voice, generator,
                                   min_frames=min_frames, words=words, max_word_frames=max_word_frames,
                                   uncond_prompt=uncond_prompt)
        return
    if not (every > 0 and nw > every and _side_by_side(model, sampling, uncond_prompt)):
        cands = generate_candidates(model, layout, prompt, head, sampling, max_frames, n, voice, generator,
                                    min_frames=min_frames, words=words, max_word_frames=max_word_frames,
                                    uncond_prompt=uncond_prompt)
        scores = [score(c, None) for c in cands]
        yield from cands[max(range(n), key=scores.__getitem__)]
        return
    rows = _Rows(model, layout, _FramePlan(model, layout, prompt, max_frames, min_frames, words, max_word_frames),
                 head, sampling, n, voice, generator)
    done: list[Frame] = []
    spoken: int | None = every
    while True:
        rows.run(spoken)
        scores = [score(done + o, spoken) for o in rows.out]
        b = max(range(n), key=scores.__getitem__)
        yield from rows.out[b]
        done += rows.out[b]
        if spoken is None or not rows.live[b]:
            return
        rows.adopt(b)
        spoken = spoken + every if spoken + every < nw else None


def _side_by_side(model: torch.nn.Module, sampling: Sampling, uncond_prompt: Tensor | None) -> bool:
    """Whether candidates can decode as one batch: a FusedStep backbone and no guidance."""
    return getattr(model, "fused_step", None) is not None and (uncond_prompt is None or sampling.cfg_scale == 1.0)


class _Rows:
    """``n`` draws of one sentence's frames, decoded side by side through a :class:`_FusedBatch`: each row its own
    words, caps, repetition window, acoustic context and end. :meth:`run` decodes until every row has ended or
    waits at a word; :meth:`adopt` makes every row a copy of one."""

    def __init__(self, model: torch.nn.Module, layout: TokenLayout, sp: _FramePlan, head: AcousticHead | None,
                 sampling: Sampling, n: int, voice: Tensor | None, generator: torch.Generator | None):
        self.layout, self.sp, self.head, self.s, self.n, self.voice, self.gen = layout, sp, head, sampling, n, voice, generator
        dec = Decoder(model, sp.prompt, sp.allowed)  # the prompt, once (its own projection and cache)
        if dec.rows is None:  # pragma: no cover - a fused model is a plain Llama, whose logits are its projection
            raise RuntimeError("side-by-side decoding needs the model's output projection")
        self.proj = dec.rows
        wide = max((len(w) for w in sp.words or [[0]]), default=1)
        self.state = model.fused_step.start_batch(dec.cache, sp.prompt.numel(),
                                                  sp.prompt.numel() + sp.max_new + wide + 1, n)
        self.hid = dec.hidden[None].expand(n, -1).clone()
        self.logits = dec.logits[None].expand(n, -1)
        self.out: list[list[Frame]] = [[] for _ in range(n)]  # each row's frames since the last adopt
        self.made, self.recent = [0] * n, [[] for _ in range(n)]
        self.k, self.in_word, self.fresh, self.live = [0] * n, [0] * n, [False] * n, [True] * n
        self.hist = [FrameContext(head.cfg.context, head.cfg.frame_len) for _ in range(n)] if head is not None else None

    def run(self, wait_at: int | None = None) -> None:
        """Decode until every row has ended or (``wait_at``, aligned form) has just been fed word ``wait_at``."""
        sp, s, n, gen = self.sp, self.s, self.n, self.gen
        while True:
            feeds: list[list[int]] = [[] for _ in range(n)]
            picked: list[tuple[int, int]] = []
            for b in range(n):
                if not self.live[b] or (wait_at is not None and self.fresh[b] and self.k[b] >= wait_at):
                    continue
                if self.fresh[b]:  # a word just fed: its first frame (as generate_frames picks it right after the word)
                    tok = _pick(self.logits[b], sp.allowed, sp.pos, s, self.recent[b], gen, sp.sem)
                else:
                    tok = sp.choose(lambda b=b, lg=self.logits: lg[b], s, self.recent[b], gen, self.made[b],
                                    self.k[b], self.in_word[b])
                self.fresh[b] = False
                if sp.words is not None and tok == sp.leave[self.k[b]] and tok != self.layout.audio_end:
                    self.k[b], self.in_word[b], self.fresh[b] = self.k[b] + 1, 0, True
                    feeds[b] = list(sp.words[self.k[b]])  # the whole word in one pass, then its first frame
                elif tok == self.layout.audio_end:
                    self.live[b] = False
                else:
                    picked.append((b, tok))
            if picked:
                self._frames(picked, feeds)
            if not any(feeds):
                return
            fed = torch.tensor([bool(x) for x in feeds])
            self.hid = torch.where(fed[:, None].to(self.hid.device), self.state.step(feeds), self.hid)
            w, bias, gather = self.proj
            logits = F.linear(self.hid, w, bias).float()
            self.logits = logits[:, sp.allowed] if gather else logits

    def _frames(self, picked: list[tuple[int, int]], feeds: list[list[int]]) -> None:
        """The rows in ``picked`` (row, semantic token) make a frame each: acoustic codes by the head, all at once."""
        head, hist = self.head, self.hist
        rows = torch.tensor([b for b, _ in picked])
        codes = torch.tensor([t - self.layout.semantic_offset for _, t in picked])
        acoustic = None
        if head is not None:
            h = self.hid[rows].to(head.in_proj.weight.dtype)
            ctx = torch.cat([hist[b].tensor() for b, _ in picked]).to(h.device) if head.cfg.context else None
            acoustic = head.generate(h, codes.to(h.device), self.voice, self.s.head_temperature, self.s.head_top_k,
                                     self.gen, ctx)
        for j, (b, tok) in enumerate(picked):
            self.out[b].append(Frame(int(codes[j]), None if acoustic is None else acoustic[j], self.hid[b].clone(),
                                     self.k[b]))
            if hist is not None:
                hist[b].push(acoustic[j])
            self.recent[b].append(tok)
            self.in_word[b] += 1
            self.made[b] += 1
            if self.made[b] >= self.sp.max_frames:
                self.live[b] = False
            else:
                feeds[b] = [tok]

    def adopt(self, b: int) -> None:
        """Every row becomes a copy of row ``b`` (its K/V and position, state, word and context); frames so far
        are forgotten (``out`` empties)."""
        n = self.n
        self.state.adopt(b)
        self.hid = self.hid[b].expand(n, -1).clone()
        self.logits = self.logits[b].expand(n, -1)
        self.out = [[] for _ in range(n)]
        self.made, self.recent = [self.made[b]] * n, [list(self.recent[b]) for _ in range(n)]
        self.k, self.in_word = [self.k[b]] * n, [self.in_word[b]] * n
        self.fresh, self.live = [self.fresh[b]] * n, [self.live[b]] * n
        if self.hist is not None:
            self.hist = [self.hist[b].copy() for _ in range(n)]


def _guided(c: Tensor, u: Tensor, sem: Tensor, scale: float) -> Tensor:
    """Classifier-free guidance over the semantic positions ``sem`` of the logits ``c`` (conditional) and
    ``u`` (unconditional): ``log p_c + (scale - 1)(log p_c - log p_u)`` within the semantic ids, scaled back to
    the conditional's total semantic mass, so the choice between a frame and the next word / the end is not
    changed."""
    lc, lu = c[sem].log_softmax(-1), u[sem].log_softmax(-1)
    out = c.clone()
    out[sem] = (lc + (scale - 1.0) * (lc - lu)).log_softmax(-1) + torch.logsumexp(c[sem], -1)
    return out


def generate_text(model: torch.nn.Module, prompt: Tensor, allowed: Tensor, stop_ids: set[int],
                  max_new_tokens: int, sampling: Sampling | None = None,
                  generator: torch.Generator | None = None) -> list[int]:
    """Generate text ids after ``prompt`` restricted to ``allowed`` ``[V]``; stops at any of ``stop_ids``
    (not returned) or after ``max_new_tokens``. Greedy by default."""
    s = sampling or Sampling(temperature=0.0, top_k=0, top_p=1.0)
    mask = allowed.clone()
    for i in stop_ids:
        mask[i] = True
    allowed = mask.nonzero().flatten()
    pos = _positions(allowed, mask.numel())
    dec = Decoder(model, prompt, allowed, need_hidden=False, max_new=max_new_tokens)
    out: list[int] = []
    for n in range(max_new_tokens):
        tok = _pick(dec.logits, allowed, pos, s, out, generator)
        if tok in stop_ids:
            break
        out.append(tok)
        if n + 1 < max_new_tokens:
            dec.push(tok)
    return out


def transcribe_aligned(model: torch.nn.Module, layout: TokenLayout, codes: Tensor, max_new_tokens: int = 200,
                       max_word_tokens: int = 8, threshold: float = 0.5, word_start: Tensor | None = None,
                       max_tail_words: int = 2) -> Iterator[list[int]]:
    """Aligned ASR (slm.templates.asr_aligned_example): feed the semantic frames one by one and, after each,
    let the model write a word when it puts more than ``threshold`` of its probability on text rather than
    on the next frame; yields each word's text ids as soon as it is written (a streaming transcript).

    A word is greedy text tokens while the model keeps its mass on text (at most ``max_word_tokens``).
    ``word_start`` (``[V]`` bool, the text tokens that begin a word: a leading space, as every word of the
    aligned form has; ``SpeechPipeline`` passes its tokenizer's) keeps words apart as in training: a word's
    first token is one of them and the next one ends the word (the next word waits for its own frames), so
    the backbone's English prior cannot run on into a sentence of its own. After the last frame the words
    still owed come out, text against ``<|audio_end|>``, at most ``max_tail_words`` (training has one there).
    ``max_new_tokens`` bounds all text."""
    codes = torch.as_tensor(codes).long().flatten()
    if codes.numel() == 0:
        raise ValueError("aligned ASR needs at least one semantic frame")
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    ids = layout.codes_to_ids(codes).tolist()
    text_end, off, k = layout.base_vocab, layout.semantic_offset, layout.n_semantic
    prompt = torch.tensor([layout.special_id("asr"), layout.audio_start, ids[0]])
    dec = Decoder(model, prompt, None, need_hidden=False, max_new=len(ids) + max_new_tokens)
    starts = None if word_start is None else torch.as_tensor(word_start, dtype=torch.bool)[:text_end].to(dec.logits.device)
    logit_t = float(torch.logit(torch.tensor(threshold)))
    budget = max_new_tokens

    def text_wins(others: Tensor) -> bool:
        lg = dec.logits
        return float(torch.logsumexp(lg[:text_end], 0) - torch.logsumexp(others, 0)) > logit_t

    def word(others) -> list[int]:
        nonlocal budget
        out: list[int] = []
        while budget > 0 and len(out) < max_word_tokens and (not out or text_wins(others(dec.logits))):
            lg = dec.logits[:text_end]
            if starts is not None and not out:  # a word begins with a word-start token
                lg = lg.masked_fill(~starts, float("-inf"))
            tok = int(lg.argmax())
            if out and starts is not None and bool(starts[tok]):
                break  # the next word: it comes after its own frames
            out.append(tok)
            budget -= 1
            dec.push(tok)
        return out

    def not_text(lg: Tensor) -> Tensor:
        return torch.cat([lg[off : off + k], lg[layout.audio_end : layout.audio_end + 1]])

    def only_end(lg: Tensor) -> Tensor:
        return lg[layout.audio_end : layout.audio_end + 1]

    for t in range(1, len(ids) + 1):
        last = t == len(ids)
        others = only_end if last else not_text  # no more frames: the owed words, until <|audio_end|>
        written = 0
        while budget > 0 and (not last or written < max_tail_words) and text_wins(others(dec.logits)):
            yield word(others)
            written += 1
            if not last:
                break  # one word per frame, as in training
        if last or budget <= 0:
            return
        dec.push(ids[t])
