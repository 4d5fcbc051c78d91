"""Audio I/O and dataset loaders: resampling/down-mixing, clear errors, bad files skipped, layouts."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import warnings

import numpy as np
import pytest
import soundfile as sf
import torch

from codec.audio import AudioError, load_audio, save_audio
from codec.data import (
    ManifestDataset,
    collate,
    hf_dataset_records,
    libri_records,
    read_manifest,
    write_manifest,
)


def _tone(sr: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(sr * seconds)) / sr
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_load_resamples_and_downmixes(tmp_path):
    left = _tone(44100, 0.5)
    sf.write(tmp_path / "st.wav", np.stack([left, np.zeros_like(left)], 1), 44100)
    wav = load_audio(tmp_path / "st.wav", 16000)
    assert wav.shape == (1, 8000) and wav.dtype == torch.float32
    assert wav.abs().max() == pytest.approx(0.25, abs=0.02)  # mean of the two channels


def test_save_load_round_trip(tmp_path):
    x = torch.from_numpy(_tone(16000, 0.25))[None]
    save_audio(tmp_path / "a.wav", x, 16000)
    info = sf.info(str(tmp_path / "a.wav"))
    assert info.subtype == "PCM_16" and info.samplerate == 16000
    assert torch.allclose(load_audio(tmp_path / "a.wav", 16000), x, atol=1e-4)
    with pytest.raises(ValueError, match="expected mono"):
        save_audio(tmp_path / "b.wav", torch.zeros(2, 100), 16000)


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg not installed")
def test_float_file_past_full_scale_is_scaled_not_clipped(tmp_path):
    """A float wav peaking at 4x full scale keeps its shape (scaled down to peak 1); a 16-bit file is read as is."""
    t = torch.arange(1600) / 16000
    x = 4.0 * torch.sin(2 * math.pi * 220 * t)
    sf.write(tmp_path / "loud.wav", x.numpy(), 16000, subtype="FLOAT")
    wav = load_audio(tmp_path / "loud.wav", 16000)
    assert wav.abs().max().item() == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(wav[0], x / x.abs().max(), atol=1e-6)  # clipping would flatten every peak
    sf.write(tmp_path / "pcm.wav", (0.5 * x / 4).numpy(), 16000, subtype="PCM_16")
    assert load_audio(tmp_path / "pcm.wav", 16000).abs().max().item() == pytest.approx(0.5, abs=1e-3)


def test_ffmpeg_fallback_decodes_g722(tmp_path):
    sf.write(tmp_path / "a.wav", _tone(16000, 0.5), 16000)
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(tmp_path / "a.wav"), "-acodec", "g722",
                    str(tmp_path / "a.g722")], check=True)
    wav = load_audio(tmp_path / "a.g722", 16000)
    assert wav.shape[0] == 1 and abs(wav.shape[-1] - 8000) < 400 and wav.abs().max() > 0.3


def test_load_audio_clear_errors(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    (tmp_path / "junk.wav").write_bytes(b"RIFF1234WAVEnot really audio" * 10)
    with pytest.raises(AudioError, match="unreadable"):
        load_audio(tmp_path / "junk.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    x = _tone(16000, 0.1)
    x[10] = np.nan
    sf.write(tmp_path / "nan.wav", x, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(tmp_path / "nan.wav")
    sf.write(tmp_path / "long.wav", _tone(16000, 2.0), 16000)
    with pytest.raises(AudioError, match="expected at most 1 s, got 2.00 s"):
        load_audio(tmp_path / "long.wav", max_seconds=1.0)
    assert issubclass(AudioError, ValueError)


def _manifest(tmp_path, durations):
    recs = []
    for i, d in enumerate(durations):
        sf.write(tmp_path / f"u{i}.wav", _tone(16000, d, 200 + 50 * i), 16000, subtype="PCM_16")
        recs.append({"id": f"u{i}", "path": f"u{i}.wav", "text": f"text {i}", "speaker": f"s{i % 2}",
                     "split": "train"})
    write_manifest(tmp_path / "m.jsonl", recs)
    return tmp_path / "m.jsonl"


def test_crops_align_to_hop_and_pad_short_clips(tmp_path):
    ds = ManifestDataset(_manifest(tmp_path, [1.3, 0.2]), segment_seconds=0.5, align_hop=320)
    starts = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        u = ds[0]
        assert u.wav.shape == (1, 8000) and u.length == 8000 and u.start % 320 == 0
        starts.add(u.start)
    assert len(starts) > 1  # random crops move between epochs
    short = ds[1]
    assert short.wav.shape == (1, 8000) and short.length == 3200 and short.start == 0
    assert short.wav[:, 3200:].abs().sum() == 0
    b = collate([ds[0], ds[1]])
    assert b.wav.shape == (2, 1, 8000) and b.lengths.tolist() == [8000, 3200] and b.ids == ["u0", "u1"]


def test_whole_utterance_mode(tmp_path):
    ds = ManifestDataset(_manifest(tmp_path, [0.3, 0.2]), segment_seconds=None)
    b = collate([ds[0], ds[1]])
    assert b.wav.shape == (2, 1, 4800) and b.lengths.tolist() == [4800, 3200] and b.texts == ["text 0", "text 1"]


def test_bad_files_skipped_with_count_and_one_warning(tmp_path):
    m = _manifest(tmp_path, [0.2, 0.2, 0.2, 0.2])
    (tmp_path / "u1.wav").write_bytes(b"garbage")  # corrupt
    sf.write(tmp_path / "u2.wav", np.zeros(0, np.float32), 16000)  # empty
    (tmp_path / "u3.wav").unlink()  # missing
    ds = ManifestDataset(m, segment_seconds=0.1)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        ids = [ds[i].id for i in range(len(ds))]
    assert ids == ["u0", "u0", "u0", "u0"]  # each bad index falls through to the next good item
    assert ds.skipped == 3 and ds.bad_ids == {"u1", "u2", "u3"}
    assert len([x for x in w if "skipping unreadable audio" in str(x.message)]) == 1
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    assert sum(b.wav.shape[0] for b in loader) == 4  # a full epoch without a crash


def test_read_manifest_errors(tmp_path):
    (tmp_path / "bad.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(ValueError, match="expected fields 'id' and 'path'"):
        read_manifest(tmp_path / "bad.jsonl")
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / "none.jsonl")


def test_librispeech_and_libritts_layouts(tmp_path):
    ls = tmp_path / "LibriSpeech" / "dev-clean" / "19" / "198"
    ls.mkdir(parents=True)
    sf.write(ls / "19-198-0000.flac", _tone(16000, 0.3), 16000)
    sf.write(ls / "19-198-0001.flac", _tone(16000, 0.2), 16000)
    (ls / "19-198-0002.flac").write_bytes(b"broken")
    (ls / "19-198.trans.txt").write_text("19-198-0000 HELLO WORLD\n19-198-0001 GOOD DAY\n19-198-0002 BAD\n")
    tts = tmp_path / "LibriTTS" / "train-clean-100" / "103" / "1241"
    tts.mkdir(parents=True)
    sf.write(tts / "103_1241_000000_000001.wav", np.stack([_tone(24000, 0.4)] * 2, 1), 24000)
    (tts / "103_1241_000000_000001.normalized.txt").write_text("Hello there.")
    (tts / "103_1241_000000_000001.original.txt").write_text("Hello there!")
    with pytest.warns(UserWarning, match="skipped 1"):
        recs = libri_records(tmp_path / "LibriSpeech")
    assert [r["id"] for r in recs] == ["19-198-0000", "19-198-0001"] and recs[0]["text"] == "HELLO WORLD"
    assert recs[0]["speaker"] == "19" and recs[0]["duration"] == pytest.approx(0.3)
    tr = libri_records(tmp_path / "LibriTTS")
    assert tr[0]["speaker"] == "103" and tr[0]["text"] == "Hello there." and tr[0]["sample_rate"] == 24000
    assert libri_records(tmp_path / "LibriTTS", normalized=False)[0]["text"] == "Hello there!"
    write_manifest(tmp_path / "all.jsonl", recs + tr)
    b = collate([ManifestDataset(tmp_path / "all.jsonl", segment_seconds=None)[i] for i in range(3)])
    assert b.wav.shape == (3, 1, 6400) and b.lengths.tolist() == [4800, 3200, 6400]  # 24 kHz stereo -> 16 kHz


def test_hf_datasets_audio_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    paths = []
    for i, sr in enumerate((16000, 22050)):
        p = tmp_path / f"src{i}.wav"
        sf.write(p, _tone(sr, 0.25), sr)
        paths.append(str(p))
    (tmp_path / "bad.wav").write_bytes(b"nope")
    ds = datasets.Dataset.from_dict({"audio": paths + [str(tmp_path / "bad.wav")], "text": ["a b", "c d", "e"],
                                     "spk": ["x", "y", "z"]}).cast_column("audio", datasets.Audio())
    with pytest.warns(UserWarning, match="skipped 1"):
        recs = hf_dataset_records(ds, tmp_path / "out", speaker_column="spk")
    assert [r["text"] for r in recs] == ["a b", "c d"] and recs[1]["speaker"] == "y"
    assert all(r["num_samples"] == 4000 for r in recs)
    write_manifest(tmp_path / "out" / "manifest.jsonl", recs)
    u = ManifestDataset(tmp_path / "out" / "manifest.jsonl", segment_seconds=None)[1]
    assert u.wav.shape == (1, 4000)
    assert json.loads((tmp_path / "out" / "manifest.jsonl").read_text().splitlines()[0])["path"] == "wavs/train-0000000.wav"


def test_real_set_prompt_normalisation():
    from adapters.real import normalise_prompt

    assert normalise_prompt("Press 1 to mute, or 8 to exit.") == "press one to mute, or eight to exit."
    assert normalise_prompt("[this is a simple beep tone]") is None
    assert normalise_prompt("") is None
