"""`slm head-fit`: train a speech LM's acoustic head afresh on a frozen LM, from cached hidden states.

The head reads, at every semantic frame, the backbone's hidden state and the semantic token, and predicts
that frame's acoustic codes (:mod:`slm.acoustic_head`). With the LM frozen those hidden states are fixed: one
teacher-forced pass per utterance, in the model's own TTS form (:meth:`SpeechPipeline.tts_form_example`, as
``slm eval head`` and ``slm head-tokens`` use it), gives every training pair the head will ever see. So
this stage

1. caches them once (:func:`cache_head_features`: shards of ``h [F, D]`` fp16, ``sem [F]``, ``codes [F, L]``
   with per-utterance offsets, the speakers' reference codes for the voice vector; resumable by shard), and
2. trains a head of any shape on the cache (:func:`fit_head`): thousands of frames per step, no backbone
   pass, an order of magnitude more frames per CPU second than training the head inside ``slm train``
   (which runs the LM forward every step). Held-out loss and accuracy on the cache's ``valid`` split;
   exact resume; the best-on-valid head is kept.

This is how a head with acoustic context (``context: C``, each frame seeing the previous frames' codes)
is put on an existing model: the model dir is copied with the new head (:func:`write_model`).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from slm.acoustic_head import AcousticHead, AcousticHeadConfig, frame_context, frames_from_acoustic

SHARD = 256  # utterances per cache shard (the resume unit)
# what a head must share with the model whose LM states it reads
SHAPE = ("backbone_dim", "n_semantic", "codebook_size", "n_codebooks", "ratio")


def _form(pipe) -> dict:
    return {"tts_aligned": bool(pipe.tts_aligned), "tts_phones": bool(pipe.tts_phones)}


@torch.no_grad()
def cache_head_features(model: str | Path, manifest: str | Path, out_dir: str | Path,
                        splits: tuple[str, ...] = ("train", "valid"), limit: int | None = None,
                        batch: int = 8, progress: bool = True, pipe=None) -> dict:
    """Teacher-force every utterance of ``splits`` of ``manifest`` (the first ``limit`` of each) through the
    model's LM in its TTS form and write ``out_dir/<split>/shard_XXXX.safetensors``: the hidden states the
    head reads (fp16), the codec's semantic tokens and true acoustic codes per frame, and the utterance table
    (id, speaker, offset, frames). ``out_dir/voices.safetensors``: each speaker's reference acoustic codes (its
    first utterance in the manifest, the voice ``slm eval`` prompts with). Resumable: finished shards are
    kept; a cache of another model or form is refused. Returns the cache's ``info.json``."""
    from tqdm import tqdm

    from codec.audio import load_audio
    from codec.runtime import save_safetensors
    from codec.train.batches import read_rows
    from slm.head_tokens import head_pipeline
    from slm.templates import with_phones

    pipe = head_pipeline(model, pipe)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = {"model": str(model), "manifest": str(manifest), "limit": limit, **_form(pipe),
            **{k: getattr(pipe.head.cfg, k) for k in SHAPE}}
    old = out / "info.json"
    if old.is_file():
        prev = json.loads(old.read_text())
        keys = [k for k in info if k != "model"]
        if any(prev.get(k) != info[k] for k in keys):
            raise ValueError(f"{out} caches another setting ({ {k: prev.get(k) for k in keys} }, now "
                             f"{ {k: info[k] for k in keys} }): use a new cache dir")
    all_rows = read_rows(str(manifest), None)
    first: dict[str, dict] = {}
    for r in all_rows:
        first.setdefault(r["speaker"], r)
    sr = pipe.sample_rate
    dev = pipe.head.in_proj.weight.device
    by_split = {split: [r for r in all_rows if r.get("split") == split][:limit] for split in splits}
    for split, rows in by_split.items():
        if not rows:
            raise ValueError(f"{manifest} has no utterances in split {split!r}")
    # the voices first (a few seconds), so a fit can start on the shards written so far
    vpath = out / "voices.safetensors"
    have = {}
    if vpath.is_file():
        from safetensors.torch import load_file

        have = load_file(str(vpath))
    missing = sorted({r["speaker"] for rows in by_split.values() for r in rows} - set(have))
    for spk in missing:
        wav = load_audio(first[spk]["path"], sr)
        have[spk] = pipe.encode(wav, sr).acoustic[0].contiguous()  # [Ka, Ta]
    if missing:
        save_safetensors(have, str(vpath.with_suffix(".tmp")))
        vpath.with_suffix(".tmp").replace(vpath)
    info["speakers"] = sorted(have)
    info["splits"] = {split: {"utterances": len(rows), "shards": math.ceil(len(rows) / SHARD)}
                      for split, rows in by_split.items()}
    old.write_text(json.dumps(info, indent=2) + "\n")
    for split, rows in by_split.items():
        (out / split).mkdir(exist_ok=True)
        shards = [rows[i : i + SHARD] for i in range(0, len(rows), SHARD)]
        bar = tqdm(total=len(rows), desc=f"head features ({split})", unit="utt", disable=not progress)
        for n, part in enumerate(shards):
            path = out / split / f"shard_{n:04d}.safetensors"
            if path.is_file():
                bar.update(len(part))
                continue
            hs, sems, codes, table = [], [], [], []
            for i in range(0, len(part), batch):
                exs, toks = [], []
                for r in part[i : i + batch]:
                    wav = load_audio(r["path"], sr)
                    t = pipe.encode(wav, sr)[0]
                    words = with_phones(r["words"], r.get("phones")) if r.get("words") else None
                    sem = t.semantic[0, 0]
                    exs.append(pipe.tts_form_example(sem, r.get("text", ""), words, wav.shape[-1] / sr))
                    toks.append((sem, frames_from_acoustic(t.acoustic[0], t.ratio)))
                T = max(e.input_ids.numel() for e in exs)
                ids = torch.zeros(len(exs), T, dtype=torch.long)
                mask = torch.zeros(len(exs), T, dtype=torch.long)
                for j, e in enumerate(exs):
                    ids[j, : e.input_ids.numel()], mask[j, : e.input_ids.numel()] = e.input_ids, 1
                hid = pipe.infer_lm(input_ids=ids.to(dev), attention_mask=mask.to(dev),
                                    output_hidden_states=True).hidden_states[-1]
                for j, (e, (sem, fr)) in enumerate(zip(exs, toks)):
                    Ts = min(sem.numel(), fr.shape[0])
                    r = part[i + j]
                    table.append({"id": r["id"], "speaker": r["speaker"], "offset": sum(x["frames"] for x in table),
                                  "frames": Ts})
                    hs.append(hid[j, e.semantic_pos[:Ts].to(dev) - 1].half().cpu())
                    sems.append(sem[:Ts])
                    codes.append(fr[:Ts])
                bar.update(len(exs))
            tmp = path.with_suffix(".tmp")
            save_safetensors({"h": torch.cat(hs), "sem": torch.cat(sems).long(), "codes": torch.cat(codes).long()},
                      str(tmp), metadata={"utterances": json.dumps(table)})
            tmp.replace(path)
        bar.close()
    return info


