"""The codec GAN trainer (accelerate): generator + EMA, MPD/MRSTFT discriminator, exact resume.

One step (DAC/HiFi-GAN order)::

    out = G(wav, teacher, text)                        model losses  ("vq/*", "semantic/*", ...)
    + mel / STFT reconstruction                         ("mel/l1", "stft/*")
    if step >= warmup_adv_steps:                        (SAC: adversarial terms after 1500 steps)
        D step on (wav, wav_hat.detach())               ("disc/loss")
        + adversarial and feature matching for G        ("adv/gen", "adv/feat")
    G step on weighted_sum(losses, weights); EMA update

Everything that changes during training is saved by ``Accelerator.save_state`` (models, EMA,
optimisers, schedulers, RNG states); batches are a pure function of the step (``batches.py``), so a
run killed at step s and resumed gives the same weights as an uninterrupted one.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from codec.discriminators import CodecDiscriminator
from codec.losses import (
    ReconstructionLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adv_loss,
    weighted_sum,
)
from codec.modules.secousti import apply_training_stage
from codec.train.batches import HeadTokens, StepBatches, collate_codec_batch, crop_hop, read_rows
from codec.train.checkpointing import latest_checkpoint, load_checkpoint, save_checkpoint
from codec.train.config import TRAINER_WEIGHTS, CodecTrainConfig
from codec.train.teacher_cache import CacheReader


@dataclass
class TrainResult:
    step: int
    seconds: float
    losses: dict[str, float]       # mean of the last logging window
    export_dir: Path | None
    out_dir: Path


def _build_model(cfg: CodecTrainConfig, out_dir: Path, rows: list[dict]):
    from codec.model import DualStreamCodec

    mcfg = cfg.model_config()
    model = DualStreamCodec(mcfg)
    if model.needs_teacher_codebook and not cfg.init_from:  # init_from: the centroids come with its weights
        if not cfg.teacher_centroids:
            raise ValueError(f"the {mcfg.variant!r} codec needs the teacher's k-means centroids: set "
                             "teacher_centroids (from `slm codec kmeans`)")
        from safetensors.torch import load_file

        path = str(cfg.teacher_centroids)
        path = path if path.endswith(".safetensors") else path + ".safetensors"
        model.set_teacher_codebook(load_file(path)["centroids"])
    if mcfg.variant == "secousticodec":
        from codec.text_encoder import TextTokenizer, train_text_tokenizer

        tok = Path(cfg.text_tokenizer) if cfg.text_tokenizer else out_dir / "text_tokenizer.model"
        if not tok.exists():
            train_text_tokenizer((r.get("text", "") for r in rows), tok, vocab_size=mcfg.text_vocab_size)
        if TextTokenizer(tok).vocab_size > mcfg.text_vocab_size:
            raise ValueError(f"{tok} has more pieces than text_vocab_size={mcfg.text_vocab_size}")
        model.set_text_tokenizer(tok)
    return model


def _init_from(model, directory: str) -> None:
    """Load a finished codec's weights (and buffers: teacher centroids, codebooks) into ``model``."""
    from codec.model import DualStreamCodec

    src = DualStreamCodec.from_pretrained(directory)
    mine, theirs = model.config.to_dict(), src.config.to_dict()
    diff = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
    if diff:
        raise ValueError(f"init_from={directory} holds a codec whose config differs from this run's model config in "
                         + ", ".join(f"{k} ({theirs.get(k)!r} there, {mine.get(k)!r} here)" for k in diff[:6])
                         + ": point `model` at the same codec config (its config.json 'codec' entry)")
    model.load_state_dict(src.state_dict())
    if getattr(src.bottleneck, "tokenizer", None) is not None:
        model.bottleneck.tokenizer = src.bottleneck.tokenizer


def _check_frozen(model, init_from: str, ckpt) -> None:
    from codec.model import DualStreamCodec

    src = DualStreamCodec.from_pretrained(init_from).state_dict()
    bad = [n for n, p in model.named_parameters() if not p.requires_grad and not torch.equal(p.detach().cpu(), src[n])]
    if bad:
        raise ValueError(f"{ckpt} was trained from another init_from than {init_from} (frozen weights differ: "
                         f"{bad[:3]}): start the fine-tune in a new out_dir")


