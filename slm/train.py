"""`slm train --config FILE`: LoRA + acoustic-head fine-tuning of a causal LM on codec tokens.

Runs through accelerate: one CPU process, several CPU processes (gloo), several GPUs, or FSDP/DeepSpeed
chosen by ``accelerate config``; FSDP2 (``fsdp_version: 2``) also on CPU, which accelerate itself only
offers on GPUs (:func:`_accelerator`, ``configs/accelerate/fsdp_cpu.yaml``). Data order is a pure function
of (seed, step, rank), and checkpoints hold the trainable weights, optimizer, scheduler and (per-rank) RNG
state, so killing and resuming gives exactly the parameters of an uninterrupted run.
"""
from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from slm.acoustic_head import AcousticHead, AcousticHeadConfig, acoustic_ratio, frame_context
from slm.lm_data import Batch, TaskMix, Utterance, collate, load_tokens, make_examples, pack
from slm.packing import check_packing, lm_inputs

# "auto": bf16 where supported (CUDA bf16 or CPU AMX/avx512_bf16); the rest are accelerate's modes
MIXED_PRECISION = ("auto", "no", "bf16", "fp16", "fp8")


@dataclass
class TrainConfig:
    """Everything a run needs; YAML keys map 1:1 onto these fields."""

    codec: str = ""  # codec model dir (save_pretrained) used to make / decode the tokens
    tokens: str = ""  # token dir with index.jsonl; built from `manifest` (cached) when empty
    manifest: str = ""
    out_dir: str = "checkpoints/slm/run"
    backbone: str = "smollm2-135m"  # hub id, local dir, or the embedded default
    # a speech-LM model dir ("default" = the bundled one) to fine-tune further: its LoRA adapter, new-token
    # rows and acoustic head are the starting point (their settings replace `lora` / `head`); `codec` then
    # defaults to the model's own codec, and the tokens must come from that codec
    init_from: str = ""
    # init_from a model trained on ANOTHER codec (a new codec, same number of semantic codes): the run's code j
    # starts from the model's row of the old code whose teacher centroid lies nearest to j's (sac / sacodec:
    # both codecs' semantic codes are k-means centroids in one teacher's feature space); the LoRA adapter is
    # kept, the acoustic head starts fresh (`head` settings apply: the old head's codebooks are gone).
    # `codec` must name the run's codec. See :func:`semantic_remap`.
    remap_semantic: bool = False
    lora: dict = field(default_factory=dict)  # adapters.lora.LoraSettings fields
    head: dict = field(default_factory=dict)  # AcousticHeadConfig overrides (dim, n_layers, n_heads, ...)
    tasks: dict = field(default_factory=dict)  # TaskMix: tts / asr / continue ratios, prompt_prob
    train_lm: bool = True  # False: freeze the LM (head-only stage after LM training)
    head_weight: float = 1.0  # loss = lm + head_weight * head (Moshi weights its depth stream similarly)
    max_len: int = 768  # tokens per packed sequence
    # "block": several examples per row, each attending only to itself with positions from 0 (what it
    # meets at inference; slm.packing); "concat": causal over the whole row (older runs); "none": one per row
    packing: str = "block"
    batch_size: int = 2  # packed sequences per micro-batch per process
    grad_accum: int = 1
    lr: float = 2e-4  # LoRA + new token rows
    head_lr: float = 1e-3  # the head is trained from scratch: higher lr
    weight_decay: float = 0.0
    warmup: int = 10
    steps: int = 100
    max_grad_norm: float = 1.0
    mixed_precision: str = "auto"  # "auto": bf16 where supported (CUDA bf16 or CPU AMX/avx512_bf16), "no", "bf16", "fp16"
    eval_every: int = 50
    eval_batches: int = 4
    eval_samples: int = 2  # TTS/ASR samples written per evaluation (0 = none)
    eval_tts_wer: bool = False  # also transcribe the TTS samples with the Whisper judge (adapters.judges)
    save_every: int = 50
    log_every: int = 5
    seed: int = 0
    max_utterances: int | None = None  # subset for quick runs
    valid_split: str = "valid"
    save_half: bool = False  # fp16 weights in the final model dir (small bundles)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides) -> TrainConfig:
        from codec.config import check_keys, load_yaml_mapping

        d = load_yaml_mapping(path, "training config")
        d.update({k: v for k, v in overrides.items() if v is not None})
        try:
            check_keys(cls, d, "training config")
            return cls(**d)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Check every field (types, ranges, the keys of ``lora`` / ``head`` / ``tasks``) before any work. Runs on
        construction and again in :func:`train` on the final config."""
        from adapters.lora import LoraSettings
        from codec.config import check_keys, check_types

        check_types(type(self), vars(self))
        for name, kind in (("lora", LoraSettings), ("head", AcousticHeadConfig)):
            check_keys(kind, getattr(self, name), name)
            check_types(kind, getattr(self, name), f"{name}.")
        TaskMix.from_dict(self.tasks)
        check_packing(self.packing)
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"mixed_precision must be one of {', '.join(map(repr, MIXED_PRECISION))}, "
                             f"got {self.mixed_precision!r}")
        for name in ("steps", "batch_size", "grad_accum", "max_len", "save_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.remap_semantic and not (self.init_from and self.codec):
            raise ValueError("remap_semantic maps a model's semantic rows onto a new codec: set init_from (the model) "
                             "and codec (the new codec the tokens come from)")


class SpeechLM(nn.Module):
    """The LoRA backbone and the acoustic head as one module (so accelerate/DDP wraps both)."""

    def __init__(self, lm: nn.Module, head: AcousticHead | None, head_weight: float, train_lm: bool,
                 packing: str = "block", text_vocab: int | None = None):
        super().__init__()
        self.lm, self.head, self.head_weight, self.train_lm = lm, head, head_weight, train_lm
        self.packing = check_packing(packing)
        self.text_vocab = text_vocab  # ids below it are text: lm/loss is also logged split into text / audio targets

    @property
    def _no_split_modules(self) -> list[str]:
        """The backbone's block classes (e.g. ``LlamaDecoderLayer``): what FSDP's ``TRANSFORMER_BASED_WRAP``
        shards as one unit when no ``fsdp_transformer_layer_cls_to_wrap`` is given."""
        return list(getattr(self.lm, "_no_split_modules", None) or [])

    @torch.no_grad()
    def _split_loss(self, logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
        """``lm/loss_text`` (ASR transcripts, prompts' text targets) and ``lm/loss_audio`` (semantic tokens and
        span ends): the mean cross-entropy over each kind of target, so the ASR path's progress is visible
        next to the TTS/continuation one. NaN for a kind the batch has none of."""
        lab = labels[:, 1:]
        keep = lab >= 0
        tgt = lab[keep]
        ce = F.cross_entropy(logits[:, :-1][keep].float(), tgt, reduction="none")  # only the scored positions
        out = {}
        for name, m in (("text", tgt < self.text_vocab), ("audio", tgt >= self.text_vocab)):
            out[f"lm/loss_{name}"] = ce[m].mean() if m.any() else torch.tensor(float("nan"))
        return out

    def forward(self, b: Batch) -> dict[str, Tensor]:
        # the head gathers hidden states at fixed row positions (b.head_mask): with "block" packing each of
        # them is the state of its example alone, exactly as at inference
        inputs = lm_inputs(self.lm, b.input_ids, b.attention_mask, b.segment_ids, self.packing)
        with torch.set_grad_enabled(self.train_lm and torch.is_grad_enabled()):
            out = self.lm(**inputs, labels=b.labels, output_hidden_states=self.head is not None)
        losses = {"lm/loss": out.loss.float()}
        if self.text_vocab is not None and out.logits is not None:
            losses.update(self._split_loss(out.logits, b.labels))
        total = out.loss.float() if self.train_lm else out.loss.float().detach()
        if self.head is not None and b.head_mask.any():
            h = out.hidden_states[-1][b.head_mask]  # [N, D]
            if not self.train_lm:
                h = h.detach()
            voice = None
            if b.voices:
                v = [self.head.voice_vector(None if g is None else g[None].to(h.device), r.to(h.device))
                     for g, r in zip(b.globals_, b.voices)]
                voice = torch.cat(v)[b.head_item[b.head_mask]]
            codes = b.head_codes[b.head_mask]
            ctx = None
            if self.head.cfg.context:  # each example's frames are consecutive head rows, in time order
                ctx = frame_context(codes, b.head_item[b.head_mask], self.head.cfg.context)
            ho = self.head(h.float(), b.head_sem[b.head_mask], codes, voice, ctx)
            losses["head/loss"], losses["head/acc"] = ho.loss, ho.accuracy.detach()
            total = total + self.head_weight * ho.loss
        losses["loss"] = total
        return losses


def _batch_to(b: Batch, device) -> Batch:
    return Batch(*[getattr(b, f).to(device) if isinstance(getattr(b, f), Tensor) else getattr(b, f)
                   for f in b.__dataclass_fields__])


class BatchSource:
    """Micro-batch ``g`` for rank ``rank``: a pure function of (seed, g), so resume is exact."""

    def __init__(self, utts: list[Utterance], tokenizer, layout, mix: TaskMix, cfg: TrainConfig, frame_len: int,
                 rank: int = 0, world: int = 1):
        self.utts, self.tok, self.layout, self.mix, self.cfg = utts, tokenizer, layout, mix, cfg
        self.frame_len, self.rank, self.world = frame_len, rank, world
        self._epoch, self._packs = -1, []
        self.per_epoch = max(1, len(self._epoch_packs(0)) // (cfg.batch_size * world))

    def _epoch_packs(self, epoch: int):
        if epoch != self._epoch:
            ex = make_examples(self.utts, self.tok, self.layout, self.mix, self.cfg.seed, epoch)
            self._packs = pack(ex, self.cfg.max_len, one_per_row=self.cfg.packing == "none")
            self._epoch = epoch
            if not self._packs:
                raise ValueError(f"no example fits max_len={self.cfg.max_len} tokens; raise max_len")
        return self._packs

    def __call__(self, g: int) -> Batch:
        epoch, i = divmod(g, self.per_epoch)
        packs = self._epoch_packs(epoch)
        bs = self.cfg.batch_size
        start = ((i * self.world + self.rank) * bs) % len(packs)
        chosen = [packs[(start + k) % len(packs)] for k in range(bs)]
        return collate(chosen, self.utts, self.tok.pad_token_id, self.frame_len, self.layout.semantic_offset)


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    try:
        flags = Path("/proc/cpuinfo").read_text()
        return "bf16" if ("amx_bf16" in flags or "avx512_bf16" in flags) else "no"
    except OSError:
        return "no"


def _lr_lambda(cfg: TrainConfig):
    def f(step: int) -> float:
        if step < cfg.warmup:
            return (step + 1) / max(1, cfg.warmup)
        t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))  # cosine to 10 %

    return f


def _accelerator(mixed_precision: str, cfg: TrainConfig | None = None):
    """The run's ``Accelerator``: ``cpu=True`` when there is no GPU (accelerate then picks up torchrun ranks as
    MULTI_CPU, gloo). accelerate only turns FSDP on for GPU ranks and silently falls back to DDP on CPU;
    since FSDP2 (``fully_shard``) itself works on CPU over gloo, a CPU run launched with FSDP2 (an accelerate
    config with ``distributed_type: FSDP`` and ``fsdp_version: 2``, or ``ACCELERATE_USE_FSDP=true
    FSDP_VERSION=2``) is switched to accelerate's FSDP2 path here. FSDP1 on CPU is refused, not ignored.

    DeepSpeed (``distributed_type: DEEPSPEED``): accelerate only sets it up when not told ``cpu=True``, and
    DeepSpeed itself runs on CPU (its CPU accelerator, gloo or oneCCL), so a DeepSpeed launch never passes
    ``cpu``. ZeRO stages 0-2 are supported (weights whole on every rank); the micro-batch, gradient
    accumulation and clipping come from ``cfg`` (:func:`_deepspeed_config`)."""
    from accelerate import Accelerator
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    deepspeed = deepspeed_launch()
    cpu = not torch.cuda.is_available() and not deepspeed
    # step_scheduler_with_optimizer=False: each rank steps the schedule once per optimizer step (every rank
    # draws its own batches; accelerate would otherwise step it once per process, running it num_processes
    # times too fast)
    handlers = []
    if deepspeed and not torch.cuda.is_available():
        # accelerate knows no CPU backend for DeepSpeed ranks (it would count one process): name DeepSpeed's own
        from accelerate.utils import InitProcessGroupKwargs
        from deepspeed.accelerator import get_accelerator

        handlers.append(InitProcessGroupKwargs(backend=get_accelerator().communication_backend_name()))
    # DeepSpeed accumulates itself (its gradient_accumulation_steps); accelerate is told the same number
    accum = cfg.grad_accum if deepspeed and cfg is not None else 1
    acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu, step_scheduler_with_optimizer=False,
                      kwargs_handlers=handlers, gradient_accumulation_steps=accum)
    want_fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if cpu and want_fsdp and acc.distributed_type == DistributedType.MULTI_CPU:
        plugin = FullyShardedDataParallelPlugin()  # FSDP_* variables, as accelerate reads them
        if plugin.fsdp_version != 2:
            raise ValueError("FSDP on CPU is supported with FSDP2 only: set fsdp_version: 2 in the accelerate config "
                             "(FSDP_VERSION=2)")
        if acc.mixed_precision != "no":
            plugin.set_mixed_precision(acc.mixed_precision)
        acc.state.fsdp_plugin = plugin
        acc.state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if _is_deepspeed(acc) and cfg is not None:
        _deepspeed_config(acc, cfg)
    return acc


def deepspeed_launch() -> bool:
    """Whether this process was launched for DeepSpeed (an accelerate config with ``distributed_type: DEEPSPEED``)."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