# ---- training on the cache ----------------------------------------------------------------------------------
@dataclass
class HeadFitConfig:
    cache: str  # a cache_head_features dir
    out: str  # run dir: ckpt.pt (resume), best/ (the best head on valid), log.jsonl
    head: dict = field(default_factory=dict)  # AcousticHeadConfig overrides (context, dim, n_layers, n_heads, ..)
    # a model dir whose head to start from (its shape; `head` may add `context`, whose new weights start
    # fresh while the rest are the head's); None = a new head
    init_from: str | None = None
    steps: int = 4000
    batch_frames: int = 1024
    lr: float = 1e-3
    warmup: int = 200
    min_lr_ratio: float = 0.05  # cosine decay to lr * this
    weight_decay: float = 0.01
    eval_every: int = 250
    seed: int = 0
    bf16: bool = True  # autocast on CPUs with bf16 matmuls (AMX) and on GPUs


@dataclass
class _Split:
    h: torch.Tensor  # [F, D] fp16
    sem: torch.Tensor  # [F]
    codes: torch.Tensor  # [F, L]
    item: torch.Tensor  # [F] utterance index
    speaker: torch.Tensor  # [F] speaker index


def load_cache(cache: str | Path, split: str, speakers: list[str]) -> _Split:
    """All shards of one split of a :func:`cache_head_features` dir, concatenated (frames of an utterance stay
    consecutive)."""
    from safetensors import safe_open

    files = sorted((Path(cache) / split).glob("shard_*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no {split} shards in {cache}: run cache_head_features (`slm head-fit`) first")
    spk = {s: i for i, s in enumerate(speakers)}
    parts: dict[str, list] = {"h": [], "sem": [], "codes": [], "item": [], "speaker": []}
    n_utt = 0
    for f in files:
        with safe_open(str(f), "pt") as st:
            table = json.loads(st.metadata()["utterances"])
            for k in ("h", "sem", "codes"):
                parts[k].append(st.get_tensor(k))
        for u in table:
            parts["item"].append(torch.full((u["frames"],), n_utt, dtype=torch.long))
            parts["speaker"].append(torch.full((u["frames"],), spk[u["speaker"]], dtype=torch.long))
            n_utt += 1
    return _Split(*(torch.cat(parts[k]) for k in ("h", "sem", "codes", "item", "speaker")))


def _voice_table(head: AcousticHead, refs: list[torch.Tensor]) -> torch.Tensor:
    """``[S, dim]``: each speaker's voice vector from its reference codes (:meth:`AcousticHead.voice_vector`)."""
    dev = head.pos_emb.device
    return torch.cat([head.voice_vector(None, r[None].to(dev)) for r in refs])


def _lr(cfg: HeadFitConfig, step: int) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _autocast(cfg: HeadFitConfig, device: torch.device):
    import contextlib

    if not cfg.bf16:
        return contextlib.nullcontext()
    from slm.train import _mixed_precision

    if device.type == "cpu" and _mixed_precision("auto") != "bf16":  # no bf16 matmuls on this CPU
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


@torch.no_grad()
def evaluate_head(head: AcousticHead, data: _Split, voices: torch.Tensor | None, chunk: int = 2048,
                  context: torch.Tensor | None = None) -> dict:
    """Teacher-forced cross-entropy (nats/code) and top-1 accuracy of ``head`` over every frame of ``data``
    (with each frame's speaker's voice vector; no conditioning dropout)."""
    was = head.training
    head.eval()
    dev = head.pos_emb.device
    if context is None and head.cfg.context:
        context = frame_context(data.codes, data.item, head.cfg.context)
    tot, acc, n = 0.0, 0.0, 0
    for i in range(0, data.sem.numel(), chunk):
        sl = slice(i, i + chunk)
        v = None if voices is None else voices[data.speaker[sl]].to(dev)
        ctx = None if context is None else context[sl].to(dev)
        o = head(data.h[sl].to(dev).float(), data.sem[sl].to(dev), data.codes[sl].to(dev), v, ctx)
        k = int((data.codes[sl] >= 0).sum())
        tot, acc, n = tot + o.loss.item() * k, acc + o.accuracy.item() * k, n + k
    head.train(was)
    return {"loss": tot / max(n, 1), "acc": acc / max(n, 1), "codes": n}


def fit_head(cfg: HeadFitConfig, progress: bool = True, device: str = "cpu", stop_after: int | None = None) -> dict:
    """Train a head on a feature cache (:class:`HeadFitConfig`). Resumes from ``out/ckpt.pt`` (weights,
    optimiser, step, RNG) when the run's config is the same; ``stop_after``: leave at the first checkpoint
    (every ``eval_every`` steps) at or after that step, to resume later. Returns the last log record; the
    head with the lowest valid loss is in ``out/best``."""
    from safetensors.torch import load_file
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads((Path(cfg.cache) / "info.json").read_text())
    speakers = info["speakers"]
    refs_by = load_file(str(Path(cfg.cache) / "voices.safetensors"))
    refs = [refs_by[s] for s in speakers]
    base = {k: info[k] for k in SHAPE}
    torch.manual_seed(cfg.seed)  # the new head's weights and the conditioning dropout: one run, one seed
    if cfg.init_from:
        old = AcousticHead.from_pretrained(cfg.init_from)
        have = {k: getattr(old.cfg, k) for k in base}
        if have != base:
            raise ValueError(f"init_from {cfg.init_from}: its head is {have}, the cache's model needs {base}")
        shape = {k: v for k, v in cfg.head.items()
                 if k not in ("context", "context_dropout") and getattr(old.cfg, k) != v}
        if shape:
            raise ValueError(f"init_from {cfg.init_from} fixes the head's shape (only `context` may be added); "
                             f"drop `head` overrides {shape}")
        head = AcousticHead(AcousticHeadConfig(**{**asdict(old.cfg), **cfg.head}))
        missing, unexpected = head.load_state_dict(old.state_dict(), strict=False)
        if unexpected or any(not k.startswith("ctx_") for k in missing):
            raise ValueError(f"init_from {cfg.init_from}: weights that do not fit ({missing}, {unexpected})")
    else:
        head = AcousticHead(AcousticHeadConfig(**{**base, **cfg.head}))
    dev = torch.device(device)
    head.to(dev).train()
    train, valid = load_cache(cfg.cache, "train", speakers), load_cache(cfg.cache, "valid", speakers)
    C = head.cfg.context
    tctx = frame_context(train.codes, train.item, C) if C else None
    vctx = frame_context(valid.codes, valid.item, C) if C else None
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    step, best = 0, float("inf")
    ckpt = out / "ckpt.pt"
    run = {"config": asdict(cfg), "head": asdict(head.cfg)}
    if ckpt.is_file():
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        if st["run"] != run:
            raise ValueError(f"{out} holds a run with other settings: use a new out dir\n  it: {st['run']}\n  now: {run}")
        head.load_state_dict(st["head"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        torch.set_rng_state(st["rng"])
        step, best = st["step"], st["best"]
    data = {name: {"utterances": int(d.item[-1]) + 1, "frames": int(d.sem.numel())}
            for name, d in (("train", train), ("valid", valid))}  # what was cached when the fit began
    (out / "run.json").write_text(json.dumps({**run, "data": data, "cache_info": info}, indent=2) + "\n")
    bar = tqdm(total=cfg.steps, initial=step, desc="head fit", unit="step", disable=not progress)
    rec: dict = {}
    t0, run_loss = time.time(), []
    F_ = train.sem.numel()
    while step < cfg.steps:
        for g in opt.param_groups:
            g["lr"] = _lr(cfg, step)
        idx = torch.randint(F_, (cfg.batch_frames,), generator=gen)
        voices = _voice_table(head, refs)
        with _autocast(cfg, dev):
            o = head(train.h[idx].to(dev).float(), train.sem[idx].to(dev), train.codes[idx].to(dev),
                     voices[train.speaker[idx].to(dev)], None if tctx is None else tctx[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        o.loss.backward()
        torch.nn.utils.clip_grad_norm_(head.parameters(), 1.0)
        opt.step()
        step += 1
        run_loss.append(o.loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{o.loss.item():.3f}", acc=f"{o.accuracy.item():.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            with torch.no_grad():
                ev = evaluate_head(head, valid, _voice_table(head, refs), context=vctx)
            rec = {"step": step, "train_loss": sum(run_loss) / len(run_loss), "valid_loss": ev["loss"],
                   "valid_acc": ev["acc"], "lr": _lr(cfg, step - 1), "seconds": round(time.time() - t0, 1)}
            run_loss = []
            if ev["loss"] < best:
                best = ev["loss"]
                head.eval()
                head.save_pretrained(out / "best")
                head.train()
                rec["best"] = True
            with open(out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(rec) + "\n")
            bar.write(json.dumps(rec))
            tmp = ckpt.with_suffix(".tmp")
            torch.save({"run": run, "head": head.state_dict(), "opt": opt.state_dict(), "gen": gen.get_state(),
                        "rng": torch.get_rng_state(), "step": step, "best": best}, tmp)
            tmp.replace(ckpt)
            if stop_after is not None and step >= stop_after:
                break
    bar.close()
    return rec


def write_model(model: str | Path, head_dir: str | Path, dest: str | Path, note: dict | None = None) -> Path:
    """A copy of the speech-LM model dir ``model`` with the acoustic head of ``head_dir`` (checked to predict
    the same codes from the same backbone); ``note`` goes into its ``slm_config.json`` as ``head_fit``."""
    src, dst = Path(model), Path(dest)
    new = AcousticHead.from_pretrained(head_dir)
    old = json.loads((src / "acoustic_head.json").read_text())  # its shape only
    if any(getattr(new.cfg, k) != old[k] for k in SHAPE):
        raise ValueError(f"the head in {head_dir} ({ {k: getattr(new.cfg, k) for k in SHAPE} }) does not fit {model} "
                         f"({ {k: old[k] for k in SHAPE} })")
    if dst.resolve() == src.resolve():
        raise ValueError("dest must be a new dir, not the model itself")
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(src, dst, symlinks=False)
    new.half().save_pretrained(dst)
    cfg = json.loads((dst / "slm_config.json").read_text())
    cfg["head_fit"] = note or {}
    (dst / "slm_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    return dst
