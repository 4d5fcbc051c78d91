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


@pytest.mark.parametrize("text, says", [("", "non-empty"), ("   ", "non-empty"), ("a" * 5001, "at most 5000")])
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
