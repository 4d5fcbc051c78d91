"""Recipe steps that have no `slm` sub-command of their own: time-bounded LM training, TTS/ASR
evaluation of a model dir, and the fp16 export of the bundled default.

Run as ``python -m slm.recipe_steps {lm-train,lm-eval,export} ...`` (the recipe starts them as child
processes; see ``slm.recipe``).
"""
from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from slm.cli import INT8_HELP, add_int8_flag

# ---- lm-train --------------------------------------------------------------------------------------------

def _final_steps(final: Path) -> int | None:
    """Steps of the model dir ``final`` (None if there is none)."""
    f = final / "slm_config.json"
    return int(json.loads(f.read_text()).get("trained_steps", -1)) if f.is_file() else None


def lm_train_bounded(config: str | Path, max_minutes: float = 0.0, chunk: int | None = None) -> Path:
    """``slm.train.train`` in resumable chunks of ``chunk`` steps until done or ``max_minutes`` pass.

    When time runs out, the run is closed at its last checkpoint (the bundle is written with the steps
    actually trained), so a CPU budget bounds the stage without losing the work. Raising ``steps`` in the
    config of a finished (or time-closed) run extends it from its last checkpoint: the cosine schedule is
    then recomputed for the new total (a warm restart) and the run's ``segments`` record each plan (and each
    change of token dir: pointing a resumed run at more data starts a segment too).
    ``max_minutes`` counts the time of every segment. Writes ``<out_dir>/recipe_train.json``
    (planned vs trained steps, seconds, segments)."""
    from slm.train import TrainConfig, train

    cfg = TrainConfig.from_yaml(config)
    planned, chunk = cfg.steps, max(1, chunk or cfg.save_every)
    cfg.save_every = min(cfg.save_every, chunk)  # every chunk ends on a checkpoint
    out = Path(cfg.out_dir)
    info_path = out / "recipe_train.json"
    prev = json.loads(info_path.read_text()) if info_path.exists() else {}
    segments = list(prev.get("segments") or ([{k: prev[k] for k in ("steps_planned", "steps_trained", "seconds")}]
                                             if prev else []))
    data = cfg.tokens or cfg.manifest
    if segments and segments[-1]["steps_planned"] == planned and segments[-1].get("tokens", data) == data:
        segments.pop()  # the same plan on the same data, resumed: its segment is rewritten below
    seg_start = sum(s["seconds"] for s in segments)
    spent0 = float(prev.get("seconds", 0.0)) if prev else 0.0
    final = out / "final"
    done = _final_steps(final)
    if done is not None:
        out_of_time = prev.get("stopped_by_time_at") == planned and max_minutes and spent0 >= max_minutes * 60
        if done >= planned or out_of_time:
            print(f"lm-train: {final} is done ({done} steps); raise `steps` or --max-minutes to train on")
            return final
        print(f"lm-train: extending the run from step {done} to {planned}; {final} is rewritten when it ends")
        shutil.rmtree(final)
    t0 = time.perf_counter()
    stopped_by_time = False
    while True:
        final = train(cfg, stop_after=chunk)
        if _final_steps(final) is not None:
            break
        spent = spent0 + time.perf_counter() - t0
        if max_minutes and spent > max_minutes * 60:
            step = json.loads((out / "checkpoints" / "latest" / "step.json").read_text())["step"]
            print(f"lm-train: {spent / 60:.1f} min spent (budget {max_minutes}); closing the run at step {step}")
            cfg.steps, stopped_by_time = step, True
            final = train(cfg, stop_after=0)
            break
    step = json.loads((out / "checkpoints" / "latest" / "step.json").read_text())["step"]
    seconds = round(spent0 + time.perf_counter() - t0, 1)
    segments.append({"steps_planned": planned, "steps_trained": step, "seconds": round(seconds - seg_start, 1),
                     "tokens": data})
    info = {"steps_planned": planned, "steps_trained": step, "stopped_by_time": stopped_by_time,
            "seconds": seconds, "max_minutes": max_minutes, "segments": segments}
    if stopped_by_time:
        info["stopped_by_time_at"] = planned
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    print(json.dumps(info))
    return final


# ---- lm-eval ---------------------------------------------------------------------------------------------

