"""Long recordings and batches: pause splitting, `slm asr` over many files / long audio, `slm tts --batch`."""
from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.segment import PauseConfig, split_at_pauses

SR = 16000


def _tone(seconds, f=220.0):
    t = torch.arange(int(seconds * SR)) / SR
    return 0.3 * torch.sin(2 * math.pi * f * t)


def _quiet(seconds):
    return 1e-5 * torch.randn(int(seconds * SR), generator=torch.Generator().manual_seed(0))


def _speech_mask(parts):
    return torch.cat([torch.full((p.numel(),), loud) for p, loud in parts])


def _check_spans(spans, n, max_seconds):
    assert spans == sorted(spans)
    for (a, b), nxt in zip(spans, spans[1:] + [(n, n)], strict=True):
        assert 0 <= a < b <= nxt[0] <= n  # ordered, inside, not overlapping
        assert (b - a) / SR <= max_seconds + 1e-9


def test_split_cuts_at_pauses_and_covers_all_speech():
    parts = [(_quiet(0.5), False), (_tone(3), True), (_quiet(0.6), False), (_tone(4), True), (_quiet(0.1), False),
             (_tone(2), True), (_quiet(1.0), False), (_tone(3), True), (_quiet(0.3), False)]
    wav = torch.cat([p for p, _ in parts])
    speech = _speech_mask(parts)
    for max_s in (15.0, 6.5):
        spans = split_at_pauses(wav, SR, PauseConfig(max_seconds=max_s))
        _check_spans(spans, wav.numel(), max_s)
        covered = torch.zeros(wav.numel(), dtype=torch.bool)
        for a, b in spans:
            covered[a:b] = True
        assert covered[speech].all()  # every sample of speech is in a segment
        assert not covered[: int(0.3 * SR)].any()  # the leading silence is dropped (beyond the padding)
    spans = split_at_pauses(wav, SR, PauseConfig(max_seconds=6.5))
    # the 0.1 s gap is no pause: 4 s + 2 s stay one segment; the 0.6 s and 1.0 s pauses are cut in
    assert len(spans) == 3
    ends, starts = [b / SR for _, b in spans], [a / SR for a, _ in spans]
    assert 3.5 <= ends[0] <= 3.7 and 10.2 <= ends[1] <= 10.4 and 14.2 <= ends[2] <= 14.4  # speech end + <= 0.1 s
    assert 0.3 <= starts[0] <= 0.5 and 3.9 <= starts[1] <= 4.1 and 11.0 <= starts[2] <= 11.2


def test_split_cuts_long_speech_without_pauses():
    wav = _tone(40) * (1 + 0.5 * torch.sin(2 * math.pi * 0.3 * torch.arange(40 * SR) / SR))
    spans = split_at_pauses(wav, SR, PauseConfig(max_seconds=10))
    _check_spans(spans, wav.numel(), 10)
    assert len(spans) >= 4 and spans[0][0] == 0 and spans[-1][1] == wav.numel()
    assert all(b == a2 for (_, b), (a2, _) in itertools.pairwise(spans))  # contiguous: nothing lost


def test_split_silence_and_bad_input():
    assert split_at_pauses(torch.zeros(SR), SR) == []
    assert split_at_pauses(torch.zeros(0), SR) == []
    with pytest.raises(ValueError, match="mono"):
        split_at_pauses(torch.zeros(2, SR), SR)
    with pytest.raises(ValueError, match="max_seconds"):
        PauseConfig(max_seconds=0)


def test_huge_file_refused_from_its_header(tmp_path, monkeypatch):
    from codec import audio

    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(5 * SR, np.float32), SR)
    assert audio.header_seconds(path) == pytest.approx(5.0)
    assert audio.header_seconds(tmp_path / "missing.wav") is None

    def no_read(*a, **k):
        raise AssertionError("the samples were read before the length was checked")

    monkeypatch.setattr(audio, "_read_soundfile", no_read)
    with pytest.raises(audio.AudioError, match="expected at most 2 s, got 5.00 s"):
        audio.load_audio(path, SR, max_seconds=2)


def test_read_done_drops_a_cut_last_row(tmp_path):
    from slm.cli.batch import read_done

    f = tmp_path / "out.jsonl"
    f.write_text('{"audio": "a.wav", "text": "x"}\n{"audio": "b.wav", "te')
    assert read_done(str(f)) == {"a.wav"}
    assert f.read_text() == '{"audio": "a.wav", "text": "x"}\n'
    f.write_text('not json\n{"audio": "a.wav"}\n')
    with pytest.raises(ValueError, match="not JSON"):
        read_done(str(f))


# ---- the CLI on a tiny real pipeline ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    from tests._tiny_pipeline import tiny_pipeline_dir

    return tiny_pipeline_dir()


