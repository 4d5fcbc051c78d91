"""The recipe from nothing to the bundled default model: named, resumable stages.

``slm recipe default`` runs, in order::

    synth     synthesise the phone-aligned corpus              slm data synth
    real      the real-speech validation set                   slm data real
    teacher   teacher features + k-means units                 slm codec teacher-cache / kmeans
    codec     train the codec                                  slm codec train
    tokenize  encode the corpus with the codec                 slm codec tokenize
    lm        LoRA + acoustic-head training on the tokens      slm train (slm.recipe_steps lm-train)
              (+ ``lm_finetune:``, more runs, each from the model before it: the aligned TTS / ASR forms)
    eval      codec / semantic / TTS / ASR tables              slm eval codec|semantic (+ recipe_steps lm-eval)
    export    fp16 bundle + model card in checkpoints/default  slm.recipe_steps export

Every stage is a list of commands run as child processes (so each stage starts with fresh memory and
its own thread count), then a check of its outputs. A finished stage writes
``<work_dir>/stamps/<stage>.json`` (commands, wall and CPU seconds, outputs); a rerun skips a stage
whose stamp exists and whose outputs are still complete. Settings come from one YAML file
(``configs/recipe/default.yaml``, ``configs/recipe/tiny.yaml``); ``--set a.b=value`` overrides a key.
Any stage's output may point at an existing directory (``corpus.dir``, ``codec.checkpoint``, ...):
the stage then only runs its (resumable) command, which finds the work done.
"""
from __future__ import annotations

import copy
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGES = ("synth", "real", "teacher", "codec", "tokenize", "lm", "voice", "reader", "eval", "export")


def ft_run_dir(work: Path, i: int) -> Path:
    """Run dir of a build's i-th LM fine-tune (``lm_finetune``): ``lm_ft``, ``lm_ft2``, ..."""
    return work / ("lm_ft" if i == 0 else f"lm_ft{i + 1}")


def finetune_runs(settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Settings of the optional further LM runs (``lm_finetune:``, one mapping or a list of them), each
    starting from the model of the run before it; disabled entries (``enabled: false``) left out."""
    ft = settings.get("lm_finetune") or []
    runs = [ft] if isinstance(ft, dict) else list(ft)
    if not all(isinstance(x, dict) for x in runs):
        raise ValueError(f"lm_finetune must be a mapping or a list of mappings, got {ft!r}")
    return [x for x in runs if x.get("enabled", True)]


def load_settings(path: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The recipe YAML as a dict, with ``key.sub=value`` overrides (values parsed as YAML)."""
    import yaml

    from codec.config import load_yaml_mapping

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"recipe settings {p} not found: expected a YAML file like configs/recipe/default.yaml")
    d = load_yaml_mapping(p, "recipe settings")
    for o in overrides or []:
        key, sep, value = o.partition("=")
        if not sep or not key:
            raise ValueError(f"override {o!r}: expected KEY.SUB=VALUE")
        _override(d, key.split("."), yaml.safe_load(value), o)
    for k in ("work_dir", "corpus", "codec", "lm", "export"):
        if k not in d:
            raise ValueError(f"{p}: missing section {k!r}")
    return d


# The keys the stages read, by section (list indices left out of the path): an override must name one of these
# or a key the settings file has. The ``train`` mappings take the fields of the training configs.
SETTINGS_KEYS: dict[tuple[str, ...], set[str]] = {
    (): {"work_dir", "threads", "corpus", "lm_corpus", "real", "teacher", "codec", "tokenize", "lm", "lm_finetune",
         "voice", "reader", "eval", "export"},
    ("corpus",): {"dir", "hours", "seed", "workers"},
    ("lm_corpus",): {"dir", "hours", "seed", "workers"},
    ("real",): {"enabled", "dir"},
    ("teacher",): {"enabled", "spec", "features", "centroids", "k", "rate", "max_frames"},
    ("codec",): {"model", "corpus", "checkpoint", "max_minutes", "train", "decoder_finetune"},
    ("codec", "decoder_finetune"): {"max_minutes", "train"},
    ("tokenize",): {"dir", "workers"},
    ("lm",): {"backbone", "init_from", "max_minutes", "train"},
    ("lm_finetune",): {"enabled", "max_minutes", "device", "train"},
    ("voice",): {"enabled", "limit", "max_minutes", "seed", "manifest", "train"},
    ("reader",): {"steps", "ctc_weight", "beam", "pre_beam", "dim", "layers", "heads", "upsample", "method",
                  "lm_weight", "word_bonus", "fused_beam", "lexicon", "substitute", "time_mask", "acoustic"},
    ("eval",): {"tasks", "metrics", "limit", "real_limit", "lm_limit", "probe_steps", "probe_train_limit"},
    ("export",): {"dir", "max_mb", "sampling", "int8"},
}
# Sections a null turns off (the stages read null as "none").
NULLABLE = {("lm_corpus",), ("lm_finetune",), ("voice",), ("reader",), ("codec", "decoder_finetune")}
ANY_KEY = "any key"  # a mapping whose keys the settings do not fix (checked where it is used)


