"""One configuration dataclass for the whole codec family (DESIGN.md §5).

The six variants share the encoder (log-mel frames -> ConvNeXt blocks at 50 Hz, strided conv down to
the semantic rate), the decoder (ConvNeXt blocks at 50 Hz -> iSTFT head, the Vocos idea) and differ
only in the bottleneck between them. Defaults below are the real default model: small enough to
train on a 2-core CPU in minutes and run far faster than real time on one thread (DESIGN.md §8),
aimed at ~1 kbps.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

VARIANTS = ("sac", "sacodec", "secousticodec", "stacodec", "rvq", "distill")
# Variants whose decoder sums or fuses a semantic and a separate acoustic stream (acoustic dropout,
# semantic-only decoding).
TWO_STREAM = ("sac", "sacodec")


def _default_loss_weights() -> dict[str, float]:
    # Unweighted model losses come back as "group/name"; these are the defaults a trainer multiplies
    # them by. Values follow the seed papers where they give them (SAC: whisper-feature MSE is large
    # because the features are small; STACodec: SPD weight 5), scaled to our mel-L1 weight of 15.
    return {
        "mel/l1": 15.0,
        "vq/commit": 1.0,
        "semantic/distill": 10.0,
        "semantic/spd_ce": 5.0,
        "semantic/anchor": 1.0,
        "vae/kl": 1e-3,
        "align/contrastive": 1.0,
    }


# Every loss a codec model returns (the defaults above weight all but these; unweighted ones count 1.0).
MODEL_LOSSES = (*_default_loss_weights(), "acoustic/constraint")


# ---- config-file checks (shared by the codec, codec-training and LM-training configs) ----------------------

def load_yaml_mapping(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The mapping a YAML config file holds ({} when empty). A file that is not valid YAML, or whose top level
    is not a mapping, is a one-line ValueError naming the file (and the line of a syntax error)."""
    import yaml

    text = Path(path).read_text()
    try:
        d = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        why = "; ".join(x for x in (getattr(e, "context", None), getattr(e, "problem", None)) if x) or str(e)
        raise ValueError(f"{path}: not valid YAML{at}: {why}") from e
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ValueError(f"{path}: a {what} file must hold a mapping of keys to values, got a "  # noqa: TRY004 (bad input)
                         f"{type(d).__name__} ({d!r:.60})")
    return d


