"""Bad config files and overrides fail at once with one clear line (file, key, value, what was expected): no
traceback, nothing silently accepted, no work done first (fast: no training)."""
from pathlib import Path

import pytest
import yaml

from codec.config import CodecConfig
from codec.train import CodecTrainConfig

ROOT = Path(__file__).resolve().parents[1]
# A codec-train config that is valid as it stands (the tests change one key at a time).
CODEC_OK = {"model": {"tiny": "rvq"}, "manifest": "/nonexistent/manifest.jsonl", "batch_size": 2,
            "segment_seconds": 0.64, "steps": 20, "warmup_adv_steps": 10}


def _yaml(tmp_path: Path, d, name: str = "c.yaml") -> Path:
    f = tmp_path / name
    f.write_text(yaml.safe_dump(d))
    return f


@pytest.mark.parametrize(("key", "value", "want"), [
    ("batch_size", "two", "batch_size must be an int, got 'two'"),
    ("steps", "20", "steps must be an int, got '20'"),
    ("steps", True, "steps must be an int, got True"),
    ("lr", "fast", "lr must be a number, got 'fast'"),
    ("betas", [0.8], r"betas must be a list of 2 numbers, got \[0.8\]"),
    ("train_only", [3], "train_only must be a list of strings or a string or null"),
    ("discriminator", {"stft_channels": "x"}, "discriminator.stft_channels must be an int"),
])
def test_codec_train_field_types(tmp_path, key, value, want):
    f = _yaml(tmp_path, {**CODEC_OK, key: value})
    with pytest.raises(ValueError, match=f"{f}: {want}"):
        CodecTrainConfig.from_yaml(f)


def test_type_helper_accepts_what_the_annotations_allow(tmp_path):
    from codec.config import check_types

    cfg = CodecTrainConfig.from_yaml(_yaml(tmp_path, {**CODEC_OK, "lr": 1, "max_minutes": None, "train_only": "decoder"}))
    assert cfg.lr == 1 and cfg.train_only == ["decoder"]
    check_types(CodecTrainConfig, {"model": "configs/codec/sac.yaml", "betas": (0.5, 0.9), "unknown_key": object()})
    with pytest.raises(ValueError, match="dim must be an int, got 'big'"):
        CodecConfig.from_dict({"dim": "big"})


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    from slm.train import TrainConfig

    f = tmp_path / "bad.yaml"
    f.write_text("model: {tiny: rvq\nsteps: [\n")
    for load in (CodecTrainConfig.from_yaml, TrainConfig.from_yaml):
        with pytest.raises(ValueError, match=rf"{f}: not valid YAML \(line 2, column 6\)"):
            load(f)


def test_config_file_must_hold_a_mapping(tmp_path):
    from slm.train import TrainConfig

    f = tmp_path / "list.yaml"
    f.write_text("- just a list\n")
    with pytest.raises(ValueError, match=f"{f}: a codec train config file must hold a mapping.*got a list"):
        CodecTrainConfig.from_yaml(f)
    with pytest.raises(ValueError, match="must hold a mapping"):
        TrainConfig.from_yaml(f)


@pytest.mark.parametrize(("extra", "want"), [
    ({"batch_size": "four"}, "batch_size must be an int, got 'four'"),
    ({"head_lr": "fast"}, "head_lr must be a number, got 'fast'"),
    ({"head": {"dim": 16, "bogus": 2}}, r"unknown head keys \['bogus'\]"),
    ({"head": {"dim": "big"}}, "head.dim must be an int, got 'big'"),
    ({"lora": {"rank": 2}}, r"unknown lora keys \['rank'\]"),
    ({"tasks": {"tts": 0.5, "bogus": 1}}, r"unknown tasks keys \['bogus'\]"),
    ({"tasks": {"tts": "lots"}}, "tasks.tts must be a number, got 'lots'"),
])
def test_lm_config_checked_when_loaded(tmp_path, extra, want):
    from slm.train import TrainConfig

    f = _yaml(tmp_path, {"steps": 3, "backbone": "smollm2-135m", **extra})
    with pytest.raises(ValueError, match=f"{f}: {want}"):
        TrainConfig.from_yaml(f)
    assert TrainConfig.from_yaml(_yaml(tmp_path, {"steps": 3, "tasks": {"continue": 0.1}}, "ok.yaml")).steps == 3


