"""Recipe runner: settings + overrides, stage selection, stamps, skip-when-complete, failures (fast, no models)."""
import json
import shutil
import sys
from pathlib import Path

import pytest

from slm import recipe
from slm.recipe import STAGE_TABLE, STAGES, Recipe, Stage, load_settings, run_recipe, run_stage, select_stages

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_settings_load_and_cover_every_stage(tmp_path):
    import yaml

    for name in ("default", "default_12hz", "tiny"):
        s = load_settings(ROOT / "configs" / "recipe" / f"{name}.yaml")
        r = Recipe(s, ROOT)
        assert r.export_dir.name in ("default", "bundle") and r.threads >= 1
        cmds = recipe._synth(r) + recipe._tokenize(r)
        assert cmds[0][3:6] == ["--threads", str(r.threads), "data"] and "tokenize" in cmds[-1]
        recipe._lm(Recipe(load_settings(ROOT / "configs" / "recipe" / f"{name}.yaml", [f"work_dir={tmp_path / name}"]), ROOT))
    d, base = (load_settings(ROOT / "configs" / "recipe" / f"{n}.yaml") for n in ("default", "default_12hz"))
    assert d["export"]["dir"] == "checkpoints/default" and d["export"]["max_mb"] <= 80
    # both LM codecs: teacher-free sacodec, k-means of the teacher at the semantic rate (25 Hz; its base 12.5 Hz)
    for settings, rate in ((d, 25.0), (base, 12.5)):
        codec = yaml.safe_load((ROOT / settings["codec"]["model"]).read_text())
        assert codec["variant"] == "sacodec" and 16000 / codec["hop_length"] / codec["semantic_stride"] == rate
        assert codec["semantic_codebook_size"] == settings["teacher"]["k"] and settings["teacher"]["rate"] == rate
    # the default starts from the 12.5 Hz build's bundle (not from its own output), remapped onto its codec
    r, rb = Recipe(d, ROOT), Recipe(base, ROOT)
    assert r.lm_init == rb.export_dir and r.lm_init != r.export_dir
    assert recipe.lm_train_config(r)["remap_semantic"] is True


def test_lm_corpus_is_synthesised_and_tokenised_for_the_lm_only(tmp_path):
    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml", [f"work_dir={tmp_path}"])
    r = Recipe(s, ROOT)
    assert r.lm_corpus is None and r.lm_manifest == r.manifest and len(recipe._synth(r)) == 1
    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml",
                      [f"work_dir={tmp_path}", f"lm_corpus.dir={tmp_path / 'big'}", "lm_corpus.hours=0.5"])
    r = Recipe(s, ROOT)
    synth = recipe._synth(r)
    assert len(synth) == 2 and synth[1][synth[1].index("--out") + 1] == str(tmp_path / "big")
    assert synth[1][synth[1].index("--hours") + 1] == "0.5"
    tok = recipe._tokenize(r)[0]
    assert tok[tok.index("--manifest") + 1] == str(tmp_path / "big" / "manifest.jsonl")
    assert any("big" in m for m in recipe._synth_ok(r))  # not built yet: the stage is not done
    ev = " ".join(" ".join(c) for c in recipe._eval(r))
    assert "big" not in ev and str(r.manifest) in ev  # evaluation stays on the main corpus


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
    assert select_stages(from_stage="lm") == ["lm", "voice", "reader", "eval", "export"]
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