def check_keys(cls, keys: Iterable[str], what: str) -> None:
    """Refuse keys that are not fields of dataclass ``cls``, listing the known ones."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(keys) - known, key=str)
    if unknown:
        raise ValueError(f"unknown {what} keys {unknown}; known keys are {sorted(known)}")


def check_types(cls, values: Mapping[str, Any], prefix: str = "") -> None:
    """Check each value against the annotation of the dataclass field of its name (keys that are no field are
    left to :func:`check_keys`): an int field takes an int (not a bool), a float field an int or a float, a str
    field a string, ``X | None`` also null, ``list[X]`` / ``tuple[X, ...]`` a list of X, ``dict[K, V]`` a
    mapping, a nested dataclass a mapping of its fields. The error names ``prefix + field``, the value and what
    was expected."""
    hints = _hints(cls)
    for name, v in values.items():
        if name in hints and not _fits(v, hints[name]):
            raise ValueError(f"{prefix}{name} must be {_describe(hints[name])}, got {v!r:.80}")


@functools.cache
def _hints(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _fits(v: Any, tp: Any) -> bool:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if tp is type(None):
        return v is None
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if tp is float:
        return isinstance(v, int | float) and not isinstance(v, bool)
    if tp is str:
        return isinstance(v, str)
    if dataclasses.is_dataclass(tp):
        return isinstance(v, tp | dict)
    if tp is dict or origin is dict:
        return isinstance(v, dict) and (not args or all(_fits(k, args[0]) and _fits(x, args[1]) for k, x in v.items()))
    if tp in (list, tuple) or origin in (list, tuple):
        if not isinstance(v, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(v) == len(args) and all(_fits(x, a) for x, a in zip(v, args))
        return not args or all(_fits(x, args[0]) for x in v)
    return True  # a type this check does not know: left to the class


_NAMES = {int: ("an int", "ints"), float: ("a number", "numbers"), str: ("a string", "strings"),
          bool: ("true or false", "booleans"), type(None): ("null", "nulls")}


def _describe(tp: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _NAMES:
        return _NAMES[tp][plural]
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in sorted(args, key=lambda a: a is type(None)))
    if tp is dict or origin is dict or dataclasses.is_dataclass(tp):
        if plural:
            return "mappings"
        return f"a mapping of {_describe(args[1], True)}" if args and args[1] is not Any else "a mapping"
    if tp in (list, tuple) or origin in (list, tuple):
        if plural:
            return "lists"
        if origin is tuple and args and args[-1] is not Ellipsis:
            return f"a list of {len(args)} {_describe(args[0], True)}" if len(set(args)) == 1 else \
                f"a list [{', '.join(_describe(a) for a in args)}]"
        return f"a list of {_describe(args[0], True)}" if args and args[0] is not Any else "a list"
    return "anything" if tp is Any else getattr(tp, "__name__", str(tp))


@dataclass
class CodecConfig:
    variant: str = "sac"
    sample_rate: int = 16000
    # Analysis/synthesis frames: hop 320 @ 16 kHz = 50 Hz, window 4x hop as in Vocos/WavTokenizer.
    # All heavy compute runs at this frame rate, never at the sample rate (the CPU budget, §8).
    hop_length: int = 320
    n_fft: int = 1280
    n_mels: int = 80
    # Width and depth: 256 channels and a handful of ConvNeXt blocks keep encode+decode well above
    # 50x real time on one CPU thread and training in minutes, at the cost of fidelity.
    dim: int = 256
    mlp_ratio: int = 3
    kernel_size: int = 7
    encoder_blocks: int = 4        # at 50 Hz
    encoder_low_blocks: int = 2    # at the semantic rate
    decoder_blocks: int = 6        # at 50 Hz
    causal: bool = False           # causal convs + left-padded framing -> streaming (secousticodec)
    # Rates: semantic frames = 50 Hz / semantic_stride; acoustic frames = 50 Hz / acoustic_stride.
    # 12.5 Hz semantic stream because the LM decodes one semantic token per step (§8).
    semantic_stride: int = 4
    acoustic_stride: int = 1
    # Semantic stream.
    semantic_codebook_size: int = 1024
    n_semantic_codebooks: int = 1
    teacher_dim: int = 512         # Whisper-base encoder width (the embedded default teacher)
    teacher_rate: float = 50.0
    # Acoustic stream (0 codebooks = none).
    acoustic_codebook_size: int = 16384
    n_acoustic_codebooks: int = 1
    acoustic_codebook_dim: int = 8  # factorised VQ lookup dim (SAC uses 8)
    # SecoustiCodec: FSQ levels of the single semantic codebook ([3]*8 = 6561 codes, 12.68 bit).
    fsq_levels: list[int] = field(default_factory=lambda: [3] * 8)
    vae_dim: int = 64
    global_dim: int = 128          # paralinguistic embedding size
    global_crop_s: float = 3.0     # mel crop the global embedding is pooled from
    text_vocab_size: int = 256     # must equal the sentencepiece model's vocabulary
    text_dim: int = 128
    text_layers: int = 2
    align_temperature: float = 0.1
    # SACodec anchoring: the projector's cross-entropy against the teacher units uses logits
    # -||p - c||^2 / T. T = 0 means sqrt(teacher_dim): Whisper-base centroids sit ~140-840 apart in
    # squared distance, so this gives logit gaps of ~6-40 (dividing by teacher_dim instead left them
    # at ~0.3-1.6, a flat softmax whose loss never moved, and the semantic stream collapsed).
    anchor_temperature: float = 0.0
    # STACodec: semantic pre-distillation (SPD) head, a pre-norm transformer over the pre-quantisation
    # features at the semantic rate that predicts the teacher units (STACodec: 8 layers, width 768).
    # At 12.5 Hz a head of 4 layers x 256 wide costs little next to the 50 Hz conv stacks, so the
    # default codec stays far above real time on one CPU thread (DESIGN.md §8); the paper's size
    # would multiply the encoder's cost for a head that only has to classify ~1000 units.
    spd_layers: int = 4
    spd_dim: int = 256
    spd_heads: int = 4             # head width spd_dim / spd_heads = 64, rotary needs it even
    spd_ff_ratio: int = 4          # feed-forward width = spd_ff_ratio * spd_dim (the usual 4x)
    # Causal configs only: each SPD layer attends to itself and this many previous semantic frames.
    # A bounded window keeps the receptive field finite (spd_layers * spd_context frames), so the
    # chunked streamer recomputes a finite left context and still equals the offline pass; 8 frames
    # = 0.64 s per layer at 12.5 Hz. Non-causal configs attend over the whole utterance (as STACodec).
    spd_context: int = 8
    spd_mask_prob: float = 0.5     # time/feature masking probability in training (STACodec: 0.5)
    # Depth of the former convolutional SPD head; unused, kept so older config files still parse
    # (checkpoints with that head are refused at load with a clear message).
    spd_blocks: int = 3
    sta_ema_decay: float = 0.99
    commitment_weight: float = 0.25
    # Acoustic dropout (sac, sacodec; training only): the share of batch items decoded from the semantic
    # stream alone (their acoustic contribution zeroed), so the decoder learns to speak from the semantic
    # tokens, the stream the speech LM writes. 0 = off (the seed papers).
    acoustic_dropout: float = 0.0
    loss_weights: dict[str, float] = field(default_factory=_default_loss_weights)

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown codec variant {self.variant!r}; expected one of {VARIANTS}")
        if self.n_fft < self.hop_length or self.n_fft % self.hop_length:
            raise ValueError(f"n_fft must be a multiple of hop_length, got {self.n_fft} and {self.hop_length}")
        if self.semantic_stride % self.acoustic_stride:
            raise ValueError("semantic_stride must be a multiple of acoustic_stride (integer r), got "
                             f"{self.semantic_stride} and {self.acoustic_stride}")
        if not 0.0 <= self.acoustic_dropout < 1.0:
            raise ValueError(f"acoustic_dropout must lie in [0, 1), got {self.acoustic_dropout}")
        if self.acoustic_dropout and self.variant not in TWO_STREAM:
            raise ValueError("acoustic_dropout applies to the two-stream variants 'sac' and 'sacodec' (their decoder "
                             f"sums or fuses the streams), not {self.variant!r}")
        if self.variant == "secousticodec":
            self.n_acoustic_codebooks = 0
            self.semantic_codebook_size = math.prod(self.fsq_levels)
        if self.variant in ("stacodec", "rvq", "distill"):
            # RVQ variants: semantic = RVQ-1, acoustic = RVQ 2..N, same rate and codebook size.
            self.acoustic_stride = self.semantic_stride
            self.acoustic_codebook_size = self.semantic_codebook_size
        if self.n_acoustic_codebooks == 0:
            self.acoustic_codebook_size = 0
        if self.variant == "stacodec":
            if self.spd_layers < 1 or self.spd_heads < 1 or self.spd_dim % self.spd_heads \
                    or (self.spd_dim // self.spd_heads) % 2:
                raise ValueError("the SPD head needs spd_layers >= 1 and spd_dim divisible by spd_heads into "
                                 f"even head widths (rotary), got spd_layers={self.spd_layers}, "
                                 f"spd_dim={self.spd_dim}, spd_heads={self.spd_heads}")
            if self.causal and self.spd_context < 1:
                raise ValueError("a causal stacodec needs spd_context >= 1 (a bounded attention window keeps "
                                 f"it streamable), got {self.spd_context}")

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def semantic_rate(self) -> float:
        return self.frame_rate / self.semantic_stride

    @property
    def acoustic_rate(self) -> float:
        return self.frame_rate / self.acoustic_stride if self.n_acoustic_codebooks else 0.0

    @property
    def ratio(self) -> int:
        return self.semantic_stride // self.acoustic_stride

    @property
    def bitrate(self) -> float:
        bits = self.semantic_rate * self.n_semantic_codebooks * math.log2(self.semantic_codebook_size)
        if self.n_acoustic_codebooks:
            bits += self.acoustic_rate * self.n_acoustic_codebooks * math.log2(self.acoustic_codebook_size)
        return bits

    # ---- construction / serialisation ---------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodecConfig:
        check_keys(cls, d, "CodecConfig")
        check_types(cls, d)
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path) -> CodecConfig:
        d = load_yaml_mapping(path, "codec config")
        if isinstance(d.get("loss_weights"), dict):
            d["loss_weights"] = {**_default_loss_weights(), **d["loss_weights"]}
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def to_yaml(self, path: str | Path) -> None:
        import yaml

        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))

    @classmethod
    def default(cls, variant: str) -> CodecConfig:
        """The real default of a variant (the same values as ``configs/codec/<variant>.yaml``)."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown codec variant {variant!r}; expected one of {VARIANTS}")
        per_variant: dict[str, dict[str, Any]] = {
            # 12.5 Hz x 10 bit teacher units + 50 Hz x 14 bit factorised VQ = 825 bps (SAC: 875 bps).
            "sac": {"acoustic_codebook_size": 16384},
            # 12.5 Hz x 10 bit anchored units + 50 Hz x 13 bit SimVQ = 775 bps.
            "sacodec": {"acoustic_codebook_size": 8192, "acoustic_codebook_dim": 64},
            # Causal, 12.5 Hz x log2(6561) = 158 bps (LM-friendly low-bitrate setting; see the
            # 1 kbps yaml for 80 Hz x 12.68 bit = 1014 bps).
            "secousticodec": {"causal": True, "n_acoustic_codebooks": 0},
            # 12.5 Hz x 8 codebooks x 10 bit = 1000 bps (Mimi-like rate, STACodec's 8-layer RVQ).
            "stacodec": {"n_acoustic_codebooks": 7},
            "rvq": {"n_acoustic_codebooks": 7},
            "distill": {"n_acoustic_codebooks": 7},
        }
        return cls(variant=variant, **per_variant[variant])

    @classmethod
    def tiny(cls, variant: str) -> CodecConfig:
        """A very small configuration for tests (seconds on one thread)."""
        base = cls.default(variant).to_dict()
        base.update(
            dim=32, mlp_ratio=2, n_mels=24, encoder_blocks=1, encoder_low_blocks=1, decoder_blocks=1,
            teacher_dim=16, semantic_codebook_size=16, vae_dim=8, global_dim=8, text_dim=16,
            text_layers=1, text_vocab_size=40, global_crop_s=0.5,
            spd_layers=2, spd_dim=32, spd_heads=2, spd_ff_ratio=2, spd_context=4,
        )
        if variant == "secousticodec":
            base["fsq_levels"] = [3, 3, 3]
        if variant in ("sac", "sacodec"):
            base.update(acoustic_codebook_size=64, acoustic_codebook_dim=4 if variant == "sac" else 16)
        if variant in ("stacodec", "rvq", "distill"):
            base["n_acoustic_codebooks"] = 2
        return cls.from_dict(base)