def _in(name: str, prefixes: list[str]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def select_trainable(model, train_only: list[str] | None) -> list[str]:
    """Freeze every parameter outside ``train_only`` (module-name prefixes); return the trained names."""
    names = [n for n, _ in model.named_parameters()]
    if not train_only:
        return names
    modules = dict(model.named_modules())
    unknown = [p for p in train_only if p not in modules]
    if unknown:
        top = sorted({n.split(".")[0] for n in modules if n})
        raise ValueError(f"train_only names {unknown} are not modules of the {model.config.variant!r} codec; "
                         f"its top-level modules are {top} (nested ones by dotted name, e.g. 'bottleneck.vq')")
    kept = []
    for n, p in model.named_parameters():
        p.requires_grad_(_in(n, train_only))
        if p.requires_grad:
            kept.append(n)
    if not kept:
        raise ValueError(f"train_only={train_only} selects no parameters")
    return kept


def freeze_modes(model, train_only: list[str] | None) -> None:
    """Put the frozen part in eval mode (masking, dropout and codebook updates off); the trained part
    and the modules that hold it stay in train mode."""
    if not train_only:
        return
    for name, m in model.named_modules():
        if name and not _in(name, train_only) and not any(p.startswith(name + ".") for p in train_only):
            m.training = False


def _lr_lambda(cfg: CodecTrainConfig):
    """lr_schedule "cosine" as a LambdaLR factor of the step."""
    w, total, lo = cfg.lr_warmup, max(1, cfg.steps - cfg.lr_warmup), cfg.lr_min_ratio

    def cosine(s: int) -> float:
        if s < w:
            return (s + 1) / w
        t = min(1.0, (s - w) / total)
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))

    return cosine


def _open_caches(cfg: CodecTrainConfig, model) -> tuple[CacheReader | None, CacheReader | None]:
    feats = CacheReader.open(cfg.teacher_features) if cfg.teacher_features else None
    units = CacheReader.open(cfg.teacher_units) if cfg.teacher_units else None
    if units is not None:
        if abs(units.frame_rate - model.semantic_rate) > 1e-6:
            raise ValueError(f"teacher units are at {units.frame_rate} Hz, the codec's semantic rate is "
                             f"{model.semantic_rate} Hz: fit k-means with --rate {model.semantic_rate}")
        if int(units.meta.get("k", 0)) != model.semantic_codebook_size:
            raise ValueError(f"teacher units have k={units.meta.get('k')}, the codec's semantic codebook has "
                             f"{model.semantic_codebook_size} entries")
    variant = model.config.variant
    frozen_semantics = bool(cfg.train_only) and variant != "sac"  # sac's encoder reads the units themselves
    if variant in ("sac", "sacodec", "stacodec") and units is None and not frozen_semantics:
        raise ValueError(f"the {variant!r} codec trains on teacher units: set teacher_units")
    if variant in ("distill", "sac", "sacodec", "stacodec") and feats is None and not cfg.train_only:
        print(f"note: no teacher_features for {variant!r}; its feature-distillation loss is off")
        if variant == "sacodec":
            print("note: sacodec anchored on units alone: each unit's centroid stands in for its teacher feature "
                  "in the anchor loss (docs/results/anchor_units)")
    return feats, units


def _weights(cfg: CodecTrainConfig, model) -> dict[str, float]:
    return {**TRAINER_WEIGHTS, **model.config.loss_weights, **cfg.loss_weights}


def _ema_export_model(ema: AveragedModel, model):
    """The EMA generator with the live model's buffers (codebook statistics, teacher centroids):
    AveragedModel averages parameters only (``use_buffers=False``: integer buffers cannot be lerped)."""
    m = ema.module
    with torch.no_grad():
        for b_ema, b in zip(m.buffers(), model.buffers()):
            b_ema.copy_(b)
    for name in ("tokenizer",):  # non-tensor state set after construction (secousticodec)
        if hasattr(model.bottleneck, name):
            setattr(m.bottleneck, name, getattr(model.bottleneck, name))
    return m