def _is_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc is not None and acc.distributed_type == DistributedType.DEEPSPEED


def _deepspeed_config(acc, cfg: TrainConfig) -> None:
    """Fill the DeepSpeed config from the training config: the micro-batch per rank, gradient accumulation
    (DeepSpeed accumulates and scales the loss itself) and clipping. A value written in the DeepSpeed config
    that disagrees is an error, not silently one or the other; ZeRO-3 (sharded weights) is refused: use FSDP2
    (``configs/accelerate/fsdp_cpu.yaml``) for that."""
    ds = acc.state.deepspeed_plugin.deepspeed_config
    stage = int(ds.get("zero_optimization", {}).get("stage", 0))
    if stage > 2:
        raise ValueError(f"DeepSpeed ZeRO stage {stage} shards the weights, which slm train does not gather: use "
                         "ZeRO stage 0-2, or FSDP2 for sharded weights (configs/accelerate/fsdp_cpu.yaml)")
    want = {"train_micro_batch_size_per_gpu": cfg.batch_size, "gradient_accumulation_steps": cfg.grad_accum,
            "gradient_clipping": float(cfg.max_grad_norm or 0.0),
            "train_batch_size": cfg.batch_size * cfg.grad_accum * acc.num_processes}
    for k, v in want.items():
        have = ds.get(k, "auto")
        # accelerate writes gradient_accumulation_steps: 1 and gradient_clipping: 1.0 into its own configs by
        # default: those yield to the training config
        if have not in ("auto", None, v) and not (k == "gradient_accumulation_steps" and have == 1) \
                and not (k == "gradient_clipping" and have == 1.0):
            raise ValueError(f"the DeepSpeed config sets {k}={have} but the training config gives {v}: set it to "
                             "'auto' (batch size, accumulation and clipping come from the training config)")
        ds[k] = v


