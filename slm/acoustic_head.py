"""Acoustic head: a small depth transformer over one semantic frame's acoustic codes (DESIGN.md §6).

Idea from Moshi's "depformer" and Sesame CSM's audio decoder: the big backbone runs once per semantic
frame; a small causal transformer then runs *across* that frame's acoustic codes. Here a frame has
``L = r * Ka`` codes (``r`` acoustic frames per semantic frame, ``Ka`` acoustic codebooks), ordered
``(j=0,k=0), (j=0,k=1), .., (j=r-1,k=Ka-1)`` (time-major, like SAC's interleaving).

Input sequence for one frame (length L)::

    x_0 = W_h h + E_sem[s] + v          (h: backbone hidden state that sampled s; v: voice vector)
    x_i = E_code[c_{i-1}] + P_i         (i = 1..L-1, previous code of the frame + position)

and position i predicts c_i. Frames are independent sequences, so training is one batched pass over
all frames (teacher forcing) and inference is L cheap steps per frame.

Acoustic context (``context = C > 0``): the backbone never sees acoustic codes, so a frame-independent head
samples each 80 ms on its own, with nothing tying a frame's codes to the ones before it. With context the
sequence is prefixed by the codes of the utterance's previous C frames (``C * L`` positions, their own
position embeddings; a learned "none" vector before the utterance's first frames)::

    [E_code[c^{t-C}_0] + Q_0, .., E_code[c^{t-1}_{L-1}] + Q_{CL-1}, x_0, x_1, .., x_{L-1}]

so each code is predicted from the recent acoustic past as well (the local continuity an autoregressive
acoustic model has). Training still batches all frames at once (the context is the *true* previous codes,
teacher forcing); inference runs frame after frame (:meth:`generate_frames`). L is small (2..16): we
recompute the prefix every step instead of keeping a KV cache; that is simpler and, at this length,
not slower on CPU.

Voice conditioning ``v``: the codec's float ``global_`` embedding projected (SecoustiCodec-like
codecs), and/or the mean code embedding of reference acoustic codes (prompt tokens). Conditioning is
dropped at random in training so the head also works without a voice.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class AcousticHeadConfig:
    backbone_dim: int  # hidden size of the LLM backbone (576 for SmolLM2-135M)
    n_semantic: int  # K: semantic codebook size (own embedding; the LLM's rows are not reused, keeps it detachable)
    codebook_size: int  # acoustic codebook size
    n_codebooks: int  # Ka (0 = codec without acoustic stream: no head is built)
    ratio: int = 1  # r acoustic frames per semantic frame
    dim: int = 256  # small on purpose: it runs r*Ka steps per semantic frame
    n_layers: int = 2
    n_heads: int = 4
    global_dim: int = 0  # size of the codec's float global_ embedding (0 = none)
    cond_dropout: float = 0.3  # drop voice conditioning in training so unconditional generation works
    dropout: float = 0.0
    context: int = 0  # C: previous frames of acoustic codes each frame sees (0 = frames independent)
    context_dropout: float = 0.0  # blank a frame's whole context in training (it must also work without)

    @property
    def frame_len(self) -> int:
        return self.ratio * self.n_codebooks


@dataclass
class HeadOutput:
    loss: Tensor  # scalar cross-entropy over valid codes
    logits: Tensor  # [N, L, C]
    accuracy: Tensor  # scalar top-1 accuracy


class AcousticHead(nn.Module):
    def __init__(self, cfg: AcousticHeadConfig):
        super().__init__()
        if cfg.n_codebooks <= 0:
            raise ValueError("AcousticHead needs n_codebooks >= 1; a codec with Ka=0 needs no head")
        if cfg.dim % cfg.n_heads:
            raise ValueError(f"head dim {cfg.dim} must be divisible by n_heads {cfg.n_heads}")
        self.cfg = cfg
        L = cfg.frame_len
        self.in_proj = nn.Linear(cfg.backbone_dim, cfg.dim)
        self.sem_emb = nn.Embedding(cfg.n_semantic, cfg.dim)
        self.code_emb = nn.Embedding(cfg.codebook_size, cfg.dim)
        self.pos_emb = nn.Parameter(torch.zeros(L, cfg.dim))
        if cfg.context < 0:
            raise ValueError(f"context must be >= 0 frames, got {cfg.context}")
        if cfg.context:
            self.ctx_pos = nn.Parameter(torch.zeros(cfg.context * L, cfg.dim))
            self.ctx_none = nn.Parameter(torch.zeros(cfg.dim))
            nn.init.normal_(self.ctx_pos, std=0.02)
        self.global_proj = nn.Linear(cfg.global_dim, cfg.dim) if cfg.global_dim else None
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.n_heads, 4 * cfg.dim, cfg.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.codebook_size)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask((1 + cfg.context) * L),
                             persistent=False)
        nn.init.normal_(self.pos_emb, std=0.02)

    # ---- conditioning ---------------------------------------------------------------------------------------
    def voice_vector(self, global_: Tensor | None = None, ref_acoustic: Tensor | None = None) -> Tensor | None:
        """``[B, dim]`` voice vector from a float ``global_ [B, D]`` and/or reference codes ``[B, Ka, Ta]``."""
        v = None
        if global_ is not None and self.global_proj is not None and global_.is_floating_point():
            v = self.global_proj(global_.to(self.in_proj.weight.dtype))
        if ref_acoustic is not None and ref_acoustic.numel():
            r = self.code_emb(ref_acoustic.clamp_min(0)).mean(dim=(1, 2))  # [B, dim]
            v = r if v is None else v + r
        return v

    # ---- teacher-forced pass --------------------------------------------------------------------------------
    def _inputs(self, h: Tensor, sem: Tensor, codes: Tensor, voice: Tensor | None,
                context: Tensor | None = None) -> Tensor:
        """h [N, D], sem [N], codes [N, L'] (L' <= L, previous codes), context [N, C*L] (-1 = none) ->
        [N, C*L + 1 + L', dim] (last code unused)."""
        x0 = self.in_proj(h) + self.sem_emb(sem)
        if voice is not None:
            x0 = x0 + voice
        rest = self.code_emb(codes.clamp_min(0)) + self.pos_emb[1 : codes.shape[1] + 1]
        x = torch.cat([(x0 + self.pos_emb[0])[:, None], rest], dim=1)
        return x if not self.cfg.context else torch.cat([self._context(context, h.shape[0]), x], dim=1)

    def _context(self, context: Tensor | None, n: int) -> Tensor:
        """``[N, C*L]`` previous frames' codes (oldest first; -1: before the utterance) -> ``[N, C*L, dim]``."""
        CL = self.cfg.context * self.cfg.frame_len
        if context is None:
            context = torch.full((n, CL), -1, dtype=torch.long, device=self.pos_emb.device)
        if tuple(context.shape) != (n, CL):
            raise ValueError(f"context must be [N={n}, C*L={CL}] codes, got {tuple(context.shape)}")
        e = torch.where((context >= 0)[..., None], self.code_emb(context.clamp_min(0)), self.ctx_none)
        return e + self.ctx_pos

    def _run(self, x: Tensor, last: int | None = None) -> Tensor:
        """Logits ``[N, T, C]`` at every position of ``x [N, T, dim]``, or at the ``last`` ones only."""
        T = x.shape[1]
        y = self.blocks(x, mask=self.causal[:T, :T], is_causal=True)
        return self.out(self.norm(y if last is None else y[:, T - last :]))

    def forward(self, h: Tensor, sem: Tensor, codes: Tensor, voice: Tensor | None = None,
                context: Tensor | None = None) -> HeadOutput:
        """h ``[N, D]`` backbone states, sem ``[N]`` semantic codes, codes ``[N, L]`` targets (-100 = skip),
        voice ``[N, dim]`` or None, context ``[N, C*L]`` the previous frames' codes (heads with ``context``;
        -1 = none, :func:`frame_context` builds it; None = none for every frame)."""
        L = self.cfg.frame_len
        if codes.shape[-1] != L or h.shape[0] != sem.shape[0] or sem.shape[0] != codes.shape[0]:
            raise ValueError(f"expected h [N, D], sem [N], codes [N, {L}]; got {tuple(h.shape)}, "
                             f"{tuple(sem.shape)}, {tuple(codes.shape)}")
        if voice is not None and self.training and self.cfg.cond_dropout > 0:
            keep = (torch.rand(voice.shape[0], 1, device=voice.device) >= self.cfg.cond_dropout).to(voice.dtype)
            voice = voice * keep
        if context is not None and self.training and self.cfg.context_dropout > 0:
            blank = torch.rand(context.shape[0], 1, device=context.device) < self.cfg.context_dropout
            context = context.masked_fill(blank, -1)
        logits = self._run(self._inputs(h, sem, codes[:, :-1], voice, context), last=L)  # [N, L, C]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), codes.reshape(-1), ignore_index=-100)
        valid = codes >= 0
        acc = ((logits.argmax(-1) == codes) & valid).sum() / valid.sum().clamp_min(1)
        return HeadOutput(loss, logits, acc)

    # ---- sampling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, h: Tensor, sem: Tensor, voice: Tensor | None = None, temperature: float = 0.8,
                 top_k: int = 50, generator: torch.Generator | None = None,
                 context: Tensor | None = None) -> Tensor:
        """Sample a frame's codes: h ``[N, D]``, sem ``[N]`` -> ``[N, L]`` (greedy when temperature <= 0);
        ``context [N, C*L]``: the previous frames' codes, for heads with ``context`` (None: none).

        The same inputs as the teacher-forced pass (:meth:`_inputs`), one position per step with the
        layers' keys/values kept (:func:`_layer_step`; the context prefix in one pass): nn.TransformerEncoder's
        per-call checks and the prefix recomputation cost more than the math at these lengths on CPU. Codes
        equal :meth:`_run`'s (logits agree to float rounding; tests compare with the whole-prefix
        form: :meth:`_run` over :meth:`_inputs` at every step)."""
        N, L = h.shape[0], self.cfg.frame_len
        x = self.in_proj(h) + self.sem_emb(sem)
        if voice is not None:
            x = x + voice
        x = x + self.pos_emb[0]  # [N, dim]
        layers = self.blocks.layers
        kv: list[tuple[Tensor, Tensor] | None] = [None] * len(layers)
        if self.cfg.context:
            y = self._context(context, N)
            for j, layer in enumerate(layers):
                y, kv[j] = _layer_step(layer, y, kv[j])
        codes = torch.empty(N, L, dtype=torch.long, device=h.device)
        for i in range(L):
            y = x[:, None]  # [N, 1, dim]
            for j, layer in enumerate(layers):
                y, kv[j] = _layer_step(layer, y, kv[j])
            codes[:, i] = sample(self.out(self.norm(y[:, 0])).float(), temperature, top_k, 1.0, generator)
            if i + 1 < L:
                x = self.code_emb(codes[:, i]) + self.pos_emb[i + 1]
        return codes

    @torch.no_grad()
    def generate_frames(self, h: Tensor, sem: Tensor, voice: Tensor | None = None, temperature: float = 0.8,
                        top_k: int = 50, generator: torch.Generator | None = None,
                        past: Tensor | None = None) -> Tensor:
        """Codes of one utterance's consecutive frames, h ``[T, D]``, sem ``[T]`` -> ``[T, L]``. A head without
        context samples them all at once (:meth:`generate`); one with context frame after frame, each seeing
        the codes sampled before it (``past [P, L]``: frames before the first, e.g. a prompt's)."""
        if not self.cfg.context:
            return self.generate(h, sem, voice, temperature, top_k, generator)
        hist = FrameContext(self.cfg.context, self.cfg.frame_len, h.device)
        for f in (past if past is not None else []):
            hist.push(f)
        out = []
        for t in range(h.shape[0]):
            out.append(self.generate(h[t : t + 1], sem[t : t + 1], voice, temperature, top_k, generator,
                                     hist.tensor())[0])
            hist.push(out[-1])
        return torch.stack(out) if out else torch.empty(0, self.cfg.frame_len, dtype=torch.long, device=h.device)

    # ---- save / load ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        from codec.runtime import save_safetensors

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "acoustic_head.json").write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")
        save_safetensors({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
                  str(d / "acoustic_head.safetensors"))

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> AcousticHead:
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "acoustic_head.json").exists():
            raise FileNotFoundError(f"no acoustic_head.json in {d}")
        head = cls(AcousticHeadConfig(**json.loads((d / "acoustic_head.json").read_text())))
        sd = load_file(str(d / "acoustic_head.safetensors"))
        head.load_state_dict({k: v.float() for k, v in sd.items()})
        return head.eval()