def _known_keys(path: tuple[str, ...]) -> set[str] | str | None:
    """The keys a mapping at ``path`` may hold: a set, ``ANY_KEY``, or None where the value is no mapping."""
    p = tuple(k for k in path if not k.isdigit())
    if p in SETTINGS_KEYS:
        return SETTINGS_KEYS[p]
    if "train" in p[1:]:
        import dataclasses
        import typing

        i = p.index("train", 1)
        if p[0] in ("lm", "lm_finetune"):
            from slm.train import TrainConfig as cls
        else:
            from codec.train.config import CodecTrainConfig as cls
        hints = typing.get_type_hints(cls)
        if len(p) == i + 1:
            return {f.name for f in dataclasses.fields(cls)}
        if len(p) == i + 2 and p[-1] in hints:  # a mapping field (head, lora, recon, ...): the config checks its keys
            tp = hints[p[-1]]
            if any(a is dict or typing.get_origin(a) is dict or dataclasses.is_dataclass(a)
                   for a in typing.get_args(tp) or (tp,)):
                return ANY_KEY
        return None
    return ANY_KEY if p in (("codec", "model"), ("export", "sampling")) else None


def _override(d: dict[str, Any], parts: list[str], value: Any, o: str) -> None:
    """Set ``d[parts[0]][parts[1]]... = value`` for ``--set o``: every key must be one the settings have or the
    stages read, a mapping is not replaced by a value (but a null turns an optional section off), and a value is
    not indexed into."""
    node: Any = d
    for i, k in enumerate(parts):
        here = tuple(parts[:i])
        name = ".".join(here) or "the top level"
        if isinstance(node, list):
            if not (k.isdigit() and int(k) < len(node)):
                raise ValueError(f"--set {o}: {name} is a list of {len(node)}; expected an index 0..{len(node) - 1}, "
                                 f"got {k!r}")
            k = int(k)
        else:
            known = _known_keys(here)
            if k not in node and known is not ANY_KEY and k not in (known or ()):
                valid = ", ".join(sorted({*node, *(known or ())}, key=str))
                raise ValueError(f"--set {o}: unknown key {k!r} under {name}; valid keys there: {valid}")
        old = node[k] if isinstance(node, list) or k in node else None
        if i == len(parts) - 1:
            path = tuple(parts)
            if isinstance(old, dict | list) and not isinstance(value, dict | list) and not (
                    value is None and tuple(x for x in path if not x.isdigit()) in NULLABLE):
                what = ("a list: give a list (KEY=[a, b])" if isinstance(old, list) else
                        f"a mapping of settings: set one of its keys ({'.'.join(parts)}.KEY=VALUE)")
                raise ValueError(f"--set {o}: {'.'.join(parts)} is {what}, not replace it by {value!r}")
            node[k] = value
        elif isinstance(old, dict | list):
            node = old
        elif old is None and _known_keys((*here, str(k))) is not None:
            node[k] = {}
            node = node[k]
        else:
            raise ValueError(f"--set {o}: {'.'.join(parts[:i + 1])} is {old!r}, not a mapping: it has no key "
                             f"{parts[i + 1]!r}")


