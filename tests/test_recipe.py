"""Recipe runner: settings + overrides, stage selection, stamps, skip-when-complete, failures (fast, no models)."""
import json
import sys
from pathlib import Path

import pytest

from slm import recipe
from slm.recipe import STAGES, Recipe, Stage, load_settings, run_recipe, run_stage, select_stages

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_settings_load_and_cover_every_stage():
    for name in ("default", "tiny"):
        s = load_settings(ROOT / "configs" / "recipe" / f"{name}.yaml")
        r = Recipe(s, ROOT)
        assert r.export_dir.name in ("default", "bundle") and r.threads >= 1
        cmds = recipe._synth(r) + recipe._tokenize(r)
        assert cmds[0][3:6] == ["--threads", str(r.threads), "data"] and "tokenize" in cmds[1]
    d = load_settings(ROOT / "configs" / "recipe" / "default.yaml")
    assert d["export"]["dir"] == "checkpoints/default" and d["export"]["max_mb"] <= 80
    # the default LM codec: teacher-free encoding at 12.5 Hz
    import yaml

    codec = yaml.safe_load((ROOT / d["codec"]["model"]).read_text())
    assert codec["variant"] == "sacodec" and 16000 / codec["hop_length"] / codec["semantic_stride"] == 12.5
    assert codec["semantic_codebook_size"] == d["teacher"]["k"]


def test_overrides_and_bad_input(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text("work_dir: w\ncorpus: {hours: 1}\ncodec: {}\nlm: {train: {steps: 3}}\nexport: {}\n")
    s = load_settings(p, ["lm.train.steps=7", "lm.backbone=/x/y", "eval.tasks=[codec]"])
    assert s["lm"]["train"]["steps"] == 7 and s["lm"]["backbone"] == "/x/y" and s["eval"]["tasks"] == ["codec"]
    with pytest.raises(ValueError, match="KEY.SUB=VALUE"):
        load_settings(p, ["no-equals-sign"])
    with pytest.raises(FileNotFoundError, match="configs/recipe/default.yaml"):
        load_settings(tmp_path / "missing.yaml")
    p.write_text("work_dir: w\n")
    with pytest.raises(ValueError, match="missing section"):
        load_settings(p)


def test_stage_selection():
    assert select_stages() == list(STAGES)
    assert select_stages(from_stage="lm") == ["lm", "eval", "export"]
    assert select_stages(only=["export", "codec"]) == ["codec", "export"]
    with pytest.raises(ValueError, match="unknown stage 'lmm'"):
        select_stages(from_stage="lmm")


def _fake_stage(monkeypatch, out: Path, code: str = "") -> None:
    """Replace the 'synth' stage by one child process writing ``out`` (the runner is what is tested)."""
    write = code or f"open({str(out)!r}, 'w').write('x')"
    monkeypatch.setitem(recipe.STAGE_TABLE, "synth", Stage(
        "synth", "fake", lambda r: [[sys.executable, "-c", write]],
        lambda r: [] if out.exists() else [str(out)]))


def test_stage_runs_stamps_then_skips_and_reruns_when_output_is_gone(tmp_path, monkeypatch):
    out = tmp_path / "out.txt"
    _fake_stage(monkeypatch, out)
    s = {"work_dir": str(tmp_path / "w"), "corpus": {}, "codec": {}, "lm": {}, "export": {}}
    first = run_recipe(s, tmp_path, only=["synth"], log=lambda *_: None)
    stamp = json.loads((tmp_path / "w" / "stamps" / "synth.json").read_text())
    assert not first[0].skipped and out.exists() and stamp["wall_s"] >= 0 and "commands" in stamp
    assert run_recipe(s, tmp_path, only=["synth"], log=lambda *_: None)[0].skipped
    out.unlink()  # the stamp alone is not enough: outputs must still be complete
    assert not run_stage(Recipe(s, tmp_path), "synth", log=lambda *_: None).skipped and out.exists()
    assert not run_stage(Recipe(s, tmp_path), "synth", force=True, log=lambda *_: None).skipped


def test_failing_or_incomplete_stage_raises_and_leaves_no_stamp(tmp_path, monkeypatch):
    s = {"work_dir": str(tmp_path / "w"), "corpus": {}, "codec": {}, "lm": {}, "export": {}}
    _fake_stage(monkeypatch, tmp_path / "never", code="raise SystemExit(3)")
    with pytest.raises(RuntimeError, match="exit code 3"):
        run_stage(Recipe(s, tmp_path), "synth", log=lambda *_: None)
    _fake_stage(monkeypatch, tmp_path / "never", code="pass")
    with pytest.raises(RuntimeError, match="outputs are incomplete"):
        run_stage(Recipe(s, tmp_path), "synth", log=lambda *_: None)
    assert not (tmp_path / "w" / "stamps" / "synth.json").exists()


def test_cli_lists_stages(tmp_path, capsys):
    from slm.cli import main

    assert main(["recipe", "tiny", "--set", f"work_dir={tmp_path}", "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [x.split()[0] for x in lines] == list(STAGES) and all(" todo " in x for x in lines)
