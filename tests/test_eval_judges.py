"""Judges: fidelity on identical/noisy speech, DNSMOS, WER normalisation, packed ASR, the disk cache."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest

from adapters.judges import DNSMOS, FidelityJudge, JudgeCache, SpeakerSimilarity, WhisperASR, error_rates, wer
from adapters.judges.asr import as_mono16k

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "It costs five dollars to park here.",
             "Please call Stella and ask her to bring these things.",
             "We will meet at the station tomorrow morning."]


def espeak_clip(text: str, tmp_path, voice: str = "en-us") -> np.ndarray:
    """Real synthetic speech: espeak-ng at its native 22.05 kHz, resampled to 16 kHz."""
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian package espeak-ng)")
    import soundfile as sf

    path = tmp_path / f"clip{abs(hash(text)) % 10**8}.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", "140", "-w", str(path), text], check=True)
    wav, sr = sf.read(str(path), dtype="float32")
    return as_mono16k(wav, sr)


def add_noise(a: np.ndarray, snr_db: float, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(len(a)).astype(np.float32)
    noise *= np.sqrt(np.mean(a**2) / 10 ** (snr_db / 10) / np.mean(noise**2))
    return np.clip(a + noise, -1, 1)


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    return espeak_clip(SENTENCES[2], tmp_path_factory.mktemp("speech"))


@pytest.fixture
def cache(tmp_path):
    return JudgeCache(str(tmp_path / "judges.sqlite"))


def test_fidelity_identical_and_noisy(speech, cache):
    judge = FidelityJudge(cache)
    same = judge(speech, speech)
    assert same.pesq_wb > 4.4 and same.stoi > 0.99 and same.mel_distance < 1e-6
    noisy = judge(speech, add_noise(speech, 10.0))
    assert noisy.pesq_wb < same.pesq_wb - 1.0 and noisy.pesq_nb < same.pesq_nb - 1.0
    assert noisy.stoi < same.stoi and noisy.mel_distance > 0.1


def test_dnsmos_drops_with_noise(speech, tmp_path, cache):
    # 9.5 s of speech: DNSMOS scores 9.01 s windows every second and tiles shorter clips (a 3 s clip
    # costs 5 windows), so one window per clip keeps the test cheap
    long = np.concatenate([speech] + [espeak_clip(s, tmp_path) for s in SENTENCES[:3]] + [speech])
    long = long[: int(9.5 * 16000)]
    assert len(long) == int(9.5 * 16000)
    mos = DNSMOS(cache)
    clean, noisy = mos(long), mos(add_noise(long, 10.0))
    assert 1.0 <= clean.ovrl <= 5.0
    assert noisy.ovrl < clean.ovrl and noisy.bak < clean.bak


def test_speaker_similarity(speech, tmp_path, cache):
    sim = SpeakerSimilarity(cache)
    assert sim(speech, speech) > 0.99
    other = espeak_clip(SENTENCES[0], tmp_path, voice="en-us+f3")  # a different espeak voice
    assert sim(speech, other) < sim(speech, speech) - 0.05


def test_cache_hit_returns_identical_numbers(speech, cache):
    judge = FidelityJudge(cache)
    noisy = add_noise(speech, 10.0)
    first = judge(speech, noisy)
    misses = cache.misses
    second = judge(speech, noisy)
    assert cache.misses == misses and cache.hits >= 1
    assert first == second
    fresh = FidelityJudge(JudgeCache(cache.path))  # a new process reading the same file
    assert fresh(speech, noisy) == first and fresh.cache.hits == 1


def test_wer_normaliser():
    assert wer("The cat sat.", "the cat sat") == 0.0
    assert wer("It costs $5.", "it costs five dollars") == 0.0
    assert wer("He came 3rd, with 50% of the vote!", "he came third with fifty percent of the vote") == 0.0
    assert wer("the cat sat", "the dog sat") == pytest.approx(1 / 3)
    r = error_rates(["one two three four", "five six"], ["one two three four", "five"])
    assert r.wer == pytest.approx(1 / 6) and r.n_words == 6  # corpus-level: total edits / total words
    with pytest.raises(ValueError, match="as many hypotheses"):
        error_rates(["a"], [])


@pytest.mark.slow
def test_packed_asr_matches_per_clip(tmp_path):
    clips = [espeak_clip(s, tmp_path) for s in SENTENCES]
    asr = WhisperASR(cache=JudgeCache(str(tmp_path / "asr.sqlite")))
    packed = asr.transcribe(clips, 16000, pack=True)
    assert len(asr._packs(clips)) == 1  # all four clips went through Whisper in one window
    single = [asr.transcribe_one(c, 16000) for c in clips]
    # Whisper's output depends a little on context, so packing may change a word; it must not move
    # words between clips or lose them: packed agrees with per-clip transcripts and with the truth.
    assert error_rates(single, packed).wer < 0.15
    for ref, hyp in zip(SENTENCES, packed):
        assert wer(ref, hyp) < 0.35, (ref, hyp)
    again = asr.transcribe(clips, 16000)
    assert again == packed and asr.cache.hits == len(clips)
