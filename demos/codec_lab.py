"""Codec lab: reconstruct speech through any dual-stream codec checkpoint and compare A/B.

Checkpoints are ``save_pretrained`` dirs (a ``config.json`` next to ``*.safetensors``); the lab lists
every such dir under the folders it is given (``checkpoints/codec/<variant>/...`` by default) plus the
codec of the loaded speech pipeline. Codecs load on first use and stay cached (a few at most).
"""
from __future__ import annotations

import json
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


@dataclass
class CodecEntry:
    path: Path
    variant: str
    bitrate: float  # bits/s from its config, known before the weights load
    teacher_spec: str  # teacher the sac variant encodes with (training.json), else unused


def _read_entry(d: Path) -> CodecEntry | None:
    """A codec ``save_pretrained`` dir, or None (HF model dirs also hold config.json + safetensors)."""
    try:
        meta = json.loads((d / "config.json").read_text())
        if not isinstance(meta, dict) or "codec" not in meta or not any(d.glob("*.safetensors")):
            return None
        from codec.config import CodecConfig

        cfg = CodecConfig.from_dict(meta["codec"])
        info = d / "training.json"
        spec = (json.loads(info.read_text()).get("teacher_spec") if info.is_file() else None) or "whisper-base-ct2"
        return CodecEntry(d, cfg.variant, cfg.bitrate, spec)
    except (OSError, ValueError, TypeError):
        return None


def find_codecs(roots: list[str | Path]) -> dict[str, CodecEntry]:
    """Every codec checkpoint dir under ``roots`` (the root itself, or up to 3 levels below).

    Labels are paths relative to the root's parent (``codec/sac/step-2000``) so variants stay apart.
    """
    found: dict[str, CodecEntry] = {}
    for root in map(Path, roots):
        if not root.is_dir():
            continue
        candidates = [root] + sorted({p.parent for pat in ("*/config.json", "*/*/config.json", "*/*/*/config.json")
                                      for p in root.glob(pat)})
        for d in candidates:
            entry = _read_entry(d) if (d / "config.json").is_file() else None
            if entry is not None:
                found.setdefault(str(d.relative_to(root.parent)), entry)
    return found


def load_codec_dir(path: str | Path) -> Codec:
    from codec.model import DualStreamCodec  # heavy import; only when a checkpoint is picked

    model = DualStreamCodec.from_pretrained(str(path))
    return model.eval()


class CodecCache:
    """Load-once, thread-safe cache of codecs by label; keeps the ``capacity`` most recent."""

    def __init__(self, entries: dict[str, CodecEntry], pipeline_codec: Callable[[], Codec] | None = None,
                 loader: Callable[[str | Path], Codec] = load_codec_dir, capacity: int = 3) -> None:
        self.entries = dict(entries)
        self.pipeline_codec = pipeline_codec
        self.loader = loader
        self.capacity = capacity
        self._cache: OrderedDict[str, Codec] = OrderedDict()
        self._teachers: dict[str, object] = {}
        self._lock = threading.Lock()

    def labels(self) -> list[str]:
        return ([PIPELINE_CODEC] if self.pipeline_codec is not None else []) + sorted(self.entries)

    def choices(self) -> list[tuple[str, str]]:
        """(shown text, value) pairs for a dropdown: checkpoints with variant and bitrate."""
        out = [(PIPELINE_CODEC, PIPELINE_CODEC)] if self.pipeline_codec is not None else []
        return out + [(f"{k}  ({e.variant}, {e.bitrate:,.0f} bps)", k) for k, e in sorted(self.entries.items())]

    def get(self, label: str) -> Codec:
        if label == PIPELINE_CODEC and self.pipeline_codec is not None:
            return self.pipeline_codec()
        if label not in self.entries:
            raise ValueError(f"unknown codec {label!r}; available: {self.labels()}")
        with self._lock:
            if label not in self._cache:
                self._cache[label] = self.loader(self.entries[label].path)
                while len(self._cache) > self.capacity:
                    self._cache.popitem(last=False)
            self._cache.move_to_end(label)
            return self._cache[label]

    def encode(self, label: str, codec: Codec, wav: Tensor) -> CodecTokens:
        """``codec.encode`` plus, for codecs that encode with their teacher (sac), the teacher's units."""
        if not getattr(codec, "needs_teacher_at_encode", False):
            return codec.encode(wav)
        from adapters.kmeans import teacher_batch_for
        from adapters.teachers import load_teacher

        spec = self.entries[label].teacher_spec if label in self.entries else "whisper-base-ct2"
        with self._lock:
            if spec not in self._teachers:
                self._teachers[spec] = load_teacher(spec)
        return codec.encode(wav, teacher=teacher_batch_for(codec, self._teachers[spec], wav))


def acoustic_options(codec: Codec) -> list[int]:
    """Acoustic codebook counts a decode accepts: every prefix when the codec decodes a truncated
    residual stream (codebook k refines the sum of 1..k-1, so dropping the tail lowers the bitrate),
    else only all of them. Probed with a one-frame decode, so it reflects what the codec really does."""
    ka = int(getattr(codec, "n_acoustic_codebooks", 0))
    if ka < 2:
        return [ka]
    r = max(1, round(codec.acoustic_rate / codec.semantic_rate)) if codec.acoustic_rate else 1
    probe = CodecTokens(torch.zeros(1, codec.n_semantic_codebooks, 1, dtype=torch.long),
                        torch.zeros(1, ka - 1, r, dtype=torch.long))
    try:
        codec.decode(probe)
    except (ValueError, RuntimeError, IndexError):
        return [ka]
    return list(range(ka + 1))


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
def reconstruct(codec: Codec, wav: Tensor, n_acoustic: int | None = None,
                encode: Callable[[Tensor], CodecTokens] | None = None) -> Reconstruction:
    """Encode ``wav`` ``[1, N]`` (codec rate) and decode it, optionally keeping the first
    ``n_acoustic`` acoustic codebooks (only where :func:`acoustic_options` offers it).
    ``encode`` replaces ``codec.encode`` (e.g. :meth:`CodecCache.encode` for teacher-encoded codecs)."""
    x = wav[None] if wav.dim() == 2 else wav  # [1, 1, N]
    tokens = (encode or codec.encode)(x)
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