@dataclass
class Recipe:
    """Settings plus the paths every stage derives from them."""

    s: dict[str, Any]
    root: Path  # relative paths in the settings are relative to this (the repo root)

    def path(self, p: str | Path) -> Path:
        return Path(p) if Path(p).is_absolute() else self.root / p

    @property
    def work(self) -> Path:
        return self.path(self.s["work_dir"])

    @property
    def threads(self) -> int:
        return int(self.s.get("threads", 1))

    @property
    def corpus(self) -> Path:
        return self.path(self.s["corpus"].get("dir") or self.work / "corpus")

    @property
    def manifest(self) -> Path:
        return self.corpus / "manifest.jsonl"

    @property
    def lm_corpus(self) -> Path | None:
        """A larger corpus for the LM only (``lm_corpus.dir``), or None: the LM trains on ``corpus``."""
        c = self.s.get("lm_corpus") or {}
        return self.path(c["dir"]) if c.get("dir") else None

    @property
    def lm_manifest(self) -> Path:
        """What the tokenize stage encodes: the LM corpus if there is one (evaluation stays on ``corpus``)."""
        return (self.lm_corpus / "manifest.jsonl") if self.lm_corpus else self.manifest

    @property
    def codec_manifest(self) -> Path:
        """What the teacher and codec stages train on: ``codec.corpus`` = ``corpus`` (the default) or
        ``lm_corpus`` (the larger LM corpus). Evaluation stays on ``corpus`` either way."""
        which = self.s["codec"].get("corpus") or "corpus"
        if which not in ("corpus", "lm_corpus"):
            raise ValueError(f"codec.corpus must be 'corpus' or 'lm_corpus', got {which!r}")
        if which == "lm_corpus" and self.lm_corpus is None:
            raise ValueError("codec.corpus is 'lm_corpus' but the settings have no lm_corpus.dir")
        return self.lm_manifest if which == "lm_corpus" else self.manifest

    @property
    def lm_init(self) -> Path | None:
        """The model the first LM run starts from (``lm.init_from``: its adapter, new-token rows and, unless
        the codec differs, its head), or None: a fresh adapter. With ``lm.train.remap_semantic`` the model may
        come from another codec (slm.train.semantic_remap)."""
        given = self.s["lm"].get("init_from")
        if not given:
            return None
        d = self.path(given)
        if d.resolve() == self.export_dir.resolve():
            raise ValueError(f"lm.init_from is {d}, the recipe's own export dir: the build would start from its own "
                             "output and overwrite it. Point it at the model to build on (e.g. an earlier build's "
                             "bundle kept elsewhere).")
        return d

    @property
    def real(self) -> Path:
        return self.path((self.s.get("real") or {}).get("dir") or self.work / "real")

    @property
    def features(self) -> Path:
        return self.path((self.s.get("teacher") or {}).get("features") or self.work / "teacher" / "features")

    @property
    def centroids(self) -> Path:
        k = self.s.get("teacher", {}).get("k", 1024)
        return self.path(self.s.get("teacher", {}).get("centroids") or self.work / "teacher" / f"kmeans{k}.safetensors")

    @property
    def units(self) -> Path:
        return self.centroids.with_name(self.centroids.stem + ".units")

    @property
    def codec_run(self) -> Path:
        return self.work / "codec"

    @property
    def codec_base(self) -> Path:
        """The codec the codec stage trains (or the one it is given)."""
        given = self.s["codec"].get("checkpoint")
        return self.path(given) if given else self.codec_run / "final"

    @property
    def codec_dec_run(self) -> Path:
        return self.work / "codec_dec"

    @property
    def codec(self) -> Path:
        """The codec every later stage uses: the decoder fine-tune's when there is one (same tokens)."""
        return self.codec_dec_run / "final" if self.s["codec"].get("decoder_finetune") else self.codec_base

    @property
    def tokens(self) -> Path:
        return self.path(self.s.get("tokenize", {}).get("dir") or self.work / "tokens")

    @property
    def lm_run(self) -> Path:
        return self.work / "lm"

    @property
    def lm_finetunes(self) -> list[dict[str, Any]]:
        return finetune_runs(self.s)

    def lm_ft_run(self, i: int = 0) -> Path:
        return ft_run_dir(self.work, i)

    @property
    def lm_bundle(self) -> Path:
        """The model of the LM stage's last run."""
        n = len(self.lm_finetunes)
        return (self.lm_ft_run(n - 1) if n else self.lm_run) / "final"

    @property
    def voice(self) -> dict[str, Any] | None:
        """Settings of the voice stage (``voice:``): a decoder fine-tune on the acoustic head's codes; None
        when off (null, or ``enabled: false``)."""
        v = self.s.get("voice")
        return v if isinstance(v, dict) and v.get("enabled", True) else None

    @property
    def head_tokens(self) -> Path:
        return self.work / "head_tokens"

    @property
    def voice_dec_run(self) -> Path:
        return self.work / "voice_dec"

    @property
    def bundle(self) -> Path:
        """The model the recipe evaluates and exports: the LM stage's, with the voice stage's decoder if on."""
        return self.work / "voice" / "final" if self.voice else self.lm_bundle

    @property
    def final_codec(self) -> Path:
        """The bundle's codec: the voice stage's decoder fine-tune if on (same tokens), else :attr:`codec`."""
        return self.voice_dec_run / "final" if self.voice else self.codec

    @property
    def eval_dir(self) -> Path:
        return self.work / "eval"

    @property
    def export_dir(self) -> Path:
        return self.path(self.s["export"].get("dir", "checkpoints/default"))

    def sampling_args(self) -> list[str]:
        """``--sampling k=v,..`` from ``export.sampling``: the decoding defaults the bundle ships with, which the
        eval stage measures with (checked here, so a typo fails before any stage runs)."""
        from slm.recipe_steps import parse_sampling

        sp = parse_sampling(self.s["export"].get("sampling"))
        return ["--sampling", ",".join(f"{k}={v}" for k, v in sorted(sp.items()))] if sp else []

    def slm(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "slm", "--threads", str(self.threads), *args]

    def step(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "slm.recipe_steps", *args]


