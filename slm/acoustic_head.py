"""Acoustic head: a small depth transformer over one semantic frame's acoustic codes (DESIGN.md §6).

Idea from Moshi's "depformer" and Sesame CSM's audio decoder: the big backbone runs once per semantic
frame; a small causal transformer then runs *across* that frame's acoustic codes. Here a frame has
``L = r * Ka`` codes (``r`` acoustic frames per semantic frame, ``Ka`` acoustic codebooks), ordered
``(j=0,k=0), (j=0,k=1), .., (j=r-1,k=Ka-1)`` (time-major, like SAC's interleaving).

Input sequence for one frame (length L)::

    x_0 = W_h h + E_sem[s] + v          (h: backbone hidden state that sampled s; v: voice vector)
    x_i = E_code[c_{i-1}] + P_i         (i = 1..L-1, previous code of the frame + position)

and position i predicts c_i. Frames are independent sequences, so training is one batched pass over
all frames (teacher forcing) and inference is L cheap steps per frame. L is small (2..16): we
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
        self.global_proj = nn.Linear(cfg.global_dim, cfg.dim) if cfg.global_dim else None
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.n_heads, 4 * cfg.dim, cfg.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.codebook_size)
        self.register_buffer("causal", nn.Transformer.generate_square_subsequent_mask(L), persistent=False)
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
    def _inputs(self, h: Tensor, sem: Tensor, codes: Tensor, voice: Tensor | None) -> Tensor:
        """h [N, D], sem [N], codes [N, L'] (L' <= L, previous codes) -> [N, 1+L', dim] (last code unused)."""
        x0 = self.in_proj(h) + self.sem_emb(sem)
        if voice is not None:
            x0 = x0 + voice
        rest = self.code_emb(codes.clamp_min(0)) + self.pos_emb[1 : codes.shape[1] + 1]
        return torch.cat([(x0 + self.pos_emb[0])[:, None], rest], dim=1)

    def _run(self, x: Tensor) -> Tensor:
        T = x.shape[1]
        y = self.blocks(x, mask=self.causal[:T, :T], is_causal=True)
        return self.out(self.norm(y))  # [N, T, C]

    def forward(self, h: Tensor, sem: Tensor, codes: Tensor, voice: Tensor | None = None) -> HeadOutput:
        """h ``[N, D]`` backbone states, sem ``[N]`` semantic codes, codes ``[N, L]`` targets (-100 = skip),
        voice ``[N, dim]`` or None."""
        L = self.cfg.frame_len
        if codes.shape[-1] != L or h.shape[0] != sem.shape[0] or sem.shape[0] != codes.shape[0]:
            raise ValueError(f"expected h [N, D], sem [N], codes [N, {L}]; got {tuple(h.shape)}, "
                             f"{tuple(sem.shape)}, {tuple(codes.shape)}")
        if voice is not None and self.training and self.cfg.cond_dropout > 0:
            keep = (torch.rand(voice.shape[0], 1, device=voice.device) >= self.cfg.cond_dropout).to(voice.dtype)
            voice = voice * keep
        logits = self._run(self._inputs(h, sem, codes[:, :-1], voice))  # [N, L, C]
        loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), codes.reshape(-1), ignore_index=-100)
        valid = codes >= 0
        acc = ((logits.argmax(-1) == codes) & valid).sum() / valid.sum().clamp_min(1)
        return HeadOutput(loss, logits, acc)

    # ---- sampling -------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, h: Tensor, sem: Tensor, voice: Tensor | None = None, temperature: float = 0.8,
                 top_k: int = 50, generator: torch.Generator | None = None) -> Tensor:
        """Sample a frame's codes: h ``[N, D]``, sem ``[N]`` -> ``[N, L]`` (greedy when temperature <= 0).

        The same inputs as the teacher-forced pass (:meth:`_inputs`), one position per step with the
        layers' keys/values kept (:func:`_layer_step`): nn.TransformerEncoder's per-call checks and the
        prefix recomputation cost more than the math at L <= 16 on CPU. Codes equal :meth:`_run`'s
        (logits agree to float rounding; tests compare with the whole-prefix
        form: :meth:`_run` over :meth:`_inputs` at every step)."""
        N, L = h.shape[0], self.cfg.frame_len
        x = self.in_proj(h) + self.sem_emb(sem)
        if voice is not None:
            x = x + voice
        x = x + self.pos_emb[0]  # [N, dim]
        layers = self.blocks.layers
        kv: list[tuple[Tensor, Tensor] | None] = [None] * len(layers)
        codes = torch.empty(N, L, dtype=torch.long, device=h.device)
        for i in range(L):
            y = x[:, None]  # [N, 1, dim]
            for j, layer in enumerate(layers):
                y, kv[j] = _layer_step(layer, y, kv[j])
            codes[:, i] = sample(self.out(self.norm(y[:, 0])).float(), temperature, top_k, 1.0, generator)
            if i + 1 < L:
                x = self.code_emb(codes[:, i]) + self.pos_emb[i + 1]
        return codes

    # ---- save / load ----------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> None:
        from safetensors.torch import save_file

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        (d / "acoustic_head.json").write_text(json.dumps(asdict(self.cfg), indent=2) + "\n")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()},
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
    from the last position), written out with its weights (inference only)."""
    if not layer.norm_first:
        raise ValueError("the acoustic head's layers are pre-norm (norm_first=True)")
    attn = layer.self_attn
    N, _, dim = y.shape
    H = attn.num_heads
    q, k, v = F.linear(layer.norm1(y), attn.in_proj_weight, attn.in_proj_bias).view(N, 3, H, dim // H).unbind(1)
    q, k, v = q[:, :, None], k[:, :, None], v[:, :, None]  # [N, H, 1, hd]
    if kv is not None:
        k, v = torch.cat([kv[0], k], 2), torch.cat([kv[1], v], 2)
    o = F.scaled_dot_product_attention(q, k, v).reshape(N, 1, dim)
    y = y + attn.out_proj(o)
    y = y + layer.linear2(layer.activation(layer.linear1(layer.norm2(y))))
    return y, (k, v)


def frames_from_acoustic(acoustic: Tensor, ratio: int) -> Tensor:
    """``[Ka, Ta]`` (Ta = r*Ts) -> ``[Ts, r*Ka]`` per-semantic-frame targets in the head's order."""
    Ka, Ta = acoustic.shape
    Ts = Ta // ratio
    return acoustic[:, : Ts * ratio].reshape(Ka, Ts, ratio).permute(1, 2, 0).reshape(Ts, ratio * Ka)


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