def train(cfg: CodecTrainConfig, resume: bool = True, progress: bool = True) -> TrainResult:
    """Train (or continue training) the codec described by ``cfg``; export the EMA generator."""
    cfg.validate()  # the final config: fields set after construction (CLI overrides) are checked too
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
    from tqdm import tqdm

    out_dir = Path(cfg.out_dir)
    # cpu=True without a GPU: accelerate then takes torchrun / `accelerate launch` ranks as MULTI_CPU (gloo);
    # otherwise each CPU rank counts itself alone and trains its own copy into the same out_dir
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, log_with="tensorboard",
                              cpu=not torch.cuda.is_available(),
                              step_scheduler_with_optimizer=False,
                              # variants leave some heads unused on some steps (e.g. no teacher features)
                              kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
                              project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(out_dir)))
    from codec.runtime import destroy_process_group_at_exit

    destroy_process_group_at_exit()  # torchrun / accelerate ranks: gloo torn down before interpreter exit
    set_seed(cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if accelerator.is_main_process:
        (out_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=2, default=str))

    rows = read_rows(cfg.manifest, cfg.train_split)
    model = _build_model(cfg, out_dir, rows)
    if cfg.init_from:
        _init_from(model, cfg.init_from)
    trained = select_trainable(model, cfg.train_only)
    if cfg.train_only:
        n_all = sum(p.numel() for p in model.parameters())
        n_tr = sum(p.numel() for p in model.parameters() if p.requires_grad)
        accelerator.print(f"training {n_tr:,} of {n_all:,} parameters ({len(trained)} tensors under "
                          f"{cfg.train_only}); the rest is frozen")
    feats, units = _open_caches(cfg, model)
    caches = [c for c in (feats, units) if c is not None]
    kept = [r for r in rows if all(c.has(r["id"]) for c in caches)]
    if len(kept) < len(rows):  # e.g. a corpus grown after its teacher cache was built
        accelerator.print(f"note: {len(rows) - len(kept)} of {len(rows)} train utterances have no cached "
                          "teacher features/units and are skipped (rerun teacher-cache / kmeans to add them)")
    rows = kept
    if accelerator.is_main_process:
        model.config.to_yaml(out_dir / "codec_config.yaml")
    sr = model.sample_rate
    hop = crop_hop(model.semantic_hop, sr, feats, units)
    seg = max(1, round(cfg.segment_seconds * sr / hop)) * hop
    head = _open_head_tokens(cfg, model, rows, accelerator.print)
    data = StepBatches(rows, sr, seg, hop, cfg.batch_size, cfg.seed, feats, units,
                       accelerator.process_index, accelerator.num_processes, cfg.steps, head, cfg.head_token_prob)

    disc = CodecDiscriminator(cfg.discriminator)
    recon = ReconstructionLoss(cfg.recon).to(accelerator.device)
    opt_g = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr, betas=cfg.betas,
                              weight_decay=cfg.weight_decay)
    opt_d = torch.optim.AdamW(disc.parameters(), lr=cfg.disc_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    if cfg.lr_schedule == "exponential":  # the schedule of every run before lr_schedule existed
        sch_g = torch.optim.lr_scheduler.ExponentialLR(opt_g, cfg.lr_decay)
        sch_d = torch.optim.lr_scheduler.ExponentialLR(opt_d, cfg.lr_decay)
    else:
        sch_g = torch.optim.lr_scheduler.LambdaLR(opt_g, _lr_lambda(cfg))
        sch_d = torch.optim.lr_scheduler.LambdaLR(opt_d, _lr_lambda(cfg))
    model, disc, opt_g, opt_d, sch_g, sch_d = accelerator.prepare(model, disc, opt_g, opt_d, sch_g, sch_d)
    gen = accelerator.unwrap_model(model)
    ema = AveragedModel(gen, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=False)
    accelerator.register_for_checkpointing(ema)

    step, elapsed0 = 0, 0.0
    ckpt = latest_checkpoint(out_dir) if resume else None
    if ckpt is not None:
        state = load_checkpoint(accelerator, ckpt)
        step, elapsed0 = int(state["step"]), float(state.get("seconds", 0.0))
        accelerator.print(f"resumed from {ckpt} at step {step}")
        if cfg.init_from and cfg.train_only:  # the frozen part must still be init_from's
            _check_frozen(gen, cfg.init_from, ckpt)
    accelerator.init_trackers("tb", config={k: v for k, v in cfg.to_dict().items()
                                             if isinstance(v, (int, float, str, bool))})
    weights = _weights(cfg, gen)
    from codec.train.logging import TrainLogger

    logger = TrainLogger(accelerator, out_dir, cfg, sr)
    valid = _valid_batch(cfg, sr, seg, hop, feats, units)

    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(data, range(step, cfg.steps)), batch_size=1, collate_fn=collate_codec_batch,
        num_workers=cfg.num_workers, persistent_workers=False,
        # its own generator: iterating a DataLoader draws a seed, which must not consume the global
        # RNG that a resumed run restores from the checkpoint
        generator=torch.Generator().manual_seed(cfg.seed))
    t0 = time.time()
    bar = tqdm(total=cfg.steps, initial=step, desc=f"codec {gen.config.variant}", disable=not (
        progress and accelerator.is_local_main_process), dynamic_ncols=True)
    model.train()
    freeze_modes(gen, cfg.train_only)
    disc.train()
    stopped_early = False
    for batch in loader:
        # secousticodec's multi-stage schedule (a function of the step); no-op when both stage steps are 0
        apply_training_stage(gen, step, cfg.semantic_stage_step, cfg.joint_stage_step, cfg.semantic_stage_freeze)
        wav = batch.wav.to(accelerator.device)
        teacher = batch.teacher
        if teacher is not None:
            teacher = type(teacher)(
                features=None if teacher.features is None else teacher.features.to(accelerator.device),
                units=None if teacher.units is None else teacher.units.to(accelerator.device),
                feature_rate=teacher.feature_rate)
        text = batch.texts if gen.config.variant == "secousticodec" else None
        with accelerator.autocast():
            given = _batch_tokens(gen, wav, batch.head)  # the codec's own tokens encoded as the normal pass does
            out = model(wav, teacher=teacher, text=text) if given is None else model(wav, tokens=given)
            if batch.head is not None:
                out.extras = {**out.extras, "head/share": torch.tensor(
                    sum(t is not None for t in batch.head) / len(batch.head))}
            losses = dict(out.losses)
            wav_hat = out.wav_hat.float()
            rl = recon(wav_hat, wav)
            losses.update({"mel/l1": rl["recon/mel"], "stft/sc": rl["recon/stft_sc"], "stft/mag": rl["recon/stft_mag"]})
        if step >= cfg.warmup_adv_steps:
            losses.update(_adversarial(accelerator, disc, opt_d, sch_d, wav, wav_hat, cfg))
        total = weighted_sum(losses, {k: weights.get(k, 1.0) for k in losses if not k.startswith("disc/")})
        opt_g.zero_grad(set_to_none=True)
        accelerator.backward(total)
        gnorm = accelerator.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt_g.step()
        sch_g.step()
        ema.update_parameters(gen)
        step += 1
        losses["loss/total"] = total.detach()
        losses["grad/norm"] = torch.as_tensor(gnorm).detach().float()
        logger.add(losses, out.extras)
        bar.update(1)
        seconds = elapsed0 + time.time() - t0
        over_time = cfg.max_minutes is not None and seconds > cfg.max_minutes * 60
        if step % cfg.log_every == 0 or step == cfg.steps or over_time:
            bar.set_postfix(logger.postfix())
            logger.flush(step, lr=sch_g.get_last_lr()[0], seconds=seconds)
        if cfg.sample_every and step % cfg.sample_every == 0 and valid is not None:
            logger.samples(step, _ema_export_model(ema, gen), valid)
        if step % cfg.ckpt_every == 0 or step == cfg.steps or over_time:
            save_checkpoint(accelerator, out_dir, step, {"seconds": seconds}, cfg.keep_last)
        if over_time:
            accelerator.print(f"stopping at step {step}: max_minutes={cfg.max_minutes} reached")
            stopped_early = True
            break
    bar.close()
    if accelerator.num_processes > 1:
        _check_ranks_agree(accelerator, {"generator": gen, "discriminator": accelerator.unwrap_model(disc)})
    seconds = elapsed0 + time.time() - t0
    export = None
    if accelerator.is_main_process and (step >= cfg.steps or stopped_early):
        export = Path(cfg.export_dir) if cfg.export_dir else out_dir / "final"
        m = _ema_export_model(ema, gen)
        m.save_pretrained(export, dtype=torch.float16 if cfg.export_fp16 else torch.float32)
        (export / "training.json").write_text(json.dumps(
            {"step": step, "seconds": round(seconds, 1), "losses": logger.last, "bitrate": gen.bitrate,
             "init_from": cfg.init_from, "train_only": cfg.train_only, "steps_planned": cfg.steps,
             "stopped_by_time": stopped_early, "head_tokens": cfg.head_tokens,
             "head_token_prob": cfg.head_token_prob if cfg.head_tokens else None,
             "teacher_units": cfg.teacher_units, "teacher_features": cfg.teacher_features,
             "teacher_spec": (units or feats).meta.get("spec") if (units or feats) else None}, indent=2))
    accelerator.end_training()
    return TrainResult(step, seconds, dict(logger.last), export, out_dir)