# ---- per-stage commands and output checks -----------------------------------------------------------------

def _lines(p: Path) -> int:
    return sum(1 for x in p.read_text().splitlines() if x.strip()) if p.is_file() else 0


def _synth(r: Recipe) -> list[list[str]]:
    out = []
    for c, d in ((r.s["corpus"], r.corpus), (r.s.get("lm_corpus") or {}, r.lm_corpus)):
        if d is not None:
            out.append(r.slm("data", "synth", "--hours", str(c.get("hours", 2.0)), "--out", str(d),
                             "--seed", str(c.get("seed", 0)), "--workers", str(c.get("workers", r.threads))))
    return out


def _synth_ok(r: Recipe) -> list[str]:
    return [f"{d / 'manifest.jsonl'} (+summary.json)" for d in (r.corpus, r.lm_corpus)
            if d is not None and not ((d / "summary.json").is_file() and _lines(d / "manifest.jsonl") > 0)]


def _real(r: Recipe) -> list[list[str]]:
    return [r.slm("data", "real", "--out", str(r.real))] if r.s.get("real", {}).get("enabled", True) else []


def _real_ok(r: Recipe) -> list[str]:
    if not r.s.get("real", {}).get("enabled", True):
        return []
    return [] if _lines(r.real / "manifest.jsonl") > 0 else [str(r.real / "manifest.jsonl")]


def _teacher(r: Recipe) -> list[list[str]]:
    """Teacher features of the codec's corpus, then k-means units. A complete feature cache, and complete
    centroids + units, are reused as they are (the k-means fit is not deterministic across machines, and the
    codec trained on those units)."""
    t = r.s.get("teacher", {})
    if not t.get("enabled", True):
        return []
    cmds = []
    if not _features_complete(r):
        cmds.append(r.slm("codec", "teacher-cache", "--manifest", str(r.codec_manifest), "--teacher",
                          t.get("spec", "whisper-base-ct2"), "--out", str(r.features)))
    if cmds or not _units_complete(r):
        cmds.append(r.slm("codec", "kmeans", "--features", str(r.features), "--k", str(t.get("k", 1024)),
                          "--rate", str(t.get("rate", 12.5)), "--out", str(r.centroids), "--units-out", str(r.units),
                          "--max-frames", str(t.get("max_frames", 200_000))))
    return cmds


def _n_items(d: Path) -> int:
    return len(list((d / "items").rglob("*.safetensors"))) if (d / "meta.json").is_file() else 0


def _features_complete(r: Recipe) -> bool:
    n = _lines(r.codec_manifest)
    return bool(n) and _n_items(r.features) >= n


def _units_complete(r: Recipe) -> bool:
    n = _lines(r.codec_manifest)
    return bool(n) and r.centroids.is_file() and _n_items(r.units) >= n


