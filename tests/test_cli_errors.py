"""The `slm` command line on bad input: one clear line on stderr, exit code 2, and no model load first."""
from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf


@pytest.fixture
def no_load(monkeypatch):
    """Fail the test if a command loads the speech LM: input checks must come before the slow load."""
    from slm.cli import lm

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(lm, "_pipe", refuse)


@pytest.fixture(scope="module")
def model():
    from tests._tiny_pipeline import tiny_pipeline_dir

    return tiny_pipeline_dir()


def _run(capsys, argv):
    from slm.cli import main

    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("text, says", [("", "non-empty"), ("   ", "non-empty"), ("a" * 5001, "at most 5000"),
                                        ("\U0001F600\U0001F389", "nothing to speak"), ("\u4f60\u597d", "nothing to speak")])
def test_tts_bad_text(capsys, tmp_path, model, no_load, text, says):
    rc, err = _run(capsys, ["tts", text, "--model", model, "--out", str(tmp_path / "o.wav")])
    assert rc == 2 and err.startswith("slm tts: error: ") and says in err and "Traceback" not in err
    assert not (tmp_path / "o.wav").exists()


def test_tts_unknown_voice(capsys, tmp_path, model, no_load):
    rc, err = _run(capsys, ["tts", "hello", "--model", model, "--out", str(tmp_path / "o.wav"),
                            "--voice", str(tmp_path / "nope.wav")])
    assert rc == 2 and "unknown voice" in err and "--list-voices" in err


def test_not_a_model_dir(capsys, tmp_path, no_load):
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros(1600, np.float32), 16000)
    rc, err = _run(capsys, ["asr", str(wav), "--model", str(tmp_path)])
    assert rc == 2 and "not a speech-LM model dir" in err


def _wav(path, seconds, sr=16000, channels=1, value=None):
    n = int(seconds * sr)
    data = np.random.default_rng(0).uniform(-0.3, 0.3, (n, channels)).astype(np.float32)
    if value is not None:
        data[:] = value
    sf.write(path, data, sr)
    return str(path)


@pytest.mark.parametrize("command", ["asr", "continue"])
def test_bad_audio_fails_before_load(capsys, tmp_path, model, no_load, command):
    extra = ["--out", str(tmp_path / "c.wav")] if command == "continue" else []
    cases = {
        "no such file": str(tmp_path / "missing.wav"),
        "unreadable audio": str(tmp_path / "junk.wav"),
        "empty file": _wav(tmp_path / "empty.wav", 0),
        "expected at most 2 s": _wav(tmp_path / "long.wav", 3),
    }
    (tmp_path / "junk.wav").write_bytes(b"this is not audio" * 10)
    for says, path in cases.items():
        rc, err = _run(capsys, [command, path, "--model", model, "--max-input-seconds", "2", *extra])
        assert rc == 2, (says, err)
        assert err.startswith(f"slm {command}: error: ") and says in err and "Traceback" not in err, err
    assert not (tmp_path / "c.wav").exists()


def test_continue_bad_seconds(capsys, tmp_path, model, no_load):
    rc, err = _run(capsys, ["continue", _wav(tmp_path / "a.wav", 1), "--model", model, "--seconds", "0",
                            "--out", str(tmp_path / "c.wav")])
    assert rc == 2 and "--seconds must be > 0" in err


def test_asr_notes_silence_and_downmixes_stereo(capsys, tmp_path, model):
    """Silent and stereo input still run (stereo is down-mixed); a silent file gets a note on stderr."""
    rc, err = _run(capsys, ["--threads", "1", "asr", _wav(tmp_path / "s.wav", 1, value=0.0), "--model", model])
    assert rc == 0 and "is silent" in err
    rc, err = _run(capsys, ["--threads", "1", "asr", _wav(tmp_path / "st.wav", 1, channels=2), "--model", model])
    assert rc == 0 and "error" not in err