@pytest.fixture(scope="module")
def pipe(model):
    from slm.pipeline import SpeechPipeline

    return SpeechPipeline.from_pretrained(model, int8=False)


@pytest.fixture
def shared_pipe(monkeypatch, pipe):
    """The CLI's model load replaced by the module's pipeline (same model dir; saves a load per command)."""
    from slm.cli import lm

    monkeypatch.setattr(lm, "_pipe", lambda *a, **k: pipe)
    return pipe


def _clip(path, seconds, f):
    from tests._tiny_pipeline import speechlike_wav

    speechlike_wav(path, seconds)
    data, sr = sf.read(path)
    if f != 1:
        sf.write(path, data * f, sr)
    return str(path)


def _recording(path, parts):
    """Clips (seconds) separated by 0.8 s of near silence, written as one wav; returns the path."""
    from tests._tiny_pipeline import speechlike_wav

    pieces = []
    for i, s in enumerate(parts):
        speechlike_wav(path.parent / f"_p{i}.wav", s)
        pieces += [sf.read(path.parent / f"_p{i}.wav", dtype="float32")[0], np.full(int(0.8 * SR), 1e-5, np.float32)]
    sf.write(path, np.concatenate(pieces), SR)
    return str(path)


def _run(capsys, argv):
    from slm.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_asr_segments_match_asr_on_each_piece(tmp_path, pipe):
    from codec.audio import load_audio

    wav = load_audio(_recording(tmp_path / "rec.wav", [1.5, 1.2, 1.8]), pipe.sample_rate)
    cfg = PauseConfig(max_seconds=2.5)
    spans = split_at_pauses(wav[0], pipe.sample_rate, cfg)
    assert len(spans) == 3
    segs = list(pipe.asr_segments(wav, pipe.sample_rate, cfg, method="lm", aligned=False))
    want = [(pipe.asr(wav[:, a:b], pipe.sample_rate, method="lm", aligned=False), a, b) for a, b in spans]
    assert [(s.text, s.start, s.end) for s in segs] == [
        (t, round(a / pipe.sample_rate, 3), round(b / pipe.sample_rate, 3)) for t, a, b in want if t]


def test_asr_many_files_and_resume(tmp_path, capsys, model, shared_pipe):
    a = _clip(tmp_path / "a.wav", 1.2, 1)
    b = _clip(tmp_path / "b.wav", 1.0, 0.5)
    rec = _recording(tmp_path / "long.wav", [1.5, 1.5, 1.5])  # ~6.9 s, longer than --segment-seconds
    lst = tmp_path / "list.txt"
    lst.write_text(f"# inputs\n{b}\n{rec}\n")
    out = tmp_path / "out.jsonl"
    argv = ["asr", a, "--list", str(lst), "--model", model, "--out", str(out), "--segment-seconds", "3",
            "--method", "lm", "--plain"]
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["audio"] for r in rows] == [a, b, rec]
    assert [ln.split("\t")[0] for ln in stdout.splitlines()] == [a, b, rec]
    long = rows[2]
    assert long["seconds"] == pytest.approx(6.9, abs=0.05)
    assert len(long["segments"]) >= 2  # split at its pauses
    assert all(0 <= s["start"] < s["end"] <= long["seconds"] and s["end"] - s["start"] <= 3 for s in long["segments"])
    assert long["text"] == " ".join(s["text"] for s in long["segments"])
    # the same command again does nothing; a new input is appended after the old rows
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0 and stdout == "" and "3 of 3 inputs already in" in err
    c = _clip(tmp_path / "c.wav", 0.8, 1)
    rc, stdout, err = _run(capsys, ["asr", c, *argv[1:]])
    assert rc == 0 and [json.loads(x)["audio"] for x in out.read_text().splitlines()] == [a, b, rec, c]


def test_asr_progress_never_runs_past_its_total(tmp_path, capsys, model, shared_pipe, monkeypatch):
    """Segment ends past a file's header length (rounding, a resampled length) leave the progress bar at
    its total: tqdm warns when it goes past, and shows a negative time left."""
    import warnings

    from tqdm import TqdmWarning

    from slm.pipeline import WordTime

    def overshoot(wav, sr, pauses, **kw):
        end = wav.shape[-1] / sr
        yield WordTime("a", 0.0, end / 2 + 0.0004)
        yield WordTime("b", end / 2, end + 0.0004)

    monkeypatch.setattr(shared_pipe, "asr_segments", overshoot)
    recs = [_recording(tmp_path / f"r{i}.wav", [1.3, 1.2]) for i in range(3)]
    with warnings.catch_warnings():
        warnings.simplefilter("error", TqdmWarning)
        rc, stdout, err = _run(capsys, ["asr", *recs, "--model", model, "--segment-seconds", "2", "--method", "lm"])
    assert rc == 0, err
    assert len(stdout.splitlines()) == 3 and "-" not in err.splitlines()[-1].split("<")[-1]
    assert f"{round(sum(sf.info(r).duration for r in recs))}/" in err