def _teacher_ok(r: Recipe) -> list[str]:
    if not r.s.get("teacher", {}).get("enabled", True):
        return []
    n = _lines(r.codec_manifest)
    missing = [str(p) for p in (r.features / "meta.json", r.centroids, r.units / "meta.json") if not p.exists()]
    if not missing and not _units_complete(r):
        missing.append(f"{r.units}/items (fewer than {n} utterances)")
    return missing


def codec_train_config(r: Recipe) -> dict[str, Any]:
    """The `slm codec train` YAML the recipe writes: its settings plus the paths of earlier stages."""
    c = r.s["codec"]
    d = {"model": c.get("model", "configs/codec/sacodec.yaml"), **copy.deepcopy(c.get("train", {})),
         "out_dir": str(r.codec_run), "manifest": str(r.codec_manifest)}
    if isinstance(d["model"], str):
        d["model"] = str(r.path(d["model"]))
    if r.s.get("teacher", {}).get("enabled", True):
        d.update(teacher_features=str(r.features), teacher_units=str(r.units), teacher_centroids=str(r.centroids))
    return d


def codec_finetune_config(r: Recipe) -> dict[str, Any]:
    """The `slm codec train` YAML of the decoder fine-tune (``codec.decoder_finetune``): the codec's train
    settings with the fine-tune's on top, starting from the codec stage's model with only the decoder
    trained (``train_only``), so every token stays as the codec stage made it."""
    d = codec_train_config(r)
    # the frozen projector's anchor loss is the only use of the teacher features: a fine-tune that trains
    # the projector too sets teacher_features in its own train settings
    d.pop("teacher_features", None)
    d.update({"train_only": ["decoder"], **copy.deepcopy(r.s["codec"]["decoder_finetune"].get("train", {})),
              "init_from": str(r.codec_base), "out_dir": str(r.codec_dec_run)})
    return d


def _codec_train_cmd(r: Recipe, yaml_name: str, config: dict[str, Any], max_minutes: Any) -> list[str]:
    """Write ``config`` to ``<work>/<yaml_name>``; the resumable `slm codec train` command that runs it."""
    import yaml

    path = r.work / yaml_name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = r.slm("codec", "train", "--config", str(path), "--resume")
    return cmd + ["--max-minutes", str(max_minutes)] if max_minutes else cmd


def _codec(r: Recipe) -> list[list[str]]:
    c, cmds = r.s["codec"], []
    # a finished codec is reused as it is (a time-bounded run resumed past its budget would train on)
    if not c.get("checkpoint") and not (r.codec_base / "config.json").is_file():
        cmds.append(_codec_train_cmd(r, "codec_train.yaml", codec_train_config(r), c.get("max_minutes")))
    if c.get("decoder_finetune") and not (r.codec / "config.json").is_file():  # same rule as above
        cmds.append(_codec_train_cmd(r, "codec_dec_train.yaml", codec_finetune_config(r),
                                     c["decoder_finetune"].get("max_minutes")))
    return cmds


def _codec_ok(r: Recipe) -> list[str]:
    return [] if (r.codec / "config.json").is_file() and (r.codec / "model.safetensors").is_file() else [str(r.codec)]


def _tokenize(r: Recipe) -> list[list[str]]:
    return [r.slm("codec", "tokenize", str(r.codec), "--manifest", str(r.lm_manifest), "--out", str(r.tokens),
                  "--workers", str(r.s.get("tokenize", {}).get("workers", r.threads)))]


def _tokenize_ok(r: Recipe) -> list[str]:
    n = _lines(r.lm_manifest)
    return [] if n and _lines(r.tokens / "index.jsonl") == n else [f"{r.tokens}/index.jsonl ({n} rows)"]


def lm_train_config(r: Recipe) -> dict[str, Any]:
    lm = r.s["lm"]
    cfg = {**copy.deepcopy(lm.get("train", {})), "codec": str(r.codec), "tokens": str(r.tokens),
           "out_dir": str(r.lm_run), "backbone": lm.get("backbone", "smollm2-135m")}
    if r.lm_init is not None:  # the adapter (and its LoRA shape) comes from that model
        cfg.pop("lora", None)
        cfg["init_from"] = str(r.lm_init)
    elif cfg.get("remap_semantic"):
        raise ValueError("lm.train.remap_semantic moves a trained model onto this codec: set lm.init_from to it")
    return cfg