def test_debug_keeps_the_traceback(monkeypatch, tmp_path, model, no_load):
    from slm.cli import main

    monkeypatch.setenv("SLM_DEBUG", "1")
    with pytest.raises(ValueError, match="non-empty"):
        main(["tts", " ", "--model", model, "--out", str(tmp_path / "o.wav")])


def test_tts_output_name_checked_before_load(capsys, tmp_path, model, no_load):
    """An --out the writer cannot tell the format of fails before the model loads, not after the generation."""
    for out in ("o", "o.txt", "o.mp3"):
        rc, err = _run(capsys, ["tts", "hello", "--model", model, "--out", str(tmp_path / out)])
        assert rc == 2 and "extension must name its format" in err, err
    rc, err = _run(capsys, ["continue", _wav(tmp_path / "a.wav", 1), "--model", model, "--out", str(tmp_path / "c")])
    assert rc == 2 and "extension must name its format" in err


def test_bad_thread_counts(capsys, monkeypatch, model, tmp_path, no_load):
    from slm.cli import main

    for argv, env, says in ((["--threads", "-2"], None, "--threads must be >= 0"),
                            ([], "x", "SLM_THREADS must be a whole number")):
        if env is not None:
            monkeypatch.setenv("SLM_THREADS", env)
        with pytest.raises(SystemExit) as e:
            main([*argv, "tts", "hello", "--model", model, "--out", str(tmp_path / "o.wav")])
        assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [
    (["--port", "70000"], "--port must be in 0..65535"),
    (["--port", "-1"], "--port must be in 0..65535"),
    (["--ssl-certfile", "/nonexistent/cert.pem"], "no such file"),
    (["--concurrency", "0"], "--concurrency must be > 0"),
    (["--max-text-chars", "-5"], "--max-text-chars must be > 0"),
    (["--model", "/nonexistent/model"], "not a directory"),
])
def test_demo_options_checked_before_start(capsys, monkeypatch, argv, says):
    """Bad demo options are one error line, before any model load or server start (a bad certificate path used to
    leave the server thread hanging after the traceback)."""
    import demos.app

    def refuse(*a, **k):
        raise AssertionError("the demo was built before its options were checked")

    monkeypatch.setattr(demos.app, "build_app", refuse)
    monkeypatch.setattr(demos.app, "launch", refuse)
    rc, err = _run(capsys, ["demo", "--codec-only", *argv])
    assert rc == 2 and says in err and "Traceback" not in err, err


def test_sampling_and_length_bounds(model):
    """A temperature that is not a finite number is refused; a length the backbone's context cannot hold is a
    clear error before any buffer is allocated (it used to try to allocate terabytes)."""
    import torch

    from slm.generate import Sampling, generate_frames
    from slm.pipeline import SpeechPipeline

    for bad in ("nan", "inf"):
        with pytest.raises(ValueError, match="temperature must be a finite number"):
            Sampling(temperature=float(bad))
        with pytest.raises(ValueError, match="head_temperature must be a finite number"):
            Sampling(head_temperature=float(bad))
    pipe = SpeechPipeline.from_pretrained(model)
    ctx = pipe.lm.config.max_position_embeddings
    prompt = torch.tensor([pipe.layout.audio_start])
    with pytest.raises(ValueError, match="exceed the backbone's context"):
        next(generate_frames(pipe.infer_lm, pipe.layout, prompt, None, Sampling(), ctx + 5))
    with pytest.raises(ValueError, match="exceed the backbone's context"):
        pipe.continue_(torch.zeros(1, pipe.sample_rate), pipe.sample_rate, seconds=1e9)


def test_eval_limit_must_be_positive(tmp_path):
    from slm.eval.data import load_items

    with pytest.raises(ValueError, match="limit must be >= 1"):
        load_items(tmp_path / "manifest.jsonl", limit=0)