def _is_fsdp(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc is not None and acc.distributed_type == DistributedType.FSDP


def _full(t: Tensor) -> Tensor:
    """``t`` whole: FSDP2 keeps each rank's shard as a DTensor (gathering it is a collective: every rank calls)."""
    t = t.detach()
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _reshard(model: nn.Module) -> None:
    """FSDP2 leaves the groups it does not reshard after forward (the root, the embeddings / final norm)
    whole after a forward without backward (evaluation): shard them again, so ``named_parameters`` are the
    DTensors the optimizer holds. A no-op without FSDP."""
    from torch.distributed.fsdp import FSDPModule

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()


def _trainable_state(model: SpeechLM) -> dict[str, Tensor]:
    """Trainable weights by name, whole (under FSDP a collective: call it on every rank)."""
    return {n: _full(p).cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model: SpeechLM, sd: dict[str, Tensor], where: str) -> None:
    """Copy whole trainable weights in; an FSDP2 model takes its own shard of each (no communication)."""
    params = dict(model.named_parameters())
    missing = [n for n, p in params.items() if p.requires_grad and n not in sd]
    if missing:
        raise ValueError(f"checkpoint {where} lacks trainable params {missing[:4]} (config changed?)")
    with torch.no_grad():
        for n, t in sd.items():
            p = params[n]
            if hasattr(p, "device_mesh"):  # DTensor
                from torch.distributed.tensor import distribute_tensor

                t = distribute_tensor(t.to(p.dtype), p.device_mesh, p.placements, src_data_rank=None)
            p.copy_(t)


def save_checkpoint(d: Path, model: SpeechLM, opt, sched, step: int, acc=None) -> None:
    """Trainable weights, optimizer, scheduler and RNG state; the main process writes. With several processes
    every rank must call it: each rank's RNG state is gathered (the acoustic head's conditioning dropout draws
    from it, and ranks draw different amounts), and under FSDP the weights and optimizer state are gathered
    whole (the checkpoint does not depend on the number of ranks). Under DeepSpeed each rank writes its own
    ZeRO partition of the optimizer state (``deepspeed/``, DeepSpeed's format): such a checkpoint resumes
    under DeepSpeed with the same number of processes."""
    from codec.runtime import save_safetensors

    fsdp, ds = _is_fsdp(acc), _is_deepspeed(acc)
    tmp = d.with_name(d.name + ".tmp")
    rng_ranks = None
    if acc is not None and acc.num_processes > 1:
        rng_ranks = acc.gather(torch.get_rng_state()[None].to(acc.device)).cpu()  # [ranks, n]
    if ds:
        if acc.is_main_process:
            if tmp.exists():  # left by a killed save
                import shutil

                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        acc.wait_for_everyone()
        acc.deepspeed_engine_wrapped.engine.save_checkpoint(str(tmp / "deepspeed"), tag="zero", save_latest=False,
                                                            exclude_frozen_parameters=True)
        acc.wait_for_everyone()
    if acc is not None and not acc.is_main_process and not fsdp:
        return
    weights = _trainable_state(model)
    if ds:
        optim = None  # in deepspeed/
    elif fsdp:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        optim = get_optimizer_state_dict(model, getattr(opt, "optimizer", opt),
                                         options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        optim = opt.state_dict()
    if acc is not None and not acc.is_main_process:
        return
    tmp.mkdir(parents=True, exist_ok=True)
    save_safetensors(weights, str(tmp / "trainable.safetensors"))
    # opt_by_name: the optimizer state is keyed by parameter name (FSDP's full state dict), not by index
    torch.save({"opt": optim, "opt_by_name": fsdp, "deepspeed_world": acc.num_processes if ds else None,
                "sched": sched.state_dict(), "rng": torch.get_rng_state(), "rng_ranks": rng_ranks,
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}, tmp / "state.pt")
    (tmp / "step.json").write_text(json.dumps({"step": step}) + "\n")
    if d.exists():
        import shutil

        shutil.rmtree(d)
    tmp.rename(d)


def load_checkpoint(d: Path, model: SpeechLM, opt, sched, acc=None) -> int:
    """Restore what :func:`save_checkpoint` wrote (every rank reads it); returns the step."""
    from safetensors.torch import load_file

    st = torch.load(d / "state.pt", weights_only=False)
    ds_world = st.get("deepspeed_world")
    if ds_world is not None or _is_deepspeed(acc):
        if ds_world is None or not _is_deepspeed(acc):
            how = "under DeepSpeed" if ds_world is not None else "without DeepSpeed"
            raise ValueError(f"checkpoint {d} was written {how}: resume it the same way (or start a new out_dir)")
        if ds_world != acc.num_processes:
            raise ValueError(f"checkpoint {d} holds DeepSpeed ZeRO partitions of {ds_world} processes: resume it with "
                             f"{ds_world} processes, not {acc.num_processes}")
    _load_trainable(model, load_file(str(d / "trainable.safetensors")), str(d))
    if ds_world is not None:
        # the optimizer's partitions (and its fp32 master weights) from DeepSpeed's own files; the module's
        # trainable weights were just loaded, frozen ones are not in the checkpoint
        path, _ = acc.deepspeed_engine_wrapped.engine.load_checkpoint(
            str(d / "deepspeed"), tag="zero", load_module_strict=False, load_optimizer_states=True,
            load_lr_scheduler_states=False)
        if path is None:
            raise ValueError(f"checkpoint {d} lacks its DeepSpeed state ({d / 'deepspeed'})")
    elif st.get("opt_by_name"):  # written under FSDP: resumes with or without it
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(model, getattr(opt, "optimizer", opt), st["opt"],
                                 options=StateDictOptions(full_state_dict=True))
    elif _is_fsdp(acc):
        raise ValueError(f"checkpoint {d} was written without FSDP: resume it without FSDP (or start a new out_dir)")
    else:
        opt.load_state_dict(st["opt"])
    sched.load_state_dict(st["sched"])
    rng_ranks = st.get("rng_ranks")
    same_world = acc is not None and rng_ranks is not None and len(rng_ranks) == acc.num_processes
    torch.set_rng_state(rng_ranks[acc.process_index].clone() if same_world else st["rng"])
    if st.get("cuda_rng") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda_rng"])
    return json.loads((d / "step.json").read_text())["step"]


def build(cfg: TrainConfig, codec=None, run_layout=None):
    """Backbone + layout + LoRA + head for ``cfg`` (also used by tests). ``run_layout``: the layout a run
    started with (``<out_dir>/token_layout.json``): a resumed run keeps its specials even if the defaults
    have changed since."""
    from adapters.backbones import extend_vocabulary, load_backbone
    from adapters.lora import LoraSettings, apply_lora
    from slm.layout import TokenLayout

    bb = load_backbone(cfg.backbone)
    layout = TokenLayout.for_tokenizer(bb.tokenizer, codec.semantic_codebook_size)
    if cfg.init_from:
        layout = _init_layout(cfg, layout)
    if run_layout is not None:
        if (run_layout.base_vocab, run_layout.n_semantic) != (layout.base_vocab, layout.n_semantic):
            raise ValueError(f"{cfg.out_dir} was started with another backbone or codec (text vocab "
                             f"{run_layout.base_vocab}, {run_layout.n_semantic} codes; now {layout.base_vocab}, "
                             f"{layout.n_semantic}): use a new out_dir")
        layout = run_layout
    extend_vocabulary(bb.model, bb.tokenizer, layout)
    if cfg.init_from:
        lm, head = _init_from(cfg, bb, layout, codec)
    else:
        lm = apply_lora(bb.model, LoraSettings(**cfg.lora), layout.new_ids())
        head = _new_head(cfg, bb, codec)
    if not cfg.train_lm:
        for p in lm.parameters():
            p.requires_grad_(False)
    return bb, layout, lm, head


def init_dir(cfg: TrainConfig) -> Path:
    """The model dir named by ``cfg.init_from`` (``"default"``: the bundled model)."""
    from slm.pipeline import model_dir

    d = model_dir(cfg.init_from)
    if not (d / "slm_config.json").is_file() or not (d / "adapter").is_dir():
        raise FileNotFoundError(f"init_from: {d} is not a speech-LM model dir (slm_config.json or adapter/ missing)")
    return d


def _init_codec_dir(cfg: TrainConfig) -> Path:
    from slm.pipeline import codec_dir

    d = init_dir(cfg)
    return codec_dir(d, json.loads((d / "slm_config.json").read_text()))


def _init_layout(cfg: TrainConfig, layout):
    """The saved model's layout (its specials: older model dirs lack newer optional ones), checked against
    what this run's backbone and codec give."""
    from slm.layout import TokenLayout

    d = init_dir(cfg)
    old = TokenLayout.load(d)
    if (old.base_vocab, old.n_semantic) != (layout.base_vocab, layout.n_semantic):
        theirs = json.loads((d / "slm_config.json").read_text())
        raise ValueError(
            f"init_from {d}: its token layout (text vocab {old.base_vocab}, {old.n_semantic} semantic codes) does not "
            f"match this run's (text vocab {layout.base_vocab}, {layout.n_semantic} codes): it was trained with "
            f"backbone {theirs.get('backbone')!r} and another codec; use the same backbone and the model's own codec "
            f"({d / 'codec'})")
    return old


def _init_from(cfg: TrainConfig, bb, layout, codec):
    """LoRA adapter (trainable) and acoustic head of an existing model dir, checked against this run."""
    from adapters.lora import load_adapter

    d = init_dir(cfg)
    theirs = json.loads((d / "slm_config.json").read_text())
    mapping = None
    if cfg.remap_semantic:
        mapping = _remap_from(d, theirs, codec)
    else:
        _check_same_codec(d, theirs, codec)
    try:
        lm = load_adapter(bb.model, d / "adapter", trainable=True)
    except RuntimeError as e:  # shape mismatch: same vocabulary, another backbone
        raise ValueError(f"init_from {d}: its adapter does not fit backbone {cfg.backbone!r} (trained on "
                         f"{theirs.get('backbone')!r}): {str(e).splitlines()[0]}") from e
    for p in lm.parameters():  # fp16 bundles: train in fp32
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()
    if mapping is not None:
        remap_semantic_rows(lm, layout, mapping)
        return lm, _new_head(cfg, bb, codec)
    head = None
    if codec.n_acoustic_codebooks:
        if not (d / "acoustic_head.json").is_file():
            raise ValueError(f"init_from {d} has no acoustic head but codec {cfg.codec} has acoustic codebooks")
        head = AcousticHead.from_pretrained(d).train()
        want = (codec.acoustic_codebook_size, codec.n_acoustic_codebooks, codec.semantic_codebook_size)
        have = (head.cfg.codebook_size, head.cfg.n_codebooks, head.cfg.n_semantic)
        if want != have:
            raise ValueError(f"init_from {d}: its acoustic head predicts {have[1]} x {have[0]} codes over "
                             f"{have[2]} semantic ids, the codec has {want[1]} x {want[0]} over {want[2]}")
    return lm, head


def semantic_remap(old, new) -> tuple[torch.Tensor, dict]:
    """For each semantic code of codec ``new``, the code of codec ``old`` whose teacher centroid is nearest
    (``[K_new]`` long), and how close the two codebooks are: ``distance`` (mean distance from a new centroid
    to its nearest old one) against ``spacing`` (mean distance from an old centroid to its nearest other old
    one). A ratio far above 1 means the codebooks are not in one teacher space (another teacher or layer)."""
    a, b = (c.teacher_centroids() if hasattr(c, "teacher_centroids") else None for c in (old, new))
    if a is None or b is None:
        which = [n for n, c in (("the model's", a), ("the run's", b)) if c is None]
        raise ValueError(f"remap_semantic maps codes through their teacher centroids, but {' and '.join(which)} codec "
                         f"has none (only sac and sacodec anchor their semantic codes on teacher k-means centroids)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"remap_semantic: the codecs' teacher centroids have {a.shape[1]} and {b.shape[1]} dims: "
                         f"they come from different teachers, so their codes cannot be matched")
    dist, idx = torch.cdist(b, a).min(dim=1)
    own = torch.cdist(a, a).fill_diagonal_(float("inf")).min(dim=1).values
    info = {"distance": float(dist.mean()), "spacing": float(own.mean()),
            "old_codes_used": int(idx.unique().numel()), "n_old": int(a.shape[0]), "n_new": int(b.shape[0])}
    return idx, info


def remap_semantic_rows(lm: nn.Module, layout, mapping: torch.Tensor) -> None:
    """Give each semantic token ``j`` the trained row (input embedding and, when untied, output row) of token
    ``mapping[j]``: the rows peft trains through ``trainable_token_indices``."""
    seen = set()
    for m in lm.modules():
        deltas = getattr(m, "trainable_tokens_delta", None)
        if not isinstance(deltas, nn.ParameterDict):
            continue
        for name, p in deltas.items():
            if id(p) in seen:  # a tied output layer shares the embedding's rows
                continue
            seen.add(id(p))
            pos = {t: i for i, t in enumerate(m.token_indices[name])}
            try:
                rows = torch.tensor([pos[layout.semantic_offset + j] for j in range(layout.n_semantic)])
            except KeyError as e:
                raise ValueError(f"remap_semantic: semantic token {e} has no trained row in the adapter") from None
            with torch.no_grad():
                p.data[rows] = p.data[rows[mapping.to(rows.device)]].clone()
    if not seen:
        raise ValueError("remap_semantic: the adapter has no trained token rows (trainable_token_indices) to remap")


def _remap_from(d: Path, theirs: dict, codec) -> torch.Tensor:
    """The code map of ``init_from`` model ``d`` onto the run's codec, printed with how close the codebooks are."""
    from slm.pipeline import _load_codec, codec_dir

    old = _load_codec(codec_dir(d, theirs), theirs.get("codec_class"))
    mapping, info = semantic_remap(old, codec)
    print(f"remap_semantic: {info['n_new']} codes of the run's codec take the rows of {info['old_codes_used']} of "
          f"{info['n_old']} codes of {d}'s codec; mean centroid distance {info['distance']:.2f} against the old "
          f"codebook's own spacing {info['spacing']:.2f}", flush=True)
    if info["distance"] > 3 * info["spacing"]:
        print("remap_semantic: the codebooks lie far apart: are both from the same teacher and layer?", flush=True)
    return mapping


def _check_same_codec(d: Path, theirs: dict, codec) -> None:
    """The run's codec must tokenise as the model's own (equal weights at fp16, the precision bundles store,
    except in the decode-only modules that a decoder fine-tune changes): the semantic ids the adapter
    learned mean nothing under another codec. ``theirs``: its slm_config."""
    from slm.pipeline import _load_codec, codec_dir

    cpath = codec_dir(d, theirs)
    if not isinstance(codec, torch.nn.Module) or not cpath.is_dir():
        return
    from codec.model import weights_match

    ref = _load_codec(cpath, theirs.get("codec_class"))
    # another Codec implementation: all weights equal
    same = ref.tokenises_like(codec) if hasattr(ref, "tokenises_like") else weights_match(ref, codec)
    if not same:
        raise ValueError(f"init_from {d}: the run's codec is not the model's own ({cpath}); its semantic tokens would "
                         f"mean something else. Tokenise your data with {cpath} and leave `codec` empty")


def _new_head(cfg: TrainConfig, bb, codec) -> AcousticHead | None:
    head = None
    if codec.n_acoustic_codebooks:
        ratio = acoustic_ratio(codec)
        hc = {"backbone_dim": bb.model.config.hidden_size, "n_semantic": codec.semantic_codebook_size,
              "codebook_size": codec.acoustic_codebook_size, "n_codebooks": codec.n_acoustic_codebooks, "ratio": ratio}
        head = AcousticHead(AcousticHeadConfig(**{**hc, **cfg.head}))
    return head


def train(cfg: TrainConfig, codec=None, progress: bool = True, stop_after: int | None = None) -> Path:
    """Run (or resume) training; returns the final model dir ``out_dir/final``.

    ``stop_after``: leave after that many steps of this invocation (checkpoint written, as if killed
    there; for time-sliced jobs and the resume test)."""
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from adapters.backbones import check_backbone_spec
    from slm.pipeline import _load_codec, save_bundle

    cfg.validate()  # the final config (fields set after construction), before any work
    check_backbone_spec(cfg.backbone)  # a missing local backbone dir fails now, not after tokenising
    acc = _accelerator(_mixed_precision(cfg.mixed_precision), cfg)
    from codec.runtime import destroy_process_group_at_exit

    destroy_process_group_at_exit()  # torchrun / accelerate ranks: gloo torn down before interpreter exit
    set_seed(cfg.seed)
    out = Path(cfg.out_dir)
    if codec is None:
        codec = _load_codec(cfg.codec or (str(_init_codec_dir(cfg)) if cfg.init_from else ""), None)
    token_dir = cfg.tokens or _tokenize(cfg, codec, acc)
    utts = load_tokens(token_dir, split="train", limit=cfg.max_utterances, codec=codec)
    valid = load_tokens(token_dir, split=cfg.valid_split, limit=64, codec=codec)
    if not utts:
        raise ValueError(f"no 'train' utterances in {token_dir}")
    forms = speech_forms(cfg, utts)
    _check_forms(cfg, forms, token_dir)
    kept, kept_reader = carried_settings(cfg, forms, acc.print if acc.is_main_process else None)
    from slm.layout import LAYOUT_FILE, TokenLayout

    saved = out / LAYOUT_FILE
    bb, layout, lm, head = build(cfg, codec, TokenLayout.load(saved) if saved.is_file() else None)
    if acc.is_main_process and not saved.is_file():
        layout.save(out)
    model = SpeechLM(lm, head, cfg.head_weight, cfg.train_lm, cfg.packing, text_vocab=layout.base_vocab)
    frame_len = head.cfg.frame_len if head is not None else 0
    mix = TaskMix.from_dict(cfg.tasks)
    src = BatchSource(utts, bb.tokenizer, layout, mix, cfg, frame_len, acc.process_index, acc.num_processes)
    groups = [{"params": [p for p in lm.parameters() if p.requires_grad], "lr": cfg.lr}]
    if head is not None:
        groups.append({"params": list(head.parameters()), "lr": cfg.head_lr})
    groups = [g for g in groups if g["params"]]
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    wrapped, opt, sched = acc.prepare(model, opt, sched)
    ds = _is_deepspeed(acc)  # wrapped: the DeepSpeed engine; opt / sched step inside acc.backward
    ckpt = out / "checkpoints" / "latest"
    step = load_checkpoint(ckpt, model, opt, sched, acc) if ckpt.exists() else 0
    # FSDP: `model` is sharded in place and each forward is a collective; rank 0 alone runs (samples) and
    # saves (model dir) a plain copy holding the gathered weights
    plain = _Unsharded(cfg, codec, layout) if _is_fsdp(acc) else None
    writer = None
    if acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        writer = SummaryWriter(str(out / "tb"))
    bar = tqdm(total=cfg.steps, initial=step, disable=not (progress and acc.is_main_process), desc="slm train")
    hist: list[dict] = []
    stop = cfg.steps if stop_after is None else min(cfg.steps, step + stop_after)
    while step < stop:
        wrapped.train()
        t0, logs = time.perf_counter(), {}
        for micro in range(cfg.grad_accum):
            b = _batch_to(src(step * cfg.grad_accum + micro), acc.device)
            last = micro == cfg.grad_accum - 1
            ctx = acc.no_sync(wrapped) if not last else _Null()
            if ds:  # DeepSpeed scales by its gradient_accumulation_steps and steps at the boundary itself
                acc.gradient_state._set_sync_gradients(last)
            with ctx, acc.autocast():
                losses = wrapped(b)
                acc.backward(losses["loss"] if ds else losses["loss"] / cfg.grad_accum)
            for k, v in losses.items():
                logs[k] = logs.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        if cfg.max_grad_norm and not ds:  # DeepSpeed clips inside its step (gradient_clipping)
            acc.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        logs["lr"], logs["sec_per_step"] = sched.get_last_lr()[0], time.perf_counter() - t0
        bar.update(1)
        bar.set_postfix(loss=f"{logs['loss']:.3f}")
        hist.append({"step": step, **logs})
        if writer is not None and (step % cfg.log_every == 0 or step == cfg.steps):
            for k, v in logs.items():
                writer.add_scalar(f"train/{k}", v, step)
            with open(out / "train_log.jsonl", "a") as f:
                f.write(json.dumps({"step": step, **logs}) + "\n")
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
            evaluate(acc, wrapped, model, valid or utts[:8], bb.tokenizer, layout, codec, cfg, step, writer, frame_len,
                     forms, plain)
        if step % cfg.save_every == 0 or step in (cfg.steps, stop):
            save_checkpoint(ckpt, model, opt, sched, step, acc)
        acc.wait_for_everyone()
    bar.close()
    if acc.num_processes > 1:
        _check_ranks_agree(acc, model)
    final = out / "final"
    if step < cfg.steps:
        if writer is not None:
            writer.close()
        return final
    done = model if plain is None else plain.get(acc, model)  # FSDP: gathered on every rank
    if acc.is_main_process:
        voices = _default_voices(utts, codec)
        lm, head = done.lm, done.head
        save_bundle(final, lm, layout, head, codec, cfg.backbone, voices=voices,
                    extra={**kept, "sampling": {**kept.get("sampling", {}), **length_bound(utts, codec)},
                           "lora": _lora_info(lm), "trained_steps": step,
                           **{k: True for k, on in forms.items() if on},
                           **({"init_from": str(init_dir(cfg).resolve())} if cfg.init_from else {}),
                           **({"remap_semantic": True} if cfg.remap_semantic else {})},
                    half=cfg.save_half)
        if kept_reader is not None:  # the reader reads the codec's tokens: the same codec, still right
            import shutil

            shutil.rmtree(final / "ctc_reader", ignore_errors=True)
            shutil.copytree(kept_reader, final / "ctc_reader")
        writer.close()
    acc.wait_for_everyone()
    return final


class _Unsharded:
    """Under FSDP the training model holds shards (DTensors) and every forward is a collective, so what rank 0
    does alone (evaluation samples, writing the model dir) uses this plain copy: built once on rank 0 by
    :func:`build` (frozen weights are deterministic) and given the gathered trainable weights each time."""

    def __init__(self, cfg: TrainConfig, codec, layout):
        self.cfg, self.codec, self.layout, self.model = cfg, codec, layout, None

    def get(self, acc, model: SpeechLM) -> SpeechLM | None:
        """Every rank must call this (it gathers); the copy on the main process, ``None`` elsewhere."""
        state = _trainable_state(model)
        if not acc.is_main_process:
            return None
        if self.model is None:
            with torch.random.fork_rng(devices=[]):  # rank 0's RNG stream stays that of the other ranks
                _, _, lm, head = build(self.cfg, self.codec, self.layout)
            self.model = SpeechLM(lm, head, model.head_weight, model.train_lm, model.packing,
                                  model.text_vocab).to(acc.device)
        _load_trainable(self.model, state, "(gathered FSDP weights)")
        return self.model


@torch.no_grad()
def evaluate(acc, wrapped, model: SpeechLM, utts: list[Utterance], tokenizer, layout, codec, cfg: TrainConfig,
             step: int, writer, frame_len: int, forms: dict[str, bool] | None = None,
             plain: _Unsharded | None = None) -> dict[str, float]:
    """Held-out losses (fixed data) and, on the main process, a few ASR / TTS samples written to disk
    (in ``forms``, :func:`speech_forms`: how the model dir will speak and transcribe). ``plain``: under FSDP,
    the unsharded copy the samples are drawn from."""
    wrapped.eval()
    src = BatchSource(utts, tokenizer, layout, TaskMix.from_dict(cfg.tasks), cfg, frame_len)
    n = min(cfg.eval_batches, src.per_epoch)
    res: dict[str, float] = {}
    for i in range(n):
        with acc.autocast():
            for k, v in wrapped(_batch_to(src(i), acc.device)).items():
                res[k] = res.get(k, 0.0) + float(v) / n
    if plain is not None:
        _reshard(wrapped)
    if cfg.eval_samples and plain is not None:
        model = plain.get(acc, model)  # every rank: gathers the shards
    if acc.is_main_process and cfg.eval_samples:
        res.update(_samples(model, utts, tokenizer, layout, codec, cfg, step, forms))
    if writer is not None:
        for k, v in res.items():
            writer.add_scalar(f"valid/{k}", v, step)
        with open(Path(cfg.out_dir) / "eval_log.jsonl", "a") as f:
            f.write(json.dumps({"step": step, **res}) + "\n")
    wrapped.train()
    return res


def _samples(model: SpeechLM, utts, tokenizer, layout, codec, cfg: TrainConfig, step: int,
             forms: dict[str, bool] | None = None) -> dict[str, float]:
    from codec.audio import save_audio
    from slm.pipeline import SpeechPipeline

    d = Path(cfg.out_dir) / "samples" / f"step_{step:06d}"
    d.mkdir(parents=True, exist_ok=True)
    pipe = SpeechPipeline(model.lm, tokenizer, layout, codec, model.head, **(forms or {}))
    refs, hyps, rows, wavs = [], [], [], []
    for u in [u for u in utts if u.text.strip()][: cfg.eval_samples]:
        hyp = pipe.asr_tokens(u.semantic, 40)
        wav = pipe.tts(u.text, temperature=0.8, max_seconds=4.0, seed=step)
        save_audio(d / f"{u.id}.wav", wav, pipe.sample_rate)
        refs.append(u.text)
        hyps.append(hyp)
        wavs.append(wav[0].numpy())
        rows.append({"id": u.id, "text": u.text, "asr": hyp, "tts_seconds": wav.shape[-1] / pipe.sample_rate})
    (d / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model.lm.train()
    try:  # WER hooks: the project's judges when installed
        from adapters.judges.text import error_rates
    except ImportError:
        return {}
    res = {"asr_wer": error_rates(refs, hyps).wer}
    if cfg.eval_tts_wer and wavs:
        from adapters.judges.asr import WhisperASR

        res["tts_wer"] = error_rates(refs, WhisperASR().transcribe(wavs, pipe.sample_rate)).wer
    return res


def speaks_aligned(cfg: TrainConfig, utts: list[Utterance]) -> bool:
    """Whether the run trains TTS in the aligned form (a share of it, and word times to build it from):
    then its model dir says so, and its pipeline speaks that way by default."""
    return TaskMix.from_dict(cfg.tasks).tts_aligned > 0 and any(u.words for u in utts)


def transcribes_aligned(cfg: TrainConfig, utts: list[Utterance]) -> bool:
    """Whether the run trains ASR in the aligned form (as :func:`speaks_aligned` for TTS)."""
    return TaskMix.from_dict(cfg.tasks).asr_aligned > 0 and any(u.words for u in utts)


def speaks_phones(cfg: TrainConfig, utts: list[Utterance]) -> bool:
    """Whether the run trains aligned TTS in the phone-bridged form (a share of it, and word entries that
    carry phones: a token index made with the manifest's phones)."""
    return (speaks_aligned(cfg, utts) and TaskMix.from_dict(cfg.tasks).tts_phones > 0
            and any(len(w) > 3 for u in utts for w in (u.words or [])))


def _check_forms(cfg: TrainConfig, forms: dict[str, bool], token_dir) -> None:
    """A form the task mix asks for but the token dir cannot give (no word times, or no phones) is an error,
    not a run that silently trains something else."""
    mix = TaskMix.from_dict(cfg.tasks)
    if mix.tts_phones > 0 and not mix.tts_aligned > 0:
        raise ValueError("tasks.tts_phones > 0 needs tasks.tts_aligned > 0: phones are fed in the aligned TTS form")
    need = {"tts_aligned": ("word times", "words"), "asr_aligned": ("word times", "words"),
            "tts_phones": ("phone times", "phones")}
    for key, (what, field_) in need.items():
        if getattr(mix, key) > 0 and not forms[key]:
            raise ValueError(f"tasks.{key} > 0 but the train utterances of {token_dir} have no {what}: tokenise a "
                             f"manifest with `{field_}` (the synthetic corpus has them; `slm codec tokenize` copies "
                             f"them into index.jsonl), or set tasks.{key} to 0")


# slm_config.json keys of an init_from model that a fine-tune keeps: decoding choices of the backbone
# (temperatures, int8), and the CTC reader's ASR settings, which read the codec's tokens, not the LM's
CARRIED_DECODING = ("sampling", "int8")
CARRIED_READER = ("asr_method", "asr_fused", "asr_joint")


def carried_settings(cfg: TrainConfig, forms: dict[str, bool], say=None) -> tuple[dict, Path | None]:
    """What the run's model dir keeps of its ``init_from`` model (``({}, None)`` without one): the
    slm_config.json entries (its sampling, less the length bounds, which are the run's own, from its data;
    its int8 choice; unless the run moves the model onto another codec (``remap_semantic``), the ASR method
    and settings of its CTC reader) and that reader's dir, which :func:`train` copies in. ``say``: told what
    is kept, and which of the model's speech forms this run does not train (the new model dir records the
    run's forms alone)."""
    if not cfg.init_from:
        return {}, None
    d = init_dir(cfg)
    theirs = json.loads((d / "slm_config.json").read_text())
    keep = {k: theirs[k] for k in CARRIED_DECODING if k in theirs}
    keep["sampling"] = {k: v for k, v in (keep.get("sampling") or {}).items()
                        if k not in ("max_seconds_per_char", "min_seconds_per_char")}
    reader = d / "ctc_reader" if not cfg.remap_semantic and (d / "ctc_reader").is_dir() else None
    if reader is not None:
        keep.update({k: theirs[k] for k in CARRIED_READER if k in theirs})
    if say is not None:
        what = [f"{k}={json.dumps(v)}" for k, v in keep.items() if v not in ({}, None)]
        what += ["ctc_reader/"] if reader is not None else []
        say(f"init_from {d}: keeping {', '.join(what) or 'no decoding settings'}")
        lost = [k for k, on in forms.items() if theirs.get(k) and not on]
        if lost:
            say(f"init_from {d}: the model was trained with {', '.join(lost)}, which this run does not train "
                f"(tasks.{', tasks.'.join(lost)} are 0 or the tokens lack their times); the new model dir will not "
                f"use them")
    return keep, reader


def speech_forms(cfg: TrainConfig, utts: list[Utterance]) -> dict[str, bool]:
    """How the run's model dir speaks and transcribes (``SpeechPipeline`` keywords, and what its
    slm_config.json records for the true ones)."""
    return {"tts_aligned": speaks_aligned(cfg, utts), "asr_aligned": transcribes_aligned(cfg, utts),
            "tts_phones": speaks_phones(cfg, utts)}


def length_bound(utts: list[Utterance], codec) -> dict:
    """``{"max_seconds_per_char": 2 x, "min_seconds_per_char": 0.5 x the median seconds per character}`` of
    the training utterances (see :class:`slm.generate.Sampling`); ``{}`` when they have no text."""
    import statistics

    rate = float(codec.semantic_rate)
    r = [u.semantic.numel() / rate / len(u.text) for u in utts if u.text.strip()]
    if not r:
        return {}
    med = statistics.median(r)
    return {"max_seconds_per_char": round(2 * med, 4), "min_seconds_per_char": round(0.5 * med, 4)}


def _lora_info(lm) -> dict:
    """r / alpha / targets of the adapter actually trained (init_from runs keep the loaded adapter's)."""
    pc = lm.peft_config["default"]
    return {"r": pc.r, "alpha": pc.lora_alpha, "target_modules": sorted(pc.target_modules or [])}


def _check_ranks_agree(acc, model: SpeechLM) -> None:
    """All ranks must hold the same trainable weights after data-parallel training (under FSDP: the same
    whole weights once the shards are gathered)."""
    from codec.runtime import check_ranks_agree

    # one whole tensor at a time (gathering a shard is a collective under FSDP: every rank, same order)
    check_ranks_agree(acc, {"trainable": (_full(p) for p in model.parameters() if p.requires_grad)})
    how = " (FSDP, gathered shards)" if _is_fsdp(acc) else " (DeepSpeed)" if _is_deepspeed(acc) else ""
    acc.print(f"ranks agree: {acc.num_processes} processes{how}, "
              f"{sum(p.requires_grad for p in model.parameters())} trainable tensors")


def _default_voices(utts: list[Utterance], codec, n: int = 4):
    """A few reference voices (one per speaker) for the bundle's ``voices()``."""
    from codec.contracts import CodecTokens
    from slm.acoustic_head import acoustic_from_frames
    from slm.pipeline import Voice

    out, seen = [], set()
    for u in utts:
        if u.speaker in seen or not u.text.strip() or len(seen) >= n:
            continue
        seen.add(u.speaker)
        ka = codec.n_acoustic_codebooks
        ac = acoustic_from_frames(u.acoustic, ka)[None] if ka else torch.zeros(1, 0, u.semantic.numel(), dtype=torch.long)
        g = None if u.global_ is None else u.global_[None]
        name = re.sub(r"[^A-Za-z0-9_.+-]+", "_", u.speaker or "voice").strip("_") or "voice"  # file-name safe
        out.append(Voice(name, CodecTokens(u.semantic.view(1, 1, -1), ac, g), u.text))
    return out


def _tokenize(cfg: TrainConfig, codec, acc) -> str:
    from codec.runtime import cache_dir
    from slm.lm_data import tokenize_manifest

    if not cfg.manifest:
        raise ValueError("config needs `tokens` (a token dir) or `manifest` (to tokenise)")
    import hashlib

    # the key names the codec by its files' content, not only its path: a codec retrained in place gets new tokens
    cdir = Path(cfg.codec) if cfg.codec else _init_codec_dir(cfg)  # (no codec given: the init_from model's own)
    h = hashlib.sha256(f"{Path(cfg.manifest).resolve()}|{cdir.resolve()}".encode())
    for f in sorted(cdir.glob("*")):
        if f.is_file() and f.suffix in (".json", ".safetensors"):
            h.update(f.name.encode())
            h.update(f.read_bytes())
    d = Path(cache_dir()) / "lm_tokens" / h.hexdigest()[:12]
    if acc.is_main_process:
        teacher = None
        if getattr(codec, "needs_teacher_at_encode", False):
            from adapters.teachers import load_teacher

            info = cdir / "training.json"
            spec = (json.loads(info.read_text()).get("teacher_spec") if info.exists() else None) or "whisper-base-ct2"
            teacher = load_teacher(spec)
        tokenize_manifest(codec, cfg.manifest, d, teacher, codec_dir=cdir)
    acc.wait_for_everyone()
    return str(d)


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