def lm_finetune_config(r: Recipe, i: int = 0) -> dict[str, Any]:
    """The i-th fine-tune run: the first LM run's settings with the ``train`` of fine-tunes 0..i on top (in
    order), starting from the model of the run before it (``init_from``: adapter, new-token rows and head;
    the model's own codec)."""
    cfg = {k: v for k, v in lm_train_config(r).items() if k not in ("codec", "lora", "head", "remap_semantic")}
    for run in r.lm_finetunes[: i + 1]:
        cfg.update(copy.deepcopy(run.get("train", {})))
    prev = r.lm_ft_run(i - 1) if i else r.lm_run
    return {**cfg, "init_from": str(prev / "final"), "out_dir": str(r.lm_ft_run(i))}


def _lm(r: Recipe) -> list[list[str]]:
    import yaml

    runs = [("lm_train.yaml", lm_train_config(r), r.s["lm"])]
    runs += [(f"{r.lm_ft_run(i).name}_train.yaml", lm_finetune_config(r, i), run) for i, run in enumerate(r.lm_finetunes)]
    cmds = []
    for name, cfg, run in runs:
        path = r.work / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        cmds.append(r.step("lm-train", str(path), "--max-minutes", str(run.get("max_minutes", 0)),
                           "--threads", str(r.threads)))
    return cmds


def _lm_ok(r: Recipe) -> list[str]:
    need = [r.lm_run / "final"] + [r.lm_ft_run(i) / "final" for i in range(len(r.lm_finetunes))]
    return [str(d) for d in dict.fromkeys(need) if not (d / "slm_config.json").is_file()]


def voice_train_config(r: Recipe) -> dict[str, Any]:
    """The `slm codec train` YAML of the voice stage: the codec's train settings with ``voice.train`` on top,
    from the LM's codec with only its decode path trained on crops decoded from the head's codes."""
    v, c = r.voice or {}, r.s["codec"]
    if not (r.codec / "config.json").is_file():
        raise FileNotFoundError(f"the voice stage fine-tunes the LM's codec, {r.codec}, which is not there: run the "
                                "codec stage first")
    from codec.model import decode_only_modules

    saved = json.loads((r.codec / "config.json").read_text())
    # the model is the codec's own saved config, whatever YAML (or given checkpoint) it came from
    d = {**copy.deepcopy(c.get("train", {})), "model": saved["codec"]}
    d.update({"train_only": list(decode_only_modules(saved.get("variant", ""))),
              "head_token_prob": 1.0, **copy.deepcopy(v.get("train", {})),
              "init_from": str(r.codec), "head_tokens": str(r.head_tokens), "manifest": str(_voice_manifest(r)),
              "out_dir": str(r.voice_dec_run)})
    return d


def _voice_manifest(r: Recipe) -> Path:
    m = (r.voice or {}).get("manifest", "lm_corpus")
    return {"lm_corpus": r.lm_manifest, "corpus": r.manifest}.get(m) or r.path(m)


def _voice(r: Recipe) -> list[list[str]]:
    """Head tokens of the voice manifest's train split, a decoder fine-tune on them, and the LM's model with
    that decoder (the same tokens, so the LM is unchanged)."""
    if not r.voice:
        return []
    v, cmds = r.voice, []
    if not (r.voice_dec_run / "final" / "config.json").is_file():  # a finished fine-tune is reused as it is
        ht = r.slm("head-tokens", str(r.lm_bundle), "--manifest", str(_voice_manifest(r)), "--out", str(r.head_tokens),
                   "--seed", str(v.get("seed", 0)))
        cmds.append(ht + (["--limit", str(v["limit"])] if v.get("limit") else []))
        cmds.append(_codec_train_cmd(r, "voice_train.yaml", voice_train_config(r), v.get("max_minutes")))
    cmds.append(r.step("voice-bundle", str(r.lm_bundle), str(r.voice_dec_run / "final"), str(r.bundle)))
    return cmds


def _voice_ok(r: Recipe) -> list[str]:
    if not r.voice:
        return []
    return [] if (r.bundle / "slm_config.json").is_file() and (r.bundle / "codec" / "config.json").is_file() else [str(r.bundle)]