def parse_sampling(spec: str | dict | None) -> dict:
    """Decoding defaults a bundle ships with (:class:`slm.generate.Sampling` fields), from ``k=v,k=v`` or a dict.

    Checked against ``Sampling`` (unknown names and bad values are refused here, before any model loads);
    values are cast to the field's type."""
    import dataclasses

    from slm.generate import Sampling

    if not spec:
        return {}
    if isinstance(spec, str):
        pairs = [x.split("=", 1) for x in spec.split(",") if x.strip()]
        if any(len(kv) != 2 for kv in pairs):
            raise ValueError(f"sampling settings must be name=value pairs separated by commas, got {spec!r}")
        spec = {k.strip(): v.strip() for k, v in pairs}
    types = {f.name: f.type for f in dataclasses.fields(Sampling)}
    bad = sorted(set(spec) - set(types))
    if bad:
        raise ValueError(f"unknown sampling settings {bad}: expected some of {sorted(types)}")
    out = {}
    for k, v in spec.items():
        try:
            out[k] = int(v) if types[k] in (int, "int") else float(v)
        except (TypeError, ValueError):
            raise ValueError(f"sampling setting {k}={v!r}: expected a number") from None
    Sampling(**out)  # its own range checks
    return out


def lm_eval(bundle: str | Path, manifest: str | Path, out: str | Path, tasks: tuple[str, ...] = ("tts", "asr"),
            limit: int = 8, metrics: tuple[str, ...] = ("fidelity", "asr", "dnsmos", "speaker"),
            max_seconds: float = 10.0, seed: int = 0, semantic_only: bool | None = None, int8: bool | str = False,
            sampling: str | dict | None = None) -> dict:
    """TTS and ASR-by-token metrics of a model dir on the test split, next to the data's own floor.
    ``semantic_only``: speak without the acoustic head (None: the model's own setting). ``int8``: decode with
    int8 backbone weights (``SpeechPipeline.from_pretrained(..., int8=True)``). ``sampling``: decoding settings
    over the model's own (:func:`parse_sampling`), as the export will ship them."""
    import dataclasses

    import numpy as np

    from slm.eval.codec_eval import Judges
    from slm.eval.data import load_items
    from slm.eval.lm_eval import eval_asr, eval_tts, voice_prompts
    from slm.pipeline import SpeechPipeline

    overrides = parse_sampling(sampling)
    pipe = SpeechPipeline.from_pretrained(bundle, semantic_only=semantic_only, int8=int8)
    pipe.sampling = dataclasses.replace(pipe.sampling, **overrides)
    items = load_items(manifest, "test", limit)
    judges = Judges(metrics=tuple(metrics))
    res: dict = {"bundle": str(bundle), "manifest": str(manifest), "n": len(items), "semantic_only": pipe.semantic_only,
                 "int8": int8, "seed": seed, "sampling": dataclasses.asdict(pipe.sampling)}
    if "tts" in tasks:
        res["tts"] = eval_tts(pipe, items, judges, max_seconds=max_seconds, seed=seed)
        # floor: the corpus' own audio of the same sentences (speaker similarity: prompt vs original)
        # (speaker similarity only where the prompt is another utterance of that speaker; nan if none is)
        prompts = voice_prompts(items)
        wavs = [it.wav[0].numpy() for it in items]
        sims = [judges.spk(prompts[it.speaker].wav[0].numpy(), w, it.sample_rate)
                for it, w in zip(items, wavs) if prompts[it.speaker].id != it.id]
        res["tts_floor"] = {
            "spk_sim": float(np.mean(sims)) if sims else float("nan"), "spk_sim_pairs": len(sims),
            "dnsmos_ovrl": float(np.mean([judges.mos(w, it.sample_rate).ovrl for it, w in zip(items, wavs)]))}
    if "asr" in tasks:
        res["asr"] = eval_asr(pipe, items, judges)
        if pipe.reader is not None:  # the model's method above; each other method, for comparison
            for m in ("lm", "ctc", "fused"):
                if m != pipe.asr_method:
                    res[f"asr_{m}"] = eval_asr(pipe, items, judges, method=m)
        if pipe.asr_aligned:  # the plain form of the LM alone, for comparison
            res["asr_plain"] = eval_asr(pipe, items, judges, aligned=False, method="lm")
    if "continue" in tasks:
        res["continue"], res["continue_floor"] = _continue_rows(pipe, items, judges, seed)
    if "conditioning" in tasks:  # does the LM use its input? (slm.eval.conditioning)
        from slm.eval.conditioning import conditioning_gain

        # forward passes only (no generation, no judges): cheap enough for more items than the other rows
        res["conditioning"] = conditioning_gain(pipe, load_items(manifest, "test", max(limit, 16)))
    if "head" in tasks and pipe.head is not None:  # where TTS loses intelligibility (slm.eval.lm_eval.eval_head)
        from slm.eval.lm_eval import eval_head

        res["head"] = eval_head(pipe, items, judges, seed=seed)
    o = Path(out)
    o.mkdir(parents=True, exist_ok=True)
    (o / "lm_eval.json").write_text(json.dumps(res, indent=2, default=float) + "\n")
    for t in ("tts", "asr", "asr_lm", "asr_ctc", "asr_fused", "asr_plain", "continue", "conditioning", "head"):
        if t in res:
            print(t, json.dumps({k: v for k, v in res[t].items() if k not in ("items", "per_voice")}, default=float))
    return res