def test_tts_notes_letters_outside_english(capsys, tmp_path, model):
    rc, err = _run(capsys, ["--threads", "1", "tts", "Hello \u4f60\u597d", "--model", model, "--out", str(tmp_path / "o.wav")])
    assert rc == 0 and "note: 2 letter(s) outside English" in err and (tmp_path / "o.wav").exists()


def _broken_copy(model, tmp_path, name, edit):
    import shutil
    from pathlib import Path

    d = tmp_path / name
    shutil.copytree(model, d)
    edit(Path(d))
    return str(d)


def test_damaged_model_dirs(capsys, tmp_path, model):
    """A model dir with a file missing, truncated or of the wrong kind: one error line naming what is wrong (it
    used to be a hub download attempt, a safetensors or JSON traceback, or a KeyError)."""
    import json

    def settings(**kw):
        def edit(d):
            cfg = json.loads((d / "slm_config.json").read_text())
            cfg["sampling"] = {**cfg.get("sampling", {}), **kw}
            (d / "slm_config.json").write_text(json.dumps(cfg))
        return edit

    def truncate(name):
        def edit(d):
            f = d / name
            f.write_bytes(f.read_bytes()[:100])
        return edit

    cases = {
        "adapter": (lambda d: (d / "adapter" / "adapter_model.safetensors").unlink(), "adapter's weights"),
        "head": (truncate("acoustic_head.safetensors"), "is damaged"),
        "config_json": (lambda d: (d / "slm_config.json").write_text('{"backbone": '), "not valid JSON"),
        "layout": (lambda d: (d / "token_layout.json").write_text('{"foo": 1}'), "not a token layout"),
        "sampling_type": (settings(temperature="hot"), "sampling.temperature must be a number, got 'hot'"),
        "sampling_key": (settings(temprature=0.5), "unknown sampling keys ['temprature']"),
    }
    for name, (edit, says) in cases.items():
        d = _broken_copy(model, tmp_path, name, edit)
        rc, err = _run(capsys, ["--threads", "1", "tts", "hello", "--model", d, "--out", str(tmp_path / "o.wav")])
        assert rc == 2 and says in err and "Traceback" not in err, (name, err)
    assert not (tmp_path / "o.wav").exists()


@pytest.mark.parametrize("argv, says", [(["--max-input-seconds", "-1"], "finite number of seconds > 0"),
                                        (["--max-input-seconds", "nan"], "finite number of seconds > 0"),
                                        (["--lm-weight", "nan"], "must be a finite number")])
def test_asr_numeric_options(capsys, tmp_path, model, no_load, argv, says):
    from slm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["asr", _wav(tmp_path / "a.wav", 1), "--model", model, *argv])
    assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("seed, says", [("-1", "seed must be in 0..2**63-1"), (str(2**64), "seed must be in 0..2**63-1"),
                                        ("x", "expected a whole number")])
def test_seed_range_checked_by_the_parser(capsys, tmp_path, model, no_load, seed, says):
    from slm.cli import main

    with pytest.raises(SystemExit) as e:
        main(["tts", "hello", "--model", model, "--out", str(tmp_path / "o.wav"), "--seed", seed])
    assert e.value.code == 2 and says in capsys.readouterr().err


@pytest.mark.parametrize("argv, says", [(["--top-k", "-3"], "bad sampling settings: top_k=-3"),
                                        (["--top-p", "1.5"], "top_p=1.5"),
                                        (["--best-of", "2", "--top-k", "-1"], "top_k=-1"),
                                        (["--best-of-words", "2"], "--best-of-words 2 chooses among candidates"),
                                        (["--best-of", "99"], "best_of must be in 1..16")])
def test_tts_sampling_checked_before_load(capsys, tmp_path, model, no_load, argv, says):
    rc, err = _run(capsys, ["tts", "hello", "--model", model, "--out", str(tmp_path / "o.wav"), *argv])
    assert rc == 2 and says in err and "Traceback" not in err, err