def _reader(r: Recipe) -> list[list[str]]:
    """The CTC reader of the LM's semantic tokens (slm.ctc_reader), installed into the model with its ASR settings (fused and joint decoding)."""
    c = r.s.get("reader")
    if not c:
        return []
    cmd = r.slm("ctc-reader", "train", "--tokens", str(r.tokens), "--out", str(r.work / "ctc_reader"),
                "--steps", str(c.get("steps", 4000)), "--install", str(r.bundle))
    for k in ("ctc_weight", "beam", "pre_beam", "dim", "layers", "heads", "upsample", "method", "lm_weight",
              "word_bonus", "fused_beam", "lexicon", "substitute", "time_mask"):
        if k in c:
            cmd += [f"--{k.replace('_', '-')}", str(c[k])]
    if c.get("acoustic"):
        cmd.append("--acoustic")
    return [cmd]


def _reader_ok(r: Recipe) -> list[str]:
    if not r.s.get("reader"):
        return []
    # the stage's own reader installed, not just any reader: a model fine-tuned from another keeps that one's
    mine, there = r.work / "ctc_reader" / "reader", r.bundle / "ctc_reader"
    same = all((mine / f).is_file() and (there / f).is_file() and (mine / f).read_bytes() == (there / f).read_bytes()
               for f in ("config.json", "model.safetensors"))
    return [] if same else [str(there)]


def _eval(r: Recipe) -> list[list[str]]:
    e = r.s.get("eval", {})
    tasks = e.get("tasks", ["codec", "semantic", "tts", "asr"])
    limit, metrics = str(e.get("limit", 16)), ",".join(e.get("metrics", ["fidelity", "asr", "dnsmos", "speaker"]))
    out = r.eval_dir
    cmds = []
    if "codec" in tasks:
        cmds.append(r.slm("eval", "codec", str(r.final_codec), "--manifest", str(r.manifest), "--limit", limit,
                          "--metrics", metrics, "--out", str(out / "codec")))
        if r.s.get("real", {}).get("enabled", True) and e.get("real_limit", 0):
            cmds.append(r.slm("eval", "codec", str(r.final_codec), "--manifest", str(r.real / "manifest.jsonl"),
                              "--split", "all", "--limit", str(e["real_limit"]), "--metrics", metrics,
                              "--out", str(out / "codec_real")))
    if "semantic" in tasks:
        cmds.append(r.slm("eval", "semantic", str(r.final_codec), "--manifest", str(r.manifest), "--limit", limit,
                          "--probe-steps", str(e.get("probe_steps", 100)), "--train-limit",
                          str(e.get("probe_train_limit", 200)), "--out", str(out / "semantic")))
    lm_tasks = [t for t in tasks if t in ("tts", "asr", "continue", "conditioning", "head")]
    if lm_tasks:
        cmds.append(r.step("lm-eval", str(r.bundle), "--manifest", str(r.manifest), "--limit", str(e.get("lm_limit", 8)),
                           "--tasks", ",".join(lm_tasks), "--metrics", metrics, "--out", str(out / "lm"),
                           "--threads", str(r.threads), *r.sampling_args()))
    return cmds


def _eval_ok(r: Recipe) -> list[str]:
    tasks = r.s.get("eval", {}).get("tasks", ["codec", "semantic", "tts", "asr"])
    want = {"codec": "codec/codec_eval.json", "semantic": "semantic/semantic_eval.json", "tts": "lm/lm_eval.json",
            "asr": "lm/lm_eval.json", "continue": "lm/lm_eval.json", "conditioning": "lm/lm_eval.json",
            "head": "lm/lm_eval.json"}
    return [str(r.eval_dir / want[t]) for t in tasks if t in want and not (r.eval_dir / want[t]).is_file()]


def _export(r: Recipe) -> list[list[str]]:
    i8 = r.s["export"].get("int8")
    return [r.step("export", str(r.bundle), str(r.export_dir), "--recipe-work", str(r.work),
                   "--max-mb", str(r.s["export"].get("max_mb", 80)), *r.sampling_args(),
                   *([] if i8 is None else ["--int8", "w8a8"] if i8 == "w8a8" else ["--int8" if i8 else "--no-int8"]))]


def _export_ok(r: Recipe) -> list[str]:
    need = ("slm_config.json", "token_layout.json", "README.md", "codec/config.json")
    return [str(r.export_dir / n) for n in need if not (r.export_dir / n).is_file()]


@dataclass
class Stage:
    name: str
    what: str
    commands: Callable[[Recipe], list[list[str]]]
    missing: Callable[[Recipe], list[str]]  # outputs not (yet) complete; [] = done


