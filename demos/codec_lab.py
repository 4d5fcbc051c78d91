"""Codec lab: reconstruct speech through any dual-stream codec checkpoint and compare A/B.

Checkpoints are ``save_pretrained`` dirs (a ``config.json`` next to ``*.safetensors``); the lab lists
every such dir under the folders it is given (``checkpoints/codec/<variant>/...`` by default) plus the
codec of the loaded speech pipeline. Codecs load on first use and stay cached (a few at most).
"""
from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from codec.contracts import Codec, CodecTokens

PIPELINE_CODEC = "speech pipeline's codec"


def find_codecs(roots: list[str | Path]) -> dict[str, Path]:
    """Every codec checkpoint dir under ``roots`` (the root itself, or up to 3 levels below).

    Labels are paths relative to the root's parent (``codec/sac/step-2000``) so variants stay apart.
    """
    found: dict[str, Path] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        candidates = [root] + sorted(p.parent for p in root.glob("*/config.json")) \
            + sorted(p.parent for p in root.glob("*/*/config.json")) \
            + sorted(p.parent for p in root.glob("*/*/*/config.json"))
        for d in candidates:
            if (d / "config.json").is_file() and any(d.glob("*.safetensors")):
                found.setdefault(str(d.relative_to(root.parent)), d)
    return found


def load_codec_dir(path: str | Path) -> Codec:
    from codec.model import DualStreamCodec  # heavy import; only when a checkpoint is picked

    model = DualStreamCodec.from_pretrained(str(path))
    return model.eval()


class CodecCache:
    """Load-once, thread-safe cache of codecs by label; keeps the ``capacity`` most recent."""

    def __init__(self, paths: dict[str, Path], pipeline_codec: Callable[[], Codec] | None = None,
                 loader: Callable[[str | Path], Codec] = load_codec_dir, capacity: int = 3) -> None:
        self.paths = dict(paths)
        self.pipeline_codec = pipeline_codec
        self.loader = loader
        self.capacity = capacity
        self._cache: OrderedDict[str, Codec] = OrderedDict()
        self._lock = threading.Lock()

    def labels(self) -> list[str]:
        return ([PIPELINE_CODEC] if self.pipeline_codec is not None else []) + sorted(self.paths)

    def get(self, label: str) -> Codec:
        if label == PIPELINE_CODEC and self.pipeline_codec is not None:
            return self.pipeline_codec()
        if label not in self.paths:
            raise ValueError(f"unknown codec {label!r}; available: {self.labels()}")
        with self._lock:
            if label not in self._cache:
                self._cache[label] = self.loader(self.paths[label])
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(label)
            return self._cache[label]


def acoustic_options(codec: Codec) -> list[int]:
    """How many acoustic codebooks a decode may keep: every prefix for residual (RVQ) acoustic
    streams, where codebook k refines the sum of 1..k-1, so dropping the tail lowers the bitrate;
    only "all" for single-codebook or non-residual streams."""
    ka = int(getattr(codec, "n_acoustic_codebooks", 0))
    residual = getattr(getattr(codec, "config", None), "variant", "") in ("stacodec", "rvq", "distill")
    return list(range(ka + 1)) if residual and ka > 1 else [ka]


def bitrate_of(codec: Codec, n_acoustic: int) -> float:
    bits = codec.semantic_rate * codec.n_semantic_codebooks * math.log2(max(2, codec.semantic_codebook_size))
    if n_acoustic and codec.acoustic_codebook_size:
        bits += codec.acoustic_rate * n_acoustic * math.log2(codec.acoustic_codebook_size)
    return bits


@dataclass
class Reconstruction:
    tokens: CodecTokens
    audio: Tensor  # [1, N] at the codec's sample rate, trimmed/padded to the input length
    bitrate: float  # bits/s actually used by the decode
    n_acoustic: int


@torch.inference_mode()
def reconstruct(codec: Codec, wav: Tensor, n_acoustic: int | None = None) -> Reconstruction:
    """Encode ``wav`` ``[1, N]`` (codec rate) and decode it, optionally keeping the first
    ``n_acoustic`` acoustic codebooks (residual streams only: the rest are zeroed out of the sum by
    decoding with a truncated acoustic tensor)."""
    tokens = codec.encode(wav[None] if wav.dim() == 2 else wav)
    ka = tokens.acoustic.shape[1]
    keep = ka if n_acoustic is None else max(0, min(int(n_acoustic), ka))
    dec_tokens = tokens if keep == ka else CodecTokens(tokens.semantic, tokens.acoustic[:, :keep],
                                                       tokens.global_, tokens.lengths)
    out = codec.decode(dec_tokens).reshape(1, -1)
    n = wav.shape[-1]
    out = out[:, :n] if out.shape[-1] >= n else torch.nn.functional.pad(out, (0, n - out.shape[-1]))
    return Reconstruction(tokens=tokens, audio=out.float(), bitrate=bitrate_of(codec, keep), n_acoustic=keep)


def fidelity(ref: Tensor, deg: Tensor, sample_rate: int) -> dict[str, float]:
    """PESQ (wb/nb), STOI and mel distance through the evaluation suite's judge (same numbers as
    `slm eval`); empty when the eval extra is not installed."""
    try:
        from adapters.judges.quality import FidelityJudge
    except ImportError:
        return {}
    return FidelityJudge()(ref.reshape(-1).numpy(), deg.reshape(-1).numpy(), sample_rate).as_dict()


def metrics_markdown(rec: Reconstruction, codec: Codec, scores: dict[str, float], seconds: float) -> str:
    t = rec.tokens
    rows = [("bitrate used", f"{rec.bitrate:,.0f} bps (codec max {codec.bitrate:,.0f} bps)"),
            ("semantic tokens", f"{t.semantic.shape[1]} x {t.semantic.shape[2]} at {codec.semantic_rate:g} Hz"),
            ("acoustic tokens", (f"{rec.n_acoustic} of {t.acoustic.shape[1]} codebooks x {t.acoustic.shape[2]} "
                                f"at {codec.acoustic_rate:g} Hz")),
            ("global conditioning", "none" if t.global_ is None else f"{tuple(t.global_.shape)}"),
            ("encode + decode", f"{seconds:.2f} s")]
    for key, label in (("pesq_wb", "PESQ-wb (1-4.6)"), ("pesq_nb", "PESQ-nb (1-4.6)"), ("stoi", "STOI (0-1)"),
                       ("mel_distance", "mel distance (lower is better)")):
        if key in scores:
            v = scores[key]
            rows.append((label, "n/a (no speech found)" if math.isnan(v) else f"{v:.3f}"))
    if not scores:
        rows.append(("PESQ / STOI", "install the eval extra (`pip install -e .[eval]`)"))
    return "| metric | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
