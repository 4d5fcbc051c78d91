"""Training configuration of the codec GAN trainer (one YAML file, one dataclass)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codec.config import MODEL_LOSSES, check_keys, check_types, load_yaml_mapping
from codec.discriminators import DiscriminatorConfig
from codec.losses import ReconstructionLossConfig

# Trainer-side weights; the model's own terms are weighted by its config (CodecConfig.loss_weights).
TRAINER_WEIGHTS = {"mel/l1": 15.0, "stft/sc": 0.0, "stft/mag": 0.0, "adv/gen": 1.0, "adv/feat": 2.0}


@dataclass
class CodecTrainConfig:
    # Model: a CodecConfig YAML path, or an inline dict of CodecConfig fields. ``tiny: <variant>``
    # inside the dict builds CodecConfig.tiny(variant) and applies the remaining keys on top.
    model: str | dict[str, Any] = "configs/codec/sac.yaml"
    out_dir: str = "runs/codec"
    export_dir: str | None = None  # where the final EMA generator is saved (default: <out_dir>/final)
    # Data: the JSONL manifest; only rows of ``train_split`` are trained on.
    manifest: str = "data/synth2h/manifest.jsonl"
    train_split: str = "train"
    valid_split: str = "valid"
    # Teacher caches written by `slm codec teacher-cache` / `slm codec kmeans` (read, never computed
    # here: a teacher forward per step would cost more than the codec itself on CPU).
    teacher_features: str | None = None
    teacher_units: str | None = None
    teacher_centroids: str | None = None  # k-means .safetensors handed to model.set_teacher_codebook
    text_tokenizer: str | None = None     # sentencepiece model (secousticodec); trained if missing
    batch_size: int = 8
    segment_seconds: float = 2.0  # SAC: 2.4 s, STACodec: 3 s; shorter keeps CPU steps cheap
    num_workers: int = 0
    # Optimisation (SAC: AdamW lr 1e-4, betas (0.8, 0.9), exponential decay; we train far fewer
    # steps, so a higher lr).
    lr: float = 3e-4
    disc_lr: float = 3e-4
    betas: tuple[float, float] = (0.8, 0.9)
    weight_decay: float = 0.0
    lr_decay: float = 0.999996  # per-step exponential decay (ExponentialLR), lr_schedule "exponential"
    # "cosine": from lr down to lr * lr_min_ratio at `steps` (after lr_warmup linear warm-up steps), the
    # anneal a constant-lr run never gets. The discriminator's schedule counts its own steps (from
    # warmup_adv_steps on). A run stopped by max_minutes before `steps` has not annealed (training.json
    # says stopped_by_time); raising `steps` on resume stretches the schedule.
    lr_schedule: str = "exponential"
    lr_min_ratio: float = 0.05
    lr_warmup: int = 0
    grad_clip: float = 1000.0   # DAC clips at 1e3: only catches blow-ups
    steps: int = 1000
    # Start from a finished codec (a `save_pretrained` dir, e.g. <run>/final) instead of random weights;
    # its config must equal this run's model config. The discriminator starts fresh.
    init_from: str | None = None
    # Train only the parameters under these module names (e.g. ["decoder", "bottleneck.ac_out"]); the
    # rest is frozen and kept in eval mode. ["decoder"] is a decoder fine-tune: the encoder and the
    # quantisers, hence every token, stay exactly as they were, so a speech LM trained on the codec's
    # tokens stays valid while its audio gets better. None/[] = train everything. With train_only, teacher
    # caches are optional (they only feed losses of frozen modules; sac still needs units to encode), so a
    # decoder can fine-tune on a manifest that has none, e.g. a larger corpus. Modules that hold a
    # trained one stay in train mode: e.g. secousticodec's bottleneck samples its VAE latent in training,
    # so train_only: [bottleneck.x] there trains on sampled latents.
    train_only: list[str] | str | None = None  # one module name may be given as a string
    # Decoder fine-tunes only: a token dir (`slm head-tokens`) whose acoustic codes a speech LM's acoustic
    # head sampled for each utterance from its true semantic tokens. A share ``head_token_prob`` of the
    # batch items is decoded from those tokens (cropped to the item's crop) instead of the codec's own, so
    # the decoder learns to voice what the head gives it, the way a vocoder is fine-tuned on a TTS model's
    # ground-truth-aligned features. The target audio is the item's own audio either way.
    head_tokens: str | None = None
    head_token_prob: float = 0.5
    max_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    # The adversarial terms start after this many steps (SAC: 1500): a random generator gives the
    # discriminator an easy win that destabilises training.
    warmup_adv_steps: int = 200
    adv_kind: str = "hinge"
    ema_decay: float = 0.999
    ckpt_every: int = 200
    keep_last: int = 3
    log_every: int = 10
    sample_every: int = 500  # TensorBoard audio + mel figures
    mixed_precision: str = "no"  # "bf16" halves step time on CPUs with AMX (DESIGN.md §8)
    seed: int = 0
    export_fp16: bool = True
    # SecoustiCodec's "acoustic-constrained multi-stage optimisation" (arXiv 2508.02849 gives no stage
    # details; our reading is documented in codec/modules/secousti.py). Steps [0, semantic_stage_step):
    # acoustic stage (the decoder reads the continuous acoustic embedding, the token path learns to
    # predict it, no text alignment); then the semantic stage (tokens + alignment, acoustic encoder and
    # decoder frozen when semantic_stage_freeze); from joint_stage_step (0 = never) all trains.
    # 0 = one stage from the first step (every other variant; the behaviour before stages existed).
    semantic_stage_step: int = 0
    joint_stage_step: int = 0
    semantic_stage_freeze: bool = True
    # Trainer-side loss weights ("recon/*", "adv/*"); model-side ones come from the model config and
    # can be overridden here by name.
    loss_weights: dict[str, float] = field(default_factory=dict)
    recon: ReconstructionLossConfig = field(default_factory=ReconstructionLossConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field (types, ranges, names). Runs on construction, and again in ``train`` on the final
        config: the CLI's --steps / --max-minutes are set after the file is read."""
        if isinstance(self.train_only, str):
            self.train_only = [self.train_only]
        check_types(type(self), vars(self))
        if self.adv_kind not in ("hinge", "lsgan"):
            raise ValueError(f"adv_kind must be 'hinge' or 'lsgan', got {self.adv_kind!r}")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ValueError(f"mixed_precision must be 'no', 'bf16' or 'fp16', got {self.mixed_precision!r}")
        if self.batch_size < 1 or self.steps < 1 or self.segment_seconds <= 0:
            raise ValueError("batch_size and steps must be >= 1 and segment_seconds > 0, got "
                             f"{self.batch_size}, {self.steps}, {self.segment_seconds}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0 (or null: no time limit), got {self.max_minutes}")
        unknown = sorted(set(self.loss_weights) - {*TRAINER_WEIGHTS, *MODEL_LOSSES})
        if unknown:
            raise ValueError(f"unknown loss_weights names {unknown}; the losses are "
                             f"{sorted({*TRAINER_WEIGHTS, *MODEL_LOSSES})}")
        if self.semantic_stage_step < 0 or self.joint_stage_step < 0 or (
                self.joint_stage_step and self.joint_stage_step <= self.semantic_stage_step):
            raise ValueError("stage steps must be >= 0 with joint_stage_step after semantic_stage_step (or 0), "
                             f"got semantic_stage_step={self.semantic_stage_step}, "
                             f"joint_stage_step={self.joint_stage_step}")
        if self.lr_schedule not in ("exponential", "cosine"):
            raise ValueError(f"lr_schedule must be 'exponential' or 'cosine', got {self.lr_schedule!r}")
        if not 0.0 <= self.lr_min_ratio <= 1.0 or self.lr_warmup < 0:
            raise ValueError(f"lr_min_ratio must lie in [0, 1] and lr_warmup be >= 0, got {self.lr_min_ratio}, "
                             f"{self.lr_warmup}")
        if self.train_only is not None:
            self.train_only = list(self.train_only)
            if self.train_only and (self.semantic_stage_step or self.joint_stage_step):
                raise ValueError("train_only and secousticodec's stage schedule both decide what trains: set one "
                                 "(semantic_stage_step/joint_stage_step = 0 with train_only)")
        if not 0.0 <= self.head_token_prob <= 1.0:
            raise ValueError(f"head_token_prob must lie in [0, 1], got {self.head_token_prob}")
        if self.head_tokens and not self.train_only:
            raise ValueError("head_tokens is for decoder fine-tunes: set train_only to the codec's decode-only "
                             "modules (e.g. [decoder, bottleneck.ac_out, bottleneck.ac_up]) and init_from")
        if isinstance(self.recon, dict):
            self.recon = _build(ReconstructionLossConfig, self.recon, "recon")
        if isinstance(self.discriminator, dict):
            self.discriminator = _build(DiscriminatorConfig, self.discriminator, "discriminator")
        self.betas = tuple(self.betas)  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CodecTrainConfig:
        return _build(cls, d, "codec train config")

    @classmethod
    def from_yaml(cls, path: str | Path) -> CodecTrainConfig:
        d = load_yaml_mapping(path, "codec train config")
        # Relative paths in a config are relative to the working directory (the repo root), as in
        # the shipped configs; nothing to resolve here.
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_config(self):
        """Build the CodecConfig this run trains."""
        from codec.config import CodecConfig

        if isinstance(self.model, str):
            return CodecConfig.from_yaml(self.model)
        d = dict(self.model)
        if "tiny" in d:
            base = CodecConfig.tiny(d.pop("tiny")).to_dict()
        elif "default" in d:
            base = CodecConfig.default(d.pop("default")).to_dict()
        else:
            base = {}
        lw = {**base.get("loss_weights", {}), **d.pop("loss_weights", {})}
        base.update(d)
        if lw:
            base["loss_weights"] = lw
        return CodecConfig.from_dict(base)


def _build(cls, d: dict[str, Any], what: str):
    if not isinstance(d, dict):
        raise ValueError(f"a {what} must be a mapping of keys to values, got {d!r:.60}")  # noqa: TRY004 (bad input)
    check_keys(cls, d, what)
    check_types(cls, d, "" if cls is CodecTrainConfig else f"{what}.")  # the values as written (lists)
    d = {k: (tuple(tuple(x) if isinstance(x, list) else x for x in v) if isinstance(v, list) else v)
         for k, v in d.items()}
    return cls(**d)