STAGE_TABLE = {
    "synth": Stage("synth", "synthesise the phone-aligned corpus", _synth, _synth_ok),
    "real": Stage("real", "real-speech validation set (asterisk prompts)", _real, _real_ok),
    "teacher": Stage("teacher", "teacher features + k-means units", _teacher, _teacher_ok),
    "codec": Stage("codec", "train the codec", _codec, _codec_ok),
    "tokenize": Stage("tokenize", "tokenise the corpus with the codec", _tokenize, _tokenize_ok),
    "lm": Stage("lm", "train the LM (LoRA) + acoustic head", _lm, _lm_ok),
    "voice": Stage("voice", "fine-tune the codec's decoder on the acoustic head's codes", _voice, _voice_ok),
    "reader": Stage("reader", "train the CTC reader of the semantic tokens (fused / joint ASR)", _reader, _reader_ok),
    "eval": Stage("eval", "evaluate codec / semantic stream / TTS / ASR", _eval, _eval_ok),
    "export": Stage("export", "fp16 bundle + model card", _export, _export_ok),
}


# ---- running -------------------------------------------------------------------------------------------

@dataclass
class StageResult:
    name: str
    skipped: bool
    wall_s: float = 0.0
    cpu_s: float = 0.0  # user+sys seconds of the stage's child processes
    peak_rss_mb: float = 0.0


def _stamp(r: Recipe, name: str) -> Path:
    return r.work / "stamps" / f"{name}.json"


def select_stages(from_stage: str | None = None, only: list[str] | None = None) -> list[str]:
    for n in [from_stage, *(only or [])]:
        if n is not None and n not in STAGES:
            raise ValueError(f"unknown stage {n!r}: expected one of {', '.join(STAGES)}")
    if only:
        return [s for s in STAGES if s in only]
    return list(STAGES[STAGES.index(from_stage):] if from_stage else STAGES)


def run_stage(r: Recipe, name: str, force: bool = False, log=print) -> StageResult:
    st = STAGE_TABLE[name]
    stamp = _stamp(r, name)
    if not force and stamp.is_file() and not st.missing(r):
        prev = json.loads(stamp.read_text())
        log(f"[{name}] done already ({prev.get('wall_s', 0):.0f} s wall when built) -> skip")
        return StageResult(name, True)
    log(f"[{name}] {st.what}")
    t0, ru0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
    cmds = st.commands(r)
    from codec.runtime import omp_defaults

    env = {**omp_defaults(dict(os.environ)),
           "PYTHONPATH": os.pathsep.join([str(r.root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for cmd in cmds:
        log(f"[{name}] $ {' '.join(cmd[1:] if cmd[0] == sys.executable else cmd)}")
        c0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=str(r.root), env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"stage {name!r}: command failed with exit code {proc.returncode}: {' '.join(cmd)}")
        log(f"[{name}]   took {time.perf_counter() - c0:.1f} s")
    missing = st.missing(r)
    if missing:
        raise RuntimeError(f"stage {name!r} ran but its outputs are incomplete: {missing}")
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = StageResult(name, False, time.perf_counter() - t0,
                      (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime), ru1.ru_maxrss / 1024)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"stage": name, "wall_s": round(res.wall_s, 1), "cpu_s": round(res.cpu_s, 1),
                                 "peak_rss_mb": round(res.peak_rss_mb), "threads": r.threads,
                                 "commands": [" ".join(c) for c in cmds],
                                 "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")
    log(f"[{name}] cost: {res.wall_s:.1f} s wall, {res.cpu_s:.1f} s CPU, peak child RSS {res.peak_rss_mb:.0f} MB")
    return res


def run_recipe(settings: dict[str, Any], root: str | Path = ".", from_stage: str | None = None,
               only: list[str] | None = None, force: bool = False, log=print) -> list[StageResult]:
    """Run the selected stages in order; returns what each did (skipped or its measured cost)."""
    r = Recipe(settings, Path(root).resolve())
    r.sampling_args()  # bad decoding settings fail now, not after hours of training
    r.work.mkdir(parents=True, exist_ok=True)
    (r.work / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    out = [run_stage(r, n, force=force, log=log) for n in select_stages(from_stage, only)]
    total = sum(x.wall_s for x in out)
    log(f"recipe: {sum(not x.skipped for x in out)} stage(s) ran, {sum(x.skipped for x in out)} skipped, "
        f"{total:.0f} s wall")
    return out