def test_missing_local_backbone_dir(tmp_path):
    from adapters.backbones import check_backbone_spec, load_backbone

    for spec in (str(tmp_path / "nobackbone"), "./no/such/dir", "~/no_such_backbone_dir"):
        with pytest.raises(FileNotFoundError, match="no such directory"):
            load_backbone(spec)
    for spec in ("Qwen/Qwen2.5-0.5B", "smollm2-135m", str(tmp_path)):
        check_backbone_spec(spec)  # a hub id, an embedded name, an existing dir: left to the loader


def test_lm_steps_checked_on_the_final_config(tmp_path):
    from slm.train import TrainConfig, train

    f = _yaml(tmp_path, {"steps": -5})
    with pytest.raises(ValueError, match="steps must be >= 1, got -5"):
        TrainConfig.from_yaml(f)
    with pytest.raises(ValueError, match="steps must be >= 1, got 0"):
        TrainConfig.from_yaml(_yaml(tmp_path, {"steps": 3}, "ok.yaml"), steps=0)  # the CLI's --steps
    cfg = TrainConfig(steps=3, out_dir=str(tmp_path / "run"))
    cfg.steps = -5  # set after construction: train() checks before any work
    with pytest.raises(ValueError, match="steps must be >= 1, got -5"):
        train(cfg)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("key", "value", "want"), [
    ("steps", -5, "steps must be >= 1"), ("max_minutes", -1.0, "max_minutes must be > 0"),
    ("max_minutes", 0, "max_minutes must be > 0"),
])
def test_codec_train_checks_cli_overrides(tmp_path, key, value, want):
    from codec.train import train

    cfg = CodecTrainConfig.from_dict({**CODEC_OK, "out_dir": str(tmp_path / "run")})
    setattr(cfg, key, value)  # what `slm codec train --steps / --max-minutes` does after loading the file
    with pytest.raises(ValueError, match=want):
        train(cfg, progress=False)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match=want):
        CodecTrainConfig.from_dict({**CODEC_OK, key: value})


def test_codec_train_rejects_unknown_loss_weights():
    with pytest.raises(ValueError, match=r"unknown loss_weights names \['bogus_w'\].*'mel/l1'.*'stft/sc'"):
        CodecTrainConfig.from_dict({**CODEC_OK, "loss_weights": {"bogus_w": 1.0}})
    cfg = CodecTrainConfig.from_dict({**CODEC_OK, "loss_weights": {"stft/sc": 1.0, "semantic/anchor": 10}})
    assert cfg.loss_weights["semantic/anchor"] == 10


def test_mixed_precision_error_lists_every_accepted_value():
    from slm.train import TrainConfig

    with pytest.raises(ValueError, match="'auto', 'no', 'bf16', 'fp16'.*got 'fp64'"):
        TrainConfig(mixed_precision="fp64")
    assert TrainConfig(mixed_precision="auto").mixed_precision == "auto"
    with pytest.raises(ValueError, match="'no', 'bf16' or 'fp16', got 'fp64'"):
        CodecTrainConfig.from_dict({**CODEC_OK, "mixed_precision": "fp64"})


def test_recipe_overrides_must_name_existing_keys(tmp_path):
    from slm.recipe import load_settings

    tiny = ROOT / "configs" / "recipe" / "tiny.yaml"
    for o, want in (("lm.max_minuts=5", "unknown key 'max_minuts' under lm; valid keys there: .*max_minutes"),
                    ("lm=3", "lm is a mapping of settings"),
                    ("work_dir.x=1", "work_dir is 'runs/recipe/tiny', not a mapping: it has no key 'x'"),
                    ("eval.tasks=codec", "eval.tasks is a list"),
                    ("lm.train.stepz=3", "unknown key 'stepz' under lm.train"),
                    ("lm_finetune.5.max_minutes=1", "lm_finetune is a list of 2"),
                    ("codec.checkpoint.x=1", "codec.checkpoint is None, not a mapping")):
        with pytest.raises(ValueError, match=f"--set {o.split('=')[0]}.*{want}"):
            load_settings(tiny, [o])
    s = load_settings(tiny, ["lm.max_minutes=5", "lm_finetune.1.train.steps=4", f"lm_corpus.dir={tmp_path}",
                             "lm.train.head.dim=8", "voice=null", "codec.decoder_finetune=null", "threads=2"])
    assert s["lm"]["max_minutes"] == 5 and s["lm_finetune"][1]["train"]["steps"] == 4 and s["voice"] is None
    assert s["lm_corpus"]["dir"] == str(tmp_path) and s["lm"]["train"]["head"]["dim"] == 8
    d = load_settings(ROOT / "configs" / "recipe" / "default.yaml", ["voice.limit=3"])  # voice: null there
    assert d["voice"] == {"limit": 3}