def _layer_step(layer: nn.TransformerEncoderLayer, y: Tensor, kv: tuple[Tensor, Tensor] | None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """One new position ``y [N, 1, dim]`` through a pre-norm ``nn.TransformerEncoderLayer`` (eval), attending
    to the kept keys/values ``[N, H, t, hd]`` and itself: the layer's own math (causal attention as seen
    from the last position), written out with its weights (inference only). The first call (no ``kv``) may
    pass several positions ``[N, P, dim]`` (a context prefix), causal among themselves."""
    if not layer.norm_first:
        raise ValueError("the acoustic head's layers are pre-norm (norm_first=True)")
    attn = layer.self_attn
    N, _, dim = y.shape
    H = attn.num_heads
    P = y.shape[1]  # new positions: 1 while sampling, the context prefix at once before
    q, k, v = (t.reshape(N, P, H, dim // H).transpose(1, 2) for t in F.linear(
        layer.norm1(y), attn.in_proj_weight, attn.in_proj_bias).split(dim, -1))  # [N, H, P, hd]
    causal = kv is None and P > 1
    if kv is not None:
        if P != 1:
            raise ValueError("after the first call, one position at a time")
        k, v = torch.cat([kv[0], k], 2), torch.cat([kv[1], v], 2)
    o = F.scaled_dot_product_attention(q, k, v, is_causal=causal).transpose(1, 2).reshape(N, P, dim)
    y = y + attn.out_proj(o)
    y = y + layer.linear2(layer.activation(layer.linear1(layer.norm2(y))))
    return y, (k, v)


class FrameContext:
    """The last ``C`` frames' codes of an utterance being generated, as the head's ``context [1, C*L]``."""

    def __init__(self, frames: int, frame_len: int, device=None):
        self.frames, self.frame_len = frames, frame_len
        self.codes = torch.full((frames * frame_len,), -1, dtype=torch.long, device=device)

    def push(self, codes: Tensor) -> None:
        if self.frames:
            self.codes = torch.cat([self.codes[self.frame_len :], torch.as_tensor(codes).reshape(-1).to(self.codes)])

    def tensor(self) -> Tensor | None:
        return self.codes[None] if self.frames else None

    def copy(self) -> FrameContext:
        other = FrameContext(self.frames, self.frame_len)
        other.codes = self.codes.clone()
        return other


def frame_context(codes: Tensor, item: Tensor, frames: int) -> Tensor:
    """Teacher-forced context for :meth:`AcousticHead.forward`: ``codes [N, L]`` of frames in time order within
    each utterance, ``item [N]`` the utterance each frame belongs to (its frames consecutive) ->
    ``[N, frames*L]``, the previous ``frames`` frames' codes of the same utterance, oldest first (-1 before its
    first frame, and for skipped -100 targets)."""
    N, L = codes.shape
    out = torch.full((N, frames * L), -1, dtype=torch.long, device=codes.device)
    for c in range(1, frames + 1):
        if c >= N:
            break
        same = item[c:] == item[:-c]  # frame i and frame i - c are of one utterance
        prev = torch.where(same[:, None], codes[:-c], torch.full_like(codes[:-c], -1))
        out[c:, (frames - c) * L : (frames - c + 1) * L] = prev
    return out.clamp_min(-1)


def frames_from_acoustic(acoustic: Tensor, ratio: int) -> Tensor:
    """``[Ka, Ta]`` (Ta = r*Ts) -> ``[Ts, r*Ka]`` per-semantic-frame targets in the head's order."""
    Ka, Ta = acoustic.shape
    Ts = Ta // ratio
    return acoustic[:, : Ts * ratio].reshape(Ka, Ts, ratio).permute(1, 2, 0).reshape(Ts, ratio * Ka)


def acoustic_ratio(codec) -> int:
    """Acoustic frames per semantic frame of ``codec`` (the head's ``ratio``)."""
    return max(1, round(codec.acoustic_rate / codec.semantic_rate))


def acoustic_from_frames(frames: Tensor, n_codebooks: int) -> Tensor:
    """Inverse of :func:`frames_from_acoustic`: ``[Ts, r*Ka]`` -> ``[Ka, r*Ts]``."""
    Ts, L = frames.shape
    r = L // n_codebooks
    return frames.reshape(Ts, r, n_codebooks).permute(2, 0, 1).reshape(n_codebooks, Ts * r)


def sample(logits: Tensor, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None) -> Tensor:
    """Sample ids from ``[N, V]`` logits (-inf entries are never picked). Greedy when temperature <= 0.

    With ``top_k`` the draw runs over the k best candidates only (``topk`` returns them sorted, which
    top-p needs too): the same distribution as masking the other V - k logits to -inf, without a
    softmax, sort and random draw over all V (8192 acoustic codes per head step)."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    idx = None
    if top_k and top_k < logits.shape[-1]:
        logits, idx = torch.topk(logits, top_k, dim=-1)
    if top_p < 1.0:
        if idx is None:
            logits, idx = torch.sort(logits, descending=True, dim=-1)
        p = logits.float().softmax(-1)
        logits = logits.masked_fill(p.cumsum(-1) - p > top_p, float("-inf"))  # smallest set reaching top_p
    choice = torch.multinomial(logits.float().softmax(-1), 1, generator=generator)  # [N, 1]
    return (choice if idx is None else idx.gather(-1, choice))[:, 0]
