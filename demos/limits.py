"""Input limits of the public demo and the audio/text checks that enforce them.

A demo on a shared 2-core CPU must refuse work it cannot finish in reasonable time: every handler
runs its inputs through these checks first, and a refused input becomes a ``gr.Error`` that says
what the limit is and what came, so a user knows what to change.
"""
from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


class InputError(ValueError):
    """A user input broke a demo limit; the app shows the message as a ``gr.Error``."""


@dataclass
class DemoLimits:
    """Per-request limits. Defaults keep one request under ~a minute on a 2-core CPU."""

    max_audio_seconds: float = 30.0  # uploads/recordings: the codec and Whisper-sized encoders are O(N)
    max_upload_mb: float = 20.0  # ~2 min of 44.1 kHz stereo wav; also passed to launch(max_file_size)
    max_text_chars: int = 400  # TTS text: the LM decodes one semantic token per step (DESIGN.md §8)
    max_generate_seconds: float = 20.0  # upper end of the TTS / continuation length slider
    max_best_of: int = 4  # TTS candidates per sentence (best-of-N by the CTC reader): each costs LM time
    max_best_of_words: int = 8  # best-of: the reader chooses every N words (0: once per sentence)
    asr_segment_seconds: float = 8.0  # longer ASR input is split at its pauses and read piece by piece (`slm asr`)
    max_dialogue_turns: int = 8  # history kept for the chat backbone; older turns are dropped
    concurrency: int = 1  # requests computed at once: the CPU has 2 cores and torch uses them all
    queue_size: int = 16  # waiting requests beyond this are refused instead of piling up


def check_text(text: str | None, limits: DemoLimits, *, name: str = "text") -> str:
    text = (text or "").strip()
    if not text:
        raise InputError(f"{name}: please enter some text (got an empty box)")
    if len(text) > limits.max_text_chars:
        raise InputError(f"{name}: at most {limits.max_text_chars} characters, got {len(text)}; "
                         "shorten it or split it into several requests")
    return text


def _decode_with_ffmpeg(path: str) -> tuple[np.ndarray, int]:
    """Formats libsndfile cannot read (m4a/webm from some browsers): let ffmpeg decode to wav."""
    try:
        out = subprocess.run(["ffmpeg", "-v", "error", "-i", path, "-f", "f32le", "-ac", "1", "-ar", "24000", "-"],
                             capture_output=True, check=True, timeout=60)
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        raise InputError(f"could not read the audio file {os.path.basename(path)!r}: not a supported audio format "
                         "(wav, flac, ogg, mp3, m4a, webm)") from e
    return np.frombuffer(out.stdout, dtype=np.float32).copy(), 24000


def read_audio(path: str) -> tuple[np.ndarray, int]:
    """Read any audio file as mono float32 ``[N]`` and its sample rate."""
    import soundfile as sf

    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)  # [N, C]
        data = data.mean(axis=1)
    except Exception:  # noqa: BLE001 - libsndfile raises several types; ffmpeg is the fallback for all
        data, sr = _decode_with_ffmpeg(path)
    return data, int(sr)


def to_mono_float(value: tuple[int, np.ndarray]) -> tuple[np.ndarray, int]:
    """Gradio's numpy audio ``(sr, int16/float [N] or [N, C])`` -> float32 mono ``[N]`` in [-1, 1]."""
    sr, data = value
    data = np.asarray(data)
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max)
    data = data.astype(np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)
    return data, int(sr)


def load_audio_input(value, limits: DemoLimits, target_sr: int, *, name: str = "audio") -> Tensor:
    """A gradio audio value (file path or ``(sr, array)``) -> float32 ``[1, N]`` at ``target_sr``.

    Enforces the upload size and duration limits and refuses empty or silent input.
    """
    if value is None or (isinstance(value, str) and not value):
        raise InputError(f"{name}: please record or upload some audio first")
    if isinstance(value, dict) and "path" in value:  # FileData from the API
        value = value["path"]
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        size_mb = os.path.getsize(path) / 2**20
        if size_mb > limits.max_upload_mb:
            raise InputError(f"{name}: file is {size_mb:.1f} MB, the limit is {limits.max_upload_mb:g} MB")
        data, sr = read_audio(path)
    else:
        data, sr = to_mono_float(value)
    seconds = data.shape[0] / sr if sr else 0.0
    if data.size == 0 or seconds < 0.1:
        raise InputError(f"{name}: audio is too short ({seconds:.2f} s); give at least 0.1 s")
    if seconds > limits.max_audio_seconds:
        raise InputError(f"{name}: audio is {seconds:.1f} s long, the limit is {limits.max_audio_seconds:g} s; "
                         "trim it first")
    if not np.isfinite(data).all():
        raise InputError(f"{name}: audio contains NaN/Inf samples")
    if float(np.abs(data).max()) < 1e-4:
        raise InputError(f"{name}: audio is silent (peak below -80 dBFS); check the microphone")
    wav = torch.from_numpy(np.ascontiguousarray(data))[None]  # [1, N]
    if sr != target_sr:
        import torchaudio.functional as AF

        wav = AF.resample(wav, sr, target_sr)
    return wav.clamp(-1.0, 1.0)


def to_gradio_audio(wav: Tensor, sample_rate: int) -> tuple[int, np.ndarray]:
    """float ``[1, N]`` / ``[N]`` / ``[1, 1, N]`` tensor -> ``(sr, int16 [N])`` for a gradio Audio output.

    int16 because gradio would convert float arrays itself, with a warning per call.
    """
    a = wav.detach().float().cpu().reshape(-1).clamp(-1.0, 1.0).numpy()
    return int(sample_rate), (a * 32767.0).astype(np.int16)