def test_asr_srt_of_a_long_recording(tmp_path, capsys, model, shared_pipe):
    rec = _recording(tmp_path / "long.wav", [1.5, 1.5])
    srt = tmp_path / "rec.srt"
    rc, stdout, err = _run(capsys, ["asr", rec, "--model", model, "--srt", str(srt), "--segment-seconds", "2",
                                    "--method", "lm", "--plain"])
    assert rc == 0, err
    cues = [c for c in srt.read_text().split("\n\n") if c.strip()]
    assert 1 <= len(cues) <= 2 and cues[0].startswith("1\n00:00:00,")
    assert " ".join(c.split("\n", 2)[2] for c in cues) == stdout.strip()


def test_asr_batch_bad_input(tmp_path, capsys, model, monkeypatch, pipe):
    from slm.cli import lm

    good = _clip(tmp_path / "good.wav", 1.0, 1)
    (tmp_path / "junk.wav").write_bytes(b"not audio" * 20)
    junk = str(tmp_path / "junk.wav")

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(lm, "_pipe", refuse)
    rc, _, err = _run(capsys, ["asr", good, junk, "--model", model])
    assert rc == 2 and "junk.wav" in err and "unreadable audio" in err and "--skip-bad" in err
    rc, _, err = _run(capsys, ["asr", good, str(tmp_path / "nope.wav"), "--model", model])
    assert rc == 2 and "no such file" in err
    rc, _, err = _run(capsys, ["asr", "--model", model])
    assert rc == 2 and "got none" in err
    rc, _, err = _run(capsys, ["asr", good, good + "x", "--srt", str(tmp_path / "x.srt"), "--model", model])
    assert rc == 2 and "--srt writes the subtitles of one input" in err
    monkeypatch.setattr(lm, "_pipe", lambda *a, **k: pipe)
    out = tmp_path / "o.jsonl"
    rc, _, err = _run(capsys, ["asr", good, junk, "--model", model, "--skip-bad", "--out", str(out),
                               "--method", "lm", "--plain"])
    assert rc == 1 and "skipped" in err and "1 of 2 inputs skipped" in err
    assert [json.loads(x)["audio"] for x in out.read_text().splitlines()] == [good]
    rc, _, err = _run(capsys, ["asr", junk, "--model", model, "--skip-bad"])
    assert rc == 1 and "1 of 1 inputs skipped" in err


def test_tts_batch_resumes_with_the_same_audio(tmp_path, capsys, model, shared_pipe):
    lines = tmp_path / "lines.txt"
    lines.write_text("hello there.\n\n# a comment\ngreet\tgood morning to you.\n")
    out = tmp_path / "tts"
    argv = ["tts", "--batch", str(lines), "--out-dir", str(out), "--model", model, "--seed", "3", "--max-seconds", "1"]
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0, err
    rows = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["id"], r["text"]) for r in rows] == [("0001", "hello there."), ("greet", "good morning to you.")]
    first = sf.read(out / "greet.wav")[0]
    assert first.size == rows[1]["num_samples"] > 0
    assert not list(out.glob(".*"))  # no partial files left
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0 and "2 of 2 lines already in" in err and "0 new utterances" in stdout
    # lose the last row (as a kill would) and rerun: the same seed gives the same file
    (out / "manifest.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (out / "greet.wav").unlink()
    rc, stdout, err = _run(capsys, argv)
    assert rc == 0 and "1 new utterances" in stdout
    np.testing.assert_array_equal(sf.read(out / "greet.wav")[0], first)


@pytest.mark.parametrize("text, says", [("ok\n" + "a" * 5001 + "\n", "lines.txt:2: text has 5001 characters"),
                                        ("x/y\thi\n", "not a safe file name"),
                                        ("a\thi\na\tho\n", "used twice"),
                                        ("\n# nothing\n", "at least one line")])
def test_tts_batch_bad_lines_fail_before_load(tmp_path, capsys, model, monkeypatch, text, says):
    from slm.cli import lm

    monkeypatch.setattr(lm, "_pipe", lambda *a, **k: (_ for _ in ()).throw(AssertionError("model loaded")))
    lines = tmp_path / "lines.txt"
    lines.write_text(text)
    rc, _, err = _run(capsys, ["tts", "--batch", str(lines), "--out-dir", str(tmp_path / "o"), "--model", model])
    assert rc == 2 and says in err, err
    assert not (tmp_path / "o").exists()