def _continue_rows(pipe, items, judges, seed: int, prompt_s: float = 2.0, seconds: float = 2.0) -> tuple[dict, dict]:
    """Continuation of each item's first ``prompt_s`` seconds, and its floor: the rest of the original
    utterance (DNSMOS, speaker similarity to the prompt) and the perplexity of its reference text."""
    import numpy as np

    from slm.eval.lm_eval import backbone_perplexity, eval_continue

    cont = eval_continue(pipe, items, judges, prompt_seconds=prompt_s, seconds=seconds, seed=seed)
    floor = []
    for it in items:
        n = int(prompt_s * it.sample_rate)
        wav = it.wav[0].numpy()
        rest = wav[n:] if len(wav) - n >= it.sample_rate // 2 else wav  # short item: the whole utterance
        floor.append({"dnsmos_ovrl": judges.mos(rest, it.sample_rate).ovrl,
                      "spk_sim": judges.spk(wav[:n], rest, it.sample_rate),
                      "ppl": backbone_perplexity(pipe.lm, pipe.tokenizer, it.text)})
    mean = {k: float(np.nanmean([f[k] for f in floor])) if floor else float("nan") for k in ("dnsmos_ovrl", "spk_sim", "ppl")}
    return cont, {**mean, "n": len(floor), "prompt_seconds": prompt_s, "seconds": seconds}


# ---- export ----------------------------------------------------------------------------------------------

def _to_fp16(path: Path) -> None:
    """Rewrite a safetensors file with floating tensors in fp16 (integer tensors and metadata kept)."""
    import torch
    from safetensors import safe_open

    from codec.runtime import save_safetensors

    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not iterable)
    sd = {k: (v.half() if v.is_floating_point() and v.dtype != torch.float16 else v).contiguous() for k, v in sd.items()}
    save_safetensors(sd, str(path), metadata=meta)


def dir_mb(d: Path, skip: tuple[str, ...] = ()) -> float:
    """Size of a dir's files in MiB, leaving out the top-level files named in ``skip``."""
    skipped = {d / name for name in skip}
    return sum(p.stat().st_size for p in d.rglob("*") if p.is_file() and p not in skipped) / 2**20