def _check_ranks_agree(accelerator, modules: dict) -> None:
    """The generator's and the discriminator's trainable weights are the same on every rank (or an error)."""
    from codec.runtime import check_ranks_agree

    check_ranks_agree(accelerator, {n: [p for p in m.parameters() if p.requires_grad] for n, m in modules.items()})
    accelerator.print(f"ranks agree: {accelerator.num_processes} processes, " +
                      ", ".join(f"{n} {sum(p.requires_grad for p in m.parameters())} tensors" for n, m in modules.items()))


def _open_head_tokens(cfg: CodecTrainConfig, model, rows: list[dict], say) -> HeadTokens | None:
    """The ``head_tokens`` dir of a decoder fine-tune, checked: only decode-only modules train, it covers
    some train utterances, and its semantic tokens are this codec's (re-encoded for a few of them)."""
    if not cfg.head_tokens:
        return None
    from codec.audio import load_audio

    outside = [n for n, p in model.named_parameters() if p.requires_grad and not _in(n, list(model.decode_only))]
    if outside:
        raise ValueError(f"head_tokens trains the decode path only, but train_only {cfg.train_only} also trains "
                         f"{outside[:3]}: tokens decoded from elsewhere say nothing about the encoder")
    head = HeadTokens(cfg.head_tokens, model.semantic_hop)
    covered = [r for r in rows if head.has(r["id"])]
    if not covered:
        raise ValueError(f"{cfg.head_tokens} holds tokens of none of the {len(rows)} train utterances of "
                         f"{cfg.manifest}: make them from this manifest")
    was_training = model.training
    model.eval()  # quantisers may update their codebooks in train mode
    for r in covered[:3]:
        own = model.encode(load_audio(r["path"], model.sample_rate)[None]).semantic.cpu()
        theirs = head.tokens(r["id"]).semantic
        same = own.shape == theirs.shape and float((own == theirs).float().mean()) >= 0.95
        if not same:
            raise ValueError(f"{cfg.head_tokens}: the semantic tokens of {r['id']} are not this codec's (init_from "
                             f"{cfg.init_from}): make head tokens with a speech LM on this codec")
    model.train(was_training)
    say(f"head tokens: {len(covered)} of {len(rows)} train utterances ({cfg.head_tokens}); a share of "
        f"{cfg.head_token_prob} of the crops is decoded from them")
    return head