def test_model_card_lists_training_segments_and_their_data(tmp_path):
    from slm.recipe_card import _segments, plot_training

    for name, n in (("small", 2), ("big", 5)):
        d = tmp_path / name
        d.mkdir()
        rows = [{"id": f"{name}{i}", "split": "train", "duration": 720.0} for i in range(n)] + [{"id": "t", "split": "test"}]
        (d / "index.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    one = {"segments": [{"steps_planned": 600, "steps_trained": 375, "seconds": 3489.1, "tokens": str(tmp_path / "small")}]}
    assert _segments(one) == ""
    two = {"segments": one["segments"] + [{"steps_planned": 1250, "steps_trained": 1200, "seconds": 7000.0,
                                           "tokens": str(tmp_path / "big")}]}
    text = _segments(two)
    assert "2 segments" in text and "to step 375 of a 600-step" in text and "to step 1200 of a 1250-step" in text
    assert f"{tmp_path / 'small'} (2 train utterances, 0.4 h)" in text and "(5 train utterances, 1.0 h)" in text
    # training curves from the stages' logs (a repeated step keeps its last value; a cut line is skipped)
    work = tmp_path / "work"
    (work / "lm").mkdir(parents=True)
    assert plot_training(work, tmp_path / "none.png") is None
    (work / "lm" / "train_log.jsonl").write_text(
        "".join(json.dumps({"step": i, "lm/loss": 5.0 - i / 10, "head/loss": 6.0, "lr": 1e-4}) + "\n" for i in range(1, 9))
        + '{"step": 9, "lm/lo')
    png = plot_training(work, tmp_path / "curves.png")
    assert png is not None and png.stat().st_size > 5000 and png.read_bytes()[:4] == b"\x89PNG"


def test_model_card_flags_an_lm_that_ignores_its_input():
    from slm.recipe_card import _conditioning_limit

    assert _conditioning_limit({}) == []
    assert _conditioning_limit({"tts": {"gain": 2.1}, "asr": {"gain": 1.5}}) == []
    lines = _conditioning_limit({"tts": {"gain": 0.03}, "asr": {"gain": 0.9}})
    assert "TTS 0.03" in lines[0] and "ASR" not in lines[0]


def test_model_card_says_when_the_acoustic_side_limits_tts():
    from slm.recipe_card import _head_limit

    assert _head_limit({}, {"wer": 1.0}) == []
    good_head = {"head": {"wer": 0.3}, "codec": {"wer": 0.25}}
    assert _head_limit(good_head, {"wer": 1.0}) == []  # true tokens speak well: the LM is what limits TTS
    lines = _head_limit({"head": {"wer": 1.03}, "codec": {"wer": 0.48}}, {"wer": 1.05})
    assert len(lines) == 1 and "1.03" in lines[0] and "1.05" in lines[0] and "0.48" in lines[0]
    # TTS as good as the codec's own tokens: the codec is the limit, whatever the head row says
    lines = _head_limit({"head": {"wer": 0.53}, "codec": {"wer": 0.47}}, {"wer": 0.44})
    assert len(lines) == 1 and "codec's reconstruction" in lines[0] and "0.44" in lines[0]
    assert "about as intelligible" in lines[0]
    lines = _head_limit({"head": {"wer": 0.46}, "codec": {"wer": 0.47}}, {"wer": 0.35})  # better than the codec's own
    assert len(lines) == 1 and "more intelligible" in lines[0] and "codec's reconstruction" in lines[0]


def test_model_card_lm_hours_count_every_run():
    from slm.recipe_card import _hours

    m = {"stage_costs": {"lm": {"wall_s": 3600.0}, "codec": {"wall_s": 5400.0}},
         "lm": {"training": {"seconds": 7200.0}, "finetune": [{"training": {"seconds": 1800.0}}, {"training": {}}]}}
    assert _hours(m, "lm") == "2.5 h" and _hours(m, "codec") == "1.5 h"  # the stamp times only the last rerun
    m["lm"] = {"training": {}, "finetune": []}
    assert _hours(m, "lm") == "1.0 h" and _hours({"stage_costs": {}, "lm": {}}, "lm") == "-"


def test_model_card_counts_accelerator_runs_apart_from_cpu_hours():
    from slm.recipe_card import _accelerator_runs, _finetune_lines, _hours

    gpu = {"training": {"seconds": 1154.0, "steps_trained": 30, "device": "NVIDIA H100"},
           "config": {"steps": 30, "batch_size": 16, "max_len": 384}}
    m = {"stage_costs": {}, "lm": {"training": {"seconds": 3600.0},
                                   "finetune": [{"training": {"seconds": 1800.0}}, gpu]}}
    assert _hours(m, "lm") == "1.5 h"  # the GPU seconds are not CPU hours
    assert _accelerator_runs(m) == ", then fine-tuned 1154 s on one NVIDIA H100 (LM fine-tune 2)"
    line = _finetune_lines(m["lm"]["finetune"])[-1]
    assert "(1154 s on one NVIDIA H100)" in line and "16 x 384 tokens per step" in line
    m["lm"]["finetune"].pop()
    assert _accelerator_runs(m) == ""


def test_recard_rewrites_the_card_from_metrics_json_after_the_token_dir_is_gone(tmp_path):
    from slm.recipe_card import recard, write_model_card

    dirs = [tmp_path / "tokens_a", tmp_path / "tokens_b"]
    for n, d in enumerate(dirs, start=2):
        d.mkdir()
        (d / "index.jsonl").write_text("".join(json.dumps({"id": f"u{i}", "split": "train", "duration": 360.0}) + "\n"
                                               for i in range(n)))
    work, bundle = tmp_path / "work", tmp_path / "bundle"
    (work / "lm").mkdir(parents=True)
    bundle.mkdir()
    (work / "lm" / "train_config.json").write_text(json.dumps({"tokens": str(dirs[1]), "steps": 5}))
    (work / "lm" / "recipe_train.json").write_text(json.dumps({"steps_trained": 5, "seconds": 9.0, "segments": [
        {"steps_planned": 3, "steps_trained": 3, "seconds": 4.0, "tokens": str(dirs[0])},
        {"steps_planned": 5, "steps_trained": 5, "seconds": 5.0, "tokens": str(dirs[1])}]}))
    write_model_card(bundle, work, size_mb=0.0)  # an empty bundle dir, as recard measures it
    first = (bundle / "README.md").read_text()
    assert "tokens_a (2 train utterances, 0.2 h)" in first and "tokens_b (3 train utterances, 0.3 h)" in first
    shutil.rmtree(dirs[0])
    recard(bundle)  # from the bundle alone: the gone dir's summary comes from metrics.json
    assert (bundle / "README.md").read_text() == first
    (bundle / "metrics.json").unlink()
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        recard(bundle)


def test_lm_finetunes_chain_each_from_the_model_before(tmp_path):
    import yaml

    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml", [f"work_dir={tmp_path}"])
    s["lm_finetune"] = [{"max_minutes": 3, "train": {"steps": 5, "lr": 0.001}},
                        {"enabled": False, "train": {"steps": 99}},
                        {"train": {"tasks": {"asr": 1.0, "asr_aligned": 1.0}}}]
    r = Recipe(s, ROOT)
    assert len(r.lm_finetunes) == 2 and r.lm_bundle == tmp_path / "lm_ft2" / "final"
    cmds = recipe._lm(r)
    assert len(cmds) == 3 and cmds[1][cmds[1].index("--max-minutes") + 1] == "3"
    first, second = (yaml.safe_load((tmp_path / n).read_text()) for n in ("lm_ft_train.yaml", "lm_ft2_train.yaml"))
    assert first["init_from"] == str(tmp_path / "lm" / "final") and first["out_dir"] == str(tmp_path / "lm_ft")
    assert second["init_from"] == str(tmp_path / "lm_ft" / "final") and second["out_dir"] == str(tmp_path / "lm_ft2")
    # settings accumulate along the chain: the second run keeps the first one's steps and lr, not the disabled 99
    assert second["steps"] == 5 and second["lr"] == 0.001 and second["tasks"] == {"asr": 1.0, "asr_aligned": 1.0}
    assert "codec" not in second and "lora" not in second  # the model's own codec and adapter shape
    assert set(recipe._lm_ok(r)) == {str(tmp_path / d / "final") for d in ("lm", "lm_ft", "lm_ft2")}
    # one mapping is one run (the old form), none is the first LM alone
    r1 = Recipe({**s, "lm_finetune": {"train": {"steps": 2}}}, ROOT)
    assert r1.lm_bundle == tmp_path / "lm_ft" / "final" and len(recipe._lm(r1)) == 2
    assert Recipe({**s, "lm_finetune": None, "voice": None}, ROOT).bundle == tmp_path / "lm" / "final"
    with pytest.raises(ValueError, match="mapping"):
        _ = Recipe({**s, "lm_finetune": ["steps=3"]}, ROOT).lm_finetunes


def test_codec_decoder_finetune_runs_from_the_codec_stage_model(tmp_path):
    import yaml

    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml", [f"work_dir={tmp_path}"])
    r = Recipe(s, ROOT)
    assert r.codec == tmp_path / "codec_dec" / "final" and r.codec_base == tmp_path / "codec" / "final"
    cmds = recipe._codec(r)
    assert len(cmds) == 2 and cmds[1][cmds[1].index("--max-minutes") + 1] == "2"
    ft = yaml.safe_load((tmp_path / "codec_dec_train.yaml").read_text())
    assert ft["init_from"] == str(tmp_path / "codec" / "final") and ft["out_dir"] == str(tmp_path / "codec_dec")
    assert ft["train_only"] == ["decoder", "bottleneck.ac_out"] and ft["steps"] == 2 and ft["lr_schedule"] == "cosine"
    assert ft["batch_size"] == 2 and "teacher_features" not in ft and ft["teacher_units"]  # the codec run's settings
    assert recipe._codec_ok(r) == [str(tmp_path / "codec_dec" / "final")]
    # a finished codec is not trained again (a time-bounded one would go on training): only the fine-tune runs
    (tmp_path / "codec" / "final").mkdir(parents=True)
    (tmp_path / "codec" / "final" / "config.json").write_text("{}")
    assert [c[c.index("--config") + 1] for c in recipe._codec(r)] == [str(tmp_path / "codec_dec_train.yaml")]
    (tmp_path / "codec_dec" / "final").mkdir(parents=True)
    (tmp_path / "codec_dec" / "final" / "config.json").write_text("{}")
    assert recipe._codec(r) == []  # a finished fine-tune is not resumed past its budget either
    plain = Recipe({**s, "codec": {k: v for k, v in s["codec"].items() if k != "decoder_finetune"}}, ROOT)
    assert plain.codec == plain.codec_base and recipe._codec(plain) == []
    given = Recipe({**s, "work_dir": str(tmp_path / "w2"), "codec": {**s["codec"], "checkpoint": str(tmp_path / "mine")}},
                   ROOT)
    recipe._codec(given)
    assert yaml.safe_load((tmp_path / "w2" / "codec_dec_train.yaml").read_text())["init_from"] == str(tmp_path / "mine")


def test_model_card_reports_a_decoder_fine_tune_only_when_the_build_uses_it(tmp_path):
    from slm.recipe_card import _decoder_line, collect

    (tmp_path / "codec_dec" / "final").mkdir(parents=True)
    (tmp_path / "codec_dec" / "final" / "training.json").write_text(json.dumps(
        {"step": 7, "seconds": 12.0, "train_only": ["decoder"], "losses": {"mel/l1": 0.2}}))
    (tmp_path / "codec_dec" / "train_config.json").write_text(json.dumps({"lr": 1e-3, "lr_schedule": "cosine",
                                                                         "lr_min_ratio": 0.1}))
    (tmp_path / "settings.json").write_text(json.dumps({"codec": {"decoder_finetune": None}}))
    assert collect(tmp_path, tmp_path / "bundle")["codec"]["decoder_finetune"] == {}  # a trial left behind
    (tmp_path / "settings.json").write_text(json.dumps({"codec": {"decoder_finetune": {"train": {"steps": 7}}}}))
    line = _decoder_line(collect(tmp_path, tmp_path / "bundle")["codec"]["decoder_finetune"])
    assert len(line) == 1 and "only decoder trained" in line[0] and "7 steps (12 s), cosine from 0.001 to 0.0001" in line[0]


def test_voice_stage_fine_tunes_the_lm_codecs_decoder_on_head_tokens(tmp_path):
    import yaml

    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml", [f"work_dir={tmp_path}"])
    r = Recipe(s, ROOT)
    assert r.bundle == tmp_path / "voice" / "final" and r.lm_bundle == tmp_path / "lm_ft2" / "final"
    assert r.final_codec == tmp_path / "voice_dec" / "final"
    with pytest.raises(FileNotFoundError, match="codec stage first"):
        recipe._voice(r)
    (tmp_path / "codec_dec" / "final").mkdir(parents=True)
    (tmp_path / "codec_dec" / "final" / "config.json").write_text(json.dumps(
        {"variant": "sacodec", "codec": {"variant": "sacodec", "dim": 8}}))
    cmds = recipe._voice(r)
    assert [c[c.index("-m") + 1] for c in cmds] == ["slm", "slm", "slm.recipe_steps"]
    ht, train, assemble = cmds
    assert "voice_train.yaml" in " ".join(train)
    assert ht[ht.index("head-tokens") + 1] == str(r.lm_bundle) and ht[ht.index("--limit") + 1] == "6"
    assert ht[ht.index("--out") + 1] == str(tmp_path / "head_tokens")
    cfg = yaml.safe_load((tmp_path / "voice_train.yaml").read_text())
    assert cfg["model"] == {"variant": "sacodec", "dim": 8}  # the LM codec's own config
    assert cfg["init_from"] == str(tmp_path / "codec_dec" / "final") and cfg["head_tokens"] == str(tmp_path / "head_tokens")
    assert cfg["train_only"] == ["decoder", "bottleneck.ac_out", "bottleneck.ac_up"] and cfg["head_token_prob"] == 1.0
    assert cfg["steps"] == 2 and cfg["batch_size"] == 2  # the voice settings over the codec's train settings
    assert assemble[-3:] == [str(r.lm_bundle), str(tmp_path / "voice_dec" / "final"), str(r.bundle)]
    assert recipe._voice_ok(r) == [str(r.bundle)]
    (tmp_path / "voice_dec" / "final").mkdir(parents=True)
    (tmp_path / "voice_dec" / "final" / "config.json").write_text("{}")
    assert len(recipe._voice(r)) == 1  # a finished fine-tune is reused: only the model is assembled again
    # eval reads the bundle and its codec
    assert str(r.final_codec) in recipe._eval(r)[0] and str(r.bundle) in recipe._eval(r)[-1]
    off = Recipe({**s, "voice": None}, ROOT)
    assert off.bundle == off.lm_bundle and off.final_codec == off.codec and recipe._voice(off) == []
    assert recipe._voice_ok(off) == []
    assert Recipe({**s, "voice": {**s["voice"], "enabled": False}}, ROOT).voice is None


def test_model_card_reports_the_voice_stage_only_when_the_build_runs_it(tmp_path):
    from slm.recipe_card import _voice_line, collect

    (tmp_path / "voice_dec" / "final").mkdir(parents=True)
    (tmp_path / "voice_dec" / "final" / "training.json").write_text(json.dumps(
        {"step": 9, "seconds": 30.0, "train_only": ["decoder"], "head_token_prob": 1.0, "losses": {"mel/l1": 0.3}}))
    (tmp_path / "head_tokens").mkdir()
    (tmp_path / "head_tokens" / "index.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    (tmp_path / "settings.json").write_text(json.dumps({"voice": None}))
    assert collect(tmp_path, tmp_path / "bundle")["voice"] == {}
    (tmp_path / "settings.json").write_text(json.dumps({"voice": {"limit": 2}}))
    line = _voice_line(collect(tmp_path, tmp_path / "bundle")["voice"])
    assert len(line) == 1 and "of 2 utterances" in line[0] and "9 steps (30 s)" in line[0] and "only decoder" in line[0]


def test_codec_can_train_on_the_lm_corpus_while_eval_stays_on_the_corpus(tmp_path):
    import yaml

    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml",
                      [f"work_dir={tmp_path}", f"lm_corpus.dir={tmp_path / 'big'}", "codec.corpus=lm_corpus"])
    r = Recipe(s, ROOT)
    big = str(tmp_path / "big" / "manifest.jsonl")
    cache = recipe._teacher(r)[0]
    assert cache[cache.index("--manifest") + 1] == big
    cmd = recipe._codec(r)[0]
    assert yaml.safe_load(Path(cmd[cmd.index("--config") + 1]).read_text())["manifest"] == big
    ev = " ".join(" ".join(c) for c in recipe._eval(r))
    assert big not in ev and str(r.manifest) in ev
    with pytest.raises(ValueError, match="corpus' or 'lm_corpus'"):
        _ = Recipe({**s, "codec": {**s["codec"], "corpus": "lm"}}, ROOT).codec_manifest
    with pytest.raises(ValueError, match="no lm_corpus.dir"):
        _ = Recipe({**s, "lm_corpus": None}, ROOT).codec_manifest


def test_teacher_stage_reuses_a_complete_feature_cache_and_units(tmp_path):
    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml", [f"work_dir={tmp_path}"])
    r = Recipe(s, ROOT)
    r.corpus.mkdir(parents=True)
    r.manifest.write_text('{"id": "a"}\n{"id": "b"}\n')
    assert [c[c.index("codec") + 1] for c in recipe._teacher(r)] == ["teacher-cache", "kmeans"]

    def fill(d: Path, n: int) -> None:
        (d / "items").mkdir(parents=True, exist_ok=True)
        (d / "meta.json").write_text("{}")
        for i in range(n):
            (d / "items" / f"{i}.safetensors").write_bytes(b"x")

    fill(r.features, 1)  # one of two utterances: the cache runs again (it resumes), and so does k-means
    assert len(recipe._teacher(r)) == 2
    fill(r.features, 2)
    assert [c[c.index("codec") + 1] for c in recipe._teacher(r)] == ["kmeans"]
    fill(r.units, 2)
    r.centroids.write_bytes(b"x")
    assert recipe._teacher(r) == [] and recipe._teacher_ok(r) == []  # a codec trained on these units keeps them


def test_lm_can_start_from_a_model_of_another_codec(tmp_path):
    import yaml

    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml", [f"work_dir={tmp_path}"])
    base = tmp_path / "base_bundle"
    s["lm"] = {**s["lm"], "init_from": str(base), "train": {**s["lm"]["train"], "remap_semantic": True}}
    s["lm_finetune"] = [{"train": {"steps": 3}}]
    r = Recipe(s, ROOT)
    recipe._lm(r)
    first, ft = (yaml.safe_load((tmp_path / n).read_text()) for n in ("lm_train.yaml", "lm_ft_train.yaml"))
    assert first["init_from"] == str(base) and first["remap_semantic"] is True and first["codec"] == str(r.codec)
    assert "lora" not in first  # the adapter's shape is the base model's
    assert ft["init_from"] == str(tmp_path / "lm" / "final") and "remap_semantic" not in ft  # same codec from here on
    with pytest.raises(ValueError, match="own export dir"):
        _ = Recipe({**s, "lm": {**s["lm"], "init_from": str(r.export_dir)}}, ROOT).lm_init
    with pytest.raises(ValueError, match="set lm.init_from"):
        recipe.lm_train_config(Recipe({**s, "lm": {**s["lm"], "init_from": None}}, ROOT))


def test_model_card_names_the_codec_rates_the_lm_start_and_a_gpu_fine_tune(tmp_path):
    from slm.recipe_card import _codec_why, _cost_table, _ft_training, _lm_start

    m = {"settings": {"codec": {"model": "configs/codec/sacodec_25hz.yaml"}, "lm": {"init_from": "runs/base"}},
         "codec": {"config": {"semantic_stride": 2, "acoustic_stride": 1, "semantic_codebook_size": 512,
                              "acoustic_dropout": 0.4}},
         "lm": {"config": {"remap_semantic": True}}}
    m["codec"]["variant"] = "sacodec"
    why = " ".join(_codec_why(m))
    assert "25.0 Hz" in why and "acoustic dropout 0.4" in why and "its 512 semantic codes" in why and "50 Hz" in why
    m["codec"]["config"]["semantic_stride"] = 4
    assert "12.5 Hz, the rate at which" in " ".join(_codec_why(m))
    assert "`runs/base`" in _lm_start(m) and "nearest" in _lm_start(m)
    m["lm"]["config"] = {}
    assert "its acoustic head" in _lm_start(m)
    m["settings"]["lm"] = {}
    assert _lm_start(m) == ""
    # a fine-tune trained on a lent GPU: the accelerator named in its settings reaches the card's record
    d = tmp_path / "lm_ft"
    d.mkdir()
    (d / "recipe_train.json").write_text(json.dumps({"seconds": 1030.0}))
    settings = {"lm_finetune": [{"device": "NVIDIA H100", "train": {}}]}
    assert _ft_training(d, settings, 0)["device"] == "NVIDIA H100"
    assert "device" not in _ft_training(d, {"lm_finetune": [{"train": {}}]}, 0)
    rows = _cost_table({"settings": {"voice": None}, "stage_costs": {"codec": {"wall_s": 0.0, "commands": []},
                                                                     "voice": {"wall_s": 0.0, "commands": []},
                                        "eval": {"wall_s": 300.0, "cpu_s": 400.0, "peak_rss_mb": 3000, "commands": ["x"]}}})
    assert "| codec | reused | - | - |" in rows and "| eval | 300 | 400 | 3000 |" in rows
    assert "| voice | off | - | - |" in rows


def test_shipped_decoding_defaults_are_checked_measured_and_exported(tmp_path):
    from slm.recipe_steps import export_bundle, parse_sampling

    assert parse_sampling("temperature=0.5, top_k=20") == {"temperature": 0.5, "top_k": 20}
    assert parse_sampling({"head_temperature": 1}) == {"head_temperature": 1.0}
    assert parse_sampling(None) == {} and parse_sampling("") == {}
    with pytest.raises(ValueError, match="unknown sampling settings"):
        parse_sampling("temprature=0.5")
    with pytest.raises(ValueError, match="expected a number"):
        parse_sampling("temperature=warm")
    with pytest.raises(ValueError, match="bad sampling settings"):
        parse_sampling("top_p=2")
    with pytest.raises(ValueError, match="name=value"):
        parse_sampling("temperature")

    r = Recipe({"work_dir": "w", "corpus": {}, "codec": {}, "lm": {},
                "eval": {"tasks": ["tts"]}, "export": {"sampling": {"temperature": 0.5, "head_temperature": 0.5}}},
               tmp_path)
    want = ["--sampling", "head_temperature=0.5,temperature=0.5"]
    (ev,) = STAGE_TABLE["eval"].commands(r)
    (ex,) = STAGE_TABLE["export"].commands(r)
    assert ev[-2:] == want and ex[-2:] == want
    r.s["export"]["sampling"] = {"temperature": "hot"}
    with pytest.raises(ValueError, match="expected a number"):
        run_recipe(r.s, tmp_path, only=["export"])
    assert not (tmp_path / "w").exists()  # refused before any stage ran

    src = tmp_path / "model"
    src.mkdir()
    (src / "slm_config.json").write_text(json.dumps({"sampling": {"max_seconds_per_char": 0.12}}))
    dst = export_bundle(src, tmp_path / "bundle", sampling="temperature=0.5")
    assert json.loads((dst / "slm_config.json").read_text())["sampling"] == {"max_seconds_per_char": 0.12,
                                                                            "temperature": 0.5}
    assert json.loads((src / "slm_config.json").read_text())["sampling"] == {"max_seconds_per_char": 0.12}
    assert "int8" not in json.loads((dst / "slm_config.json").read_text())
    # the CPU decoding default (int8 backbone weights) travels the same way
    r.s["export"] = {"int8": True}
    (ex,) = STAGE_TABLE["export"].commands(r)
    assert ex[-1] == "--int8"
    dst = export_bundle(src, tmp_path / "bundle", int8=True)
    assert json.loads((dst / "slm_config.json").read_text())["int8"] is True
    # int8 activations too: the mode itself, through the stage's flags and into the bundle
    r.s["export"] = {"int8": "w8a8"}
    (ex,) = STAGE_TABLE["export"].commands(r)
    assert ex[-2:] == ["--int8", "w8a8"]
    dst = export_bundle(src, tmp_path / "bundle", int8="w8a8")
    assert json.loads((dst / "slm_config.json").read_text())["int8"] == "w8a8"
    with pytest.raises(ValueError, match="int8 must be"):
        export_bundle(src, tmp_path / "bundle", int8="int4")


def test_reader_stage_is_done_only_with_its_own_reader_installed(tmp_path):
    """A bundle fine-tuned from a model with a reader keeps that reader: the stage still trains and installs
    its own, and counts as done only when the bundle holds that one."""
    s = load_settings(ROOT / "configs" / "recipe" / "tiny.yaml", [f"work_dir={tmp_path}"])
    r = Recipe({**s, "voice": None}, ROOT)
    there, mine = r.bundle / "ctc_reader", tmp_path / "ctc_reader" / "reader"
    for d, w in ((there, b"carried"), (mine, b"trained")):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(w)
    assert recipe._reader_ok(r) == [str(there)]
    shutil.copy(mine / "model.safetensors", there / "model.safetensors")  # what --install does
    assert recipe._reader_ok(r) == []
    assert recipe._reader_ok(Recipe({**s, "voice": None, "reader": None}, ROOT)) == []