def export_bundle(bundle: str | Path, dest: str | Path, recipe_work: str | Path | None = None,
                  max_mb: float = 80.0, sampling: str | dict | None = None, int8: bool | str | None = None) -> Path:
    """Copy a model dir to ``dest`` with every float tensor in fp16; write the model card; check size.
    ``sampling`` (:func:`parse_sampling`) goes into the bundle's ``slm_config.json`` over the model's own
    decoding defaults; ``int8`` (unless None) as its ``"int8"``: whether the CLI and demo decode with int8
    backbone weights on CPU by default (``SpeechPipeline.from_pretrained(int8=None)``): False, True (int8 weights)
    or ``"w8a8"`` (int8 activations too; see ``slm.generate.int8_mode``)."""
    src, dst = Path(bundle), Path(dest)
    if not (src / "slm_config.json").is_file():
        raise FileNotFoundError(f"{src} is not a model dir (slm_config.json missing)")
    overrides = parse_sampling(sampling)
    if int8 is not None:
        from slm.generate import int8_mode

        mode = int8_mode(int8)  # a bad setting fails before anything is written
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.tmp", "__pycache__"))
    if overrides or int8 is not None:
        cfg = json.loads((tmp / "slm_config.json").read_text())
        if overrides:
            cfg["sampling"] = {**cfg.get("sampling", {}), **overrides}
        if int8 is not None:
            cfg["int8"] = "w8a8" if mode == "w8a8" else bool(mode)  # true: weights (what older bundles hold)
        (tmp / "slm_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in tmp.rglob("*.safetensors"):
        _to_fp16(f)
    cfg_path = tmp / "codec" / "config.json"
    if cfg_path.is_file():
        c = json.loads(cfg_path.read_text())
        c["dtype"] = "float16"
        cfg_path.write_text(json.dumps(c, indent=2))
    mb = dir_mb(tmp)
    if mb > max_mb:
        shutil.rmtree(tmp)
        raise ValueError(f"exported bundle is {mb:.1f} MB, over the {max_mb} MB limit: shrink the LoRA rank, "
                         "the acoustic head or the codec")
    if recipe_work is not None:
        from slm.recipe_card import write_model_card

        write_model_card(tmp, Path(recipe_work), size_mb=mb)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(f"exported {src} -> {dst}: {dir_mb(dst):.1f} MB (fp16)")
    return dst


def voice_bundle(lm_bundle: str | Path, codec: str | Path, dest: str | Path) -> Path:
    """``dest``: a copy of the LM's model dir whose codec is ``codec`` (the voice stage's decoder fine-tune,
    checked to tokenise as the model's own by :func:`slm.pipeline.set_decoder`). Replaced whole."""
    from slm.pipeline import set_decoder

    src, dst = Path(lm_bundle), Path(dest)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("*.tmp", "__pycache__"))
    set_decoder(tmp, codec)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    print(f"{dst}: {src} with the decoder of {codec}")
    return dst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slm.recipe_steps")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("lm-train")
    t.add_argument("config")
    t.add_argument("--max-minutes", type=float, default=0.0)
    t.add_argument("--chunk", type=int, default=None)
    t.add_argument("--threads", type=int, default=None)
    e = sub.add_parser("lm-eval")
    e.add_argument("bundle")
    e.add_argument("--manifest", required=True)
    e.add_argument("--out", required=True)
    e.add_argument("--tasks", default="tts,asr")
    e.add_argument("--limit", type=int, default=8)
    e.add_argument("--metrics", default="fidelity,asr,dnsmos,speaker")
    e.add_argument("--max-seconds", type=float, default=10.0)
    e.add_argument("--threads", type=int, default=None)
    e.add_argument("--semantic-only", action="store_true", default=None,
                   help="speak without the acoustic head (codecs trained with acoustic_dropout)")
    add_int8_flag(e, False, INT8_HELP + "; default: fp32")
    e.add_argument("--seed", type=int, default=0, help="seed of the sampled tasks (tts, continuation)")
    e.add_argument("--sampling", default=None, help="decoding settings over the model's own, e.g. temperature=0.5")
    x = sub.add_parser("export")
    x.add_argument("bundle")
    x.add_argument("dest")
    x.add_argument("--recipe-work", default=None)
    x.add_argument("--max-mb", type=float, default=80.0)
    x.add_argument("--sampling", default=None, help="decoding defaults written into the bundle, e.g. temperature=0.5")
    add_int8_flag(x, None, "write the bundle's CPU decoding default (slm_config.json \"int8\"): int8 weights "
                           "(--int8), int8 activations too (--int8 w8a8) or fp32 (--no-int8); default: keep the bundle's")
    v = sub.add_parser("voice-bundle")
    v.add_argument("lm_bundle")
    v.add_argument("codec")
    v.add_argument("dest")
    a = p.parse_args(argv)
    if getattr(a, "threads", None):
        from codec.runtime import set_threads

        set_threads(a.threads)
    if a.cmd == "lm-train":
        lm_train_bounded(a.config, a.max_minutes, a.chunk)
    elif a.cmd == "lm-eval":
        lm_eval(a.bundle, a.manifest, a.out, tuple(a.tasks.split(",")), a.limit, tuple(a.metrics.split(",")),
                a.max_seconds, seed=a.seed, semantic_only=a.semantic_only, int8=a.int8, sampling=a.sampling)
    elif a.cmd == "voice-bundle":
        voice_bundle(a.lm_bundle, a.codec, a.dest)
    else:
        export_bundle(a.bundle, a.dest, a.recipe_work, a.max_mb, sampling=a.sampling, int8=a.int8)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