def test_continue_sampling_checked_before_load(capsys, tmp_path, model, no_load):
    rc, err = _run(capsys, ["continue", _wav(tmp_path / "a.wav", 1), "--model", model, "--top-p", "0",
                            "--out", str(tmp_path / "c.wav")])
    assert rc == 2 and "top_p=0.0" in err


@pytest.mark.parametrize("argv, says", [
    (["--lexicon", "wordfreq:1000"], "--lexicon tune the fused ASR, and the method here is 'lm': add --method fused"),
    (["--method", "ctc", "--lm-weight", "0.5", "--lm-lag", "2"], "--lm-weight --lm-lag tune the fused ASR"),
    (["--method", "fused", "--lexicon", "wordfreq:abc"], "expected 'wordfreq:N' with N a whole number >= 1"),
    (["--method", "fused", "--lexicon", "wordfreq:0"], "expected 'wordfreq:N'"),
    (["--method", "fused", "--lexicon", "no_such_words.txt"], "no such file"),
    (["--method", "fused", "--lm-lag", "-1"], "lm_lag must be >= 0"),
    (["--method", "ctc", "--plain"], "--plain chooses the LM's form, and --method ctc reads with the CTC reader"),
    (["--method", "joint", "--aligned"], "--aligned chooses the LM's form")])
def test_asr_options_of_another_method_refused_before_load(capsys, tmp_path, model, no_load, argv, says):
    """Options that tune one ASR method are refused with another, where they used to be ignored silently."""
    rc, err = _run(capsys, ["asr", _wav(tmp_path / "a.wav", 1), "--model", model, *argv])
    assert rc == 2 and says in err and "Traceback" not in err, err


def test_pipeline_refuses_what_it_would_ignore(model):
    """The API says so too: best_of_words without candidates or in the plain form, a seed out of range."""
    from slm.pipeline import SpeechPipeline

    pipe = SpeechPipeline.from_pretrained(model)
    with pytest.raises(ValueError, match="best_of_words=2 chooses among best_of candidates"):
        pipe.tts("hello there", best_of_words=2)
    with pytest.raises(ValueError, match="seed must be in 0..2"):
        pipe.tts("hello there", seed=-5)
    with pytest.raises(ValueError, match="seed must be a whole number"):
        pipe.tts("hello there", seed=1.5)
    assert pipe.tts("hello there", seed=2**63 - 1, max_seconds=0.5).numel() > 0


def test_lexicon_spec_read_without_loading(tmp_path):
    from slm.fused_asr import Lexicon

    assert Lexicon.check_spec("wordfreq") == 100_000 and Lexicon.check_spec("wordfreq:25") == 25
    (tmp_path / "words.txt").write_text("alpha\t3\nbeta\n")
    assert Lexicon.check_spec("words.txt", tmp_path) == tmp_path / "words.txt"
    assert set(Lexicon.from_spec("words.txt", tmp_path).words) == {"alpha", "beta"}


def test_asr_form_without_method_picks_the_lm(tmp_path):
    """On a model whose default ASR is the fused reader (the bundle's), --aligned / --plain ask for the LM's own
    transcript: the method becomes lm (it was ignored before), while fused-only options still need fused."""
    import argparse
    import json

    from slm.cli.lm import _check_asr_options

    (tmp_path / "slm_config.json").write_text(json.dumps({"asr_method": "fused"}))
    base = {"model": str(tmp_path), "method": None, "lexicon": None, "lm_weight": None, "lm_dtype": None,
            "lm_lag": None}
    for form in (True, False):
        args = argparse.Namespace(**base, aligned=form)
        _check_asr_options(args)
        assert args.method == "lm"
    args = argparse.Namespace(**base, aligned=None)
    _check_asr_options(args)
    assert args.method is None  # the model's own default stays
    for method in ("lm", None):  # with the form alone, the method it picks is the LM too
        with pytest.raises(ValueError, match="--lm-lag tune the fused ASR, and the method here is 'lm'"):
            _check_asr_options(argparse.Namespace(**{**base, "lm_lag": 2, "method": method}, aligned=True))
