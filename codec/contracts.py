"""Small cross-package contracts of the codec family (DESIGN.md §4).

Everything outside `codec/` talks to a codec through these types only:

* audio is float32 ``[B, 1, N]`` at ``codec.sample_rate`` with values in [-1, 1];
* tokens are a :class:`CodecTokens`; codes stay in ``0..K-1`` (vocabulary offsets live in ``slm``);
* the acoustic frame rate is an integer multiple ``r`` of the semantic frame rate.

`SemanticTeacher` is what `adapters/` implements (Whisper, HuBERT, WavLM, ...); a codec that needs
a teacher at encode time is handed one, and training reads teacher features/units cached on disk.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@dataclass
class CodecTokens:
    """Discrete output of a dual-stream codec.

    semantic: ``[B, Ks, Ts]`` int64 codes in ``0..semantic_codebook_size-1``.
    acoustic: ``[B, Ka, Ta]`` int64 codes, ``Ta == r * Ts``; ``Ka`` may be 0 (then ``[B, 0, Ta]``).
    global_:  optional utterance-level conditioning (SecoustiCodec's paralinguistic stream):
              ``[B, D]`` float vector or ``[B, G]`` int64 global tokens.
    lengths:  optional ``[B]`` int64 number of valid *semantic frames* per item (unit: semantic
              frames, not samples; the acoustic stream has ``r`` times as many valid frames, the
              audio ``lengths * semantic_hop`` samples). Frames past an item's length are padding of
              a zero-padded batch. ``DualStreamCodec.encode`` always fills it (``Ts`` for every item
              unless given per-item sample lengths); ``None`` means every frame is valid.
    """

    semantic: Tensor
    acoustic: Tensor
    global_: Tensor | None = None
    lengths: Tensor | None = None

    def __post_init__(self) -> None:
        if self.semantic.dim() != 3:
            raise ValueError(f"semantic codes must be [B, Ks, Ts], got shape {tuple(self.semantic.shape)}")
        if self.acoustic.dim() != 3:
            raise ValueError(f"acoustic codes must be [B, Ka, Ta], got shape {tuple(self.acoustic.shape)}")
        if self.acoustic.shape[0] != self.semantic.shape[0]:
            raise ValueError(
                f"batch mismatch: semantic has B={self.semantic.shape[0]}, acoustic B={self.acoustic.shape[0]}"
            )
        if self.lengths is not None:
            b, ts = self.semantic.shape[0], self.semantic.shape[-1]
            if self.lengths.shape != (b,) or self.lengths.is_floating_point() or self.lengths.is_complex():
                raise ValueError(f"lengths must be [B] = [{b}] integer semantic frame counts, got "
                                 f"{self.lengths.dtype} of shape {tuple(self.lengths.shape)}")
            if b and (int(self.lengths.min()) < 0 or int(self.lengths.max()) > ts):
                raise ValueError(f"lengths must lie in 0..Ts = 0..{ts} semantic frames, got {self.lengths.tolist()}")

    @property
    def batch_size(self) -> int:
        return self.semantic.shape[0]

    @property
    def ratio(self) -> int:
        """Acoustic frames per semantic frame (r); 1 when there is no acoustic stream."""
        ts, ta = self.semantic.shape[-1], self.acoustic.shape[-1]
        return max(1, ta // ts) if ts else 1

    def to(self, device: torch.device | str) -> CodecTokens:
        return CodecTokens(**{f.name: (None if getattr(self, f.name) is None else getattr(self, f.name).to(device))
                              for f in fields(self)})

    def __getitem__(self, i: int) -> CodecTokens:
        """Item ``i`` as a batch of one, trimmed to its valid length."""
        n = int(self.lengths[i]) if self.lengths is not None else self.semantic.shape[-1]
        r = self.ratio
        return CodecTokens(
            semantic=self.semantic[i : i + 1, :, :n],
            acoustic=self.acoustic[i : i + 1, :, : n * r],
            global_=None if self.global_ is None else self.global_[i : i + 1],
            lengths=torch.tensor([n]),
        )

    def save(self, path: str | Path, metadata: dict[str, str] | None = None) -> None:
        """Write to a ``.safetensors`` token file (metadata: e.g. the codec's name and version)."""
        from codec.runtime import save_safetensors

        tensors = {"semantic": self.semantic.contiguous(), "acoustic": self.acoustic.contiguous()}
        if self.global_ is not None:
            tensors["global_"] = self.global_.contiguous()
        if self.lengths is not None:
            tensors["lengths"] = self.lengths.contiguous()
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        save_safetensors({k: v.cpu() for k, v in tensors.items()}, str(path), metadata=metadata or {})

    @classmethod
    def load(cls, path: str | Path) -> CodecTokens:
        return cls.load_with_metadata(path)[0]

    @classmethod
    def load_with_metadata(cls, path: str | Path) -> tuple[CodecTokens, dict[str, str]]:
        """A token file and the metadata it was saved with (e.g. the codec's variant and rates; ``{}`` if none).
        A file that is not one (unreadable, truncated, other tensors, codes that are not integers) is a
        ``ValueError`` naming it."""
        from safetensors import SafetensorError, safe_open

        if not Path(path).is_file():
            raise ValueError(f"{path}: no such token file")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
        except (SafetensorError, OSError, RuntimeError) as e:
            raise ValueError(f"{path} is not a readable token file (.safetensors): {e}") from None
        if "semantic" not in t or "acoustic" not in t:
            raise ValueError(f"{path} is not a token file: expected tensors 'semantic' and 'acoustic', got {list(t)}")
        bad = [k for k in ("semantic", "acoustic", "lengths")  # global_ is an embedding, not codes
               if k in t and (t[k].is_floating_point() or t[k].is_complex() or t[k].dtype == torch.bool)]
        if bad:
            raise ValueError(f"{path}: the codes must be integers, got {', '.join(f'{k} {t[k].dtype}' for k in bad)}")
        return cls(semantic=t["semantic"], acoustic=t["acoustic"], global_=t.get("global_"),
                   lengths=t.get("lengths")), meta


def token_metadata(model, ckpt: str | Path | None = None) -> dict[str, str]:
    """What a token file records of the codec that wrote it: its variant and rates, and with ``ckpt`` (its
    save_pretrained dir) that dir and a digest of its weights. What :func:`check_token_metadata` compares."""
    meta = {"variant": model.config.variant, "semantic_rate": str(model.semantic_rate),
            "acoustic_rate": str(model.acoustic_rate)}
    if ckpt is not None:
        meta["codec"] = str(Path(ckpt).resolve())
        weights = Path(ckpt) / "model.safetensors"
        if weights.is_file():
            import hashlib

            meta["codec_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
    return meta


def check_token_metadata(path: str | Path, meta: dict[str, str], model, have: dict[str, str] | None = None) -> None:
    """A token file that names its codec's variant and rates (:func:`token_metadata`) is refused by another codec:
    its ids would decode to noise or train a model on another codec's units. The codec's own path may differ (a
    moved checkpoint decodes fine); a file without these keys (older token dirs) is not judged here. ``have``
    (``token_metadata(model, ckpt)``, when resuming a tokenisation): the weights' digest must match as well, so
    tokens of a codec since retrained are not kept."""
    have = token_metadata(model) if have is None else have
    keys = ("variant", "semantic_rate", "acoustic_rate", "codec_sha256")
    diff = [f"{k} {meta[k]} (this codec: {have[k]})" for k in keys if k in meta and k in have and meta[k] != have[k]]
    if diff:
        raise ValueError(f"{path} was encoded by another codec ({meta.get('codec', 'unknown')}): " + "; ".join(diff))


@runtime_checkable
class Codec(Protocol):
    """What the speech LM, the evaluation suite and the demo need from any codec."""

    sample_rate: int
    semantic_rate: float  # semantic frames per second
    acoustic_rate: float  # acoustic frames per second (r * semantic_rate), 0 if no acoustic stream
    semantic_codebook_size: int
    acoustic_codebook_size: int  # 0 if no acoustic stream
    n_semantic_codebooks: int  # Ks
    n_acoustic_codebooks: int  # Ka

    @property
    def bitrate(self) -> float:  # bits per second summed over streams
        ...

    def encode(self, wav: Tensor) -> CodecTokens:  # [B, 1, N] -> tokens
        # DualStreamCodec.encode also takes lengths=[B] valid samples of a zero-padded batch and
        # returns them as tokens.lengths in semantic frames; decode zeroes audio past them.
        ...

    def decode(self, tokens: CodecTokens) -> Tensor:  # tokens -> [B, 1, N']
        ...


@runtime_checkable
class SemanticTeacher(Protocol):
    """A frozen self-supervised / ASR encoder whose features define the semantic stream.

    ``features(wav)`` takes ``[B, 1, N]`` float audio at ``sample_rate`` and returns
    ``[B, T, dim]`` features at ``frame_rate`` Hz (``T = ceil(N / sample_rate * frame_rate)``
    up to one frame).
    """

    name: str
    sample_rate: int
    frame_rate: float
    dim: int

    def features(self, wav: Tensor) -> Tensor:
        ...


class StreamingCodec(Protocol):
    """A causal codec that encodes / decodes chunk by chunk; chunks concatenate to the offline result."""

    def stream_encode(self, chunks: Iterator[Tensor]) -> Iterator[CodecTokens]:
        ...

    def stream_decode(self, chunks: Iterator[CodecTokens]) -> Iterator[Tensor]:
        ...


def check_audio(wav: Tensor, sample_rate: int, expected_rate: int, *, name: str = "audio") -> Tensor:
    """Validate audio at a public entry point and return it as float32 ``[B, 1, N]``.

    Accepts ``[N]``, ``[1, N]`` or ``[B, 1, N]``. Raises ``ValueError`` with what was expected and
    what came for: wrong sample rate, more than one channel, empty input, NaN/Inf values.
    """
    if not isinstance(wav, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(wav).__name__}")
    if sample_rate != expected_rate:
        raise ValueError(f"{name}: expected sample rate {expected_rate} Hz, got {sample_rate} Hz (resample first)")
    if wav.dim() == 1:
        wav = wav[None, None]
    elif wav.dim() == 2:
        if wav.shape[0] != 1:
            raise ValueError(f"{name}: expected mono [1, N] or [B, 1, N], got shape {tuple(wav.shape)} "
                             "(stereo? down-mix first)")
        wav = wav[None]
    elif wav.dim() == 3:
        if wav.shape[1] != 1:
            raise ValueError(f"{name}: expected 1 channel in [B, 1, N], got {wav.shape[1]} channels")
    else:
        raise ValueError(f"{name}: expected [N], [1, N] or [B, 1, N], got shape {tuple(wav.shape)}")
    if wav.shape[-1] == 0:
        raise ValueError(f"{name}: empty audio (0 samples)")
    if not torch.isfinite(wav).all():
        raise ValueError(f"{name}: contains NaN or Inf values")
    return wav.float()