def _batch_tokens(gen, wav: torch.Tensor, head: list | None):
    """The tokens to decode for a batch with head tokens: the codec's own, with each item that drew head
    tokens replaced by them; None when no item did (the normal training pass runs)."""
    if head is None or all(t is None for t in head):
        return None
    from codec.contracts import CodecTokens

    if all(t is not None for t in head):
        g = [t.global_ for t in head]
        return CodecTokens(semantic=torch.cat([t.semantic for t in head]).to(wav.device),
                           acoustic=torch.cat([t.acoustic for t in head]).to(wav.device),
                           global_=None if any(x is None for x in g) else torch.cat(g).to(wav.device))
    own = gen.encode(wav)  # no grad; the encoder and quantisers are frozen in a decoder fine-tune
    sem, ac = own.semantic.clone(), own.acoustic.clone()
    for i, t in enumerate(head):
        if t is not None:
            sem[i], ac[i] = t.semantic[0].to(sem.device), t.acoustic[0].to(ac.device)
    return CodecTokens(semantic=sem, acoustic=ac, global_=own.global_)


def _adversarial(accelerator, disc, opt_d, sch_d, wav, wav_hat, cfg: CodecTrainConfig) -> dict:
    """One discriminator step, then the generator's adversarial + feature-matching terms.

    Real and generated audio go through the discriminator in one concatenated batch: under DDP
    each forward must be followed by its own backward (two forwards before one backward break the
    gradient reducer), and per-item normalisation in the discriminator keeps this equal to two calls.
    """
    b = wav.shape[0]
    with accelerator.autocast():
        d = disc(torch.cat([wav, wav_hat.detach()]))
        d_loss = discriminator_loss([x[:b] for x in d.logits], [x[b:] for x in d.logits], cfg.adv_kind)
    opt_d.zero_grad(set_to_none=True)
    accelerator.backward(d_loss)
    accelerator.clip_grad_norm_(disc.parameters(), cfg.grad_clip)
    opt_d.step()
    sch_d.step()
    real_feats = [[f[:b].detach() for f in fs] for fs in d.features]
    with accelerator.autocast():
        d_fake = disc(wav_hat)
        return {"adv/gen": generator_adv_loss(d_fake.logits, cfg.adv_kind),
                "adv/feat": feature_matching_loss(real_feats, d_fake.features),
                "disc/loss": d_loss.detach()}


def _valid_batch(cfg: CodecTrainConfig, sr: int, seg: int, hop: int, feats, units):
    """A fixed batch of held-out crops (first utterances of the valid split) for samples and figures."""
    try:
        rows = read_rows(cfg.manifest, cfg.valid_split)
    except FileNotFoundError:
        return None
    rows = [r for r in rows if (feats is None or feats.has(r["id"])) and (units is None or units.has(r["id"]))]
    if not rows:
        return None
    n = min(2, len(rows))
    return StepBatches(rows[:n], sr, seg, hop, n, seed=math.floor(cfg.seed), features=feats, units=units)[0]
