"""Audio file I/O: load any file as float32 mono ``[1, N]`` at a chosen rate, save 16-bit PCM wav.

soundfile (libsndfile) reads wav/flac/ogg directly; anything it cannot open (G.722, mp3 on older
libsndfile, m4a, ...) is decoded by an ``ffmpeg`` subprocess. Resampling is torchaudio's
band-limited ``resample``; channels are averaged to mono.
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


class AudioError(ValueError):
    """An audio file that cannot be used: unreadable, empty, non-finite or too long."""


def _read_soundfile(path: Path) -> tuple[np.ndarray, int] | None:
    import soundfile as sf

    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)  # [N, C]
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    return data.T, int(sr)


def check_audio_file(path: str | Path, max_seconds: float | None = None) -> float | None:
    """What can be checked without reading the samples: the file exists and, where its header states a length,
    that length is at most ``max_seconds`` (:class:`AudioError` otherwise). Returns the length in seconds, None
    when only decoding can tell (ffmpeg formats, a header without a length)."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"{path}: expected an audio file, got no such file")
    seconds = header_seconds(path)
    if max_seconds is not None and seconds is not None and seconds > max_seconds:
        raise AudioError(f"{path}: expected at most {max_seconds:g} s, got {seconds:.2f} s")
    return seconds


def header_seconds(path: str | Path) -> float | None:
    """The duration a file's header states (soundfile's formats), without reading the samples; None when soundfile
    cannot open it (ffmpeg formats) or the header gives no length."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return None
    return info.frames / info.samplerate if info.frames > 0 and info.samplerate > 0 else None


def _read_ffmpeg(path: Path, sample_rate: int, max_seconds: float | None = None) -> tuple[np.ndarray, int]:
    """Decode with ffmpeg straight to mono float32 at ``sample_rate`` (ffmpeg resamples); with ``max_seconds``, at
    most a little more than that is decoded (enough to tell that the file is too long)."""
    if shutil.which("ffmpeg") is None:
        raise AudioError(f"{path}: soundfile cannot read it and ffmpeg is not installed "
                         "(expected a wav/flac/ogg file or ffmpeg on PATH)")
    limit = ["-t", f"{max_seconds + 1:.3f}"] if max_seconds is not None else []
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), *limit, "-f", "f32le", "-acodec", "pcm_f32le",
           "-ac", "1", "-ar", str(sample_rate), "-"]
    res = subprocess.run(cmd, capture_output=True, timeout=600, check=False)
    if res.returncode != 0:
        msg = res.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["unknown error"]
        raise AudioError(f"{path}: unreadable audio (soundfile and ffmpeg both failed: {msg[0]})")
    return np.frombuffer(res.stdout, dtype=np.float32)[None].copy(), sample_rate


def load_audio(path: str | Path, sample_rate: int = 16000, *, max_seconds: float | None = None) -> Tensor:
    """Load ``path`` as float32 ``[1, N]`` at ``sample_rate`` Hz, mono, values in [-1, 1]. A float file whose
    samples go past full scale is scaled down to peak at 1 rather than clipped.

    Raises :class:`AudioError` (a ``ValueError``) saying what was expected and what came for a
    missing/unreadable file, an empty one, NaN/Inf samples, or one longer than ``max_seconds``.
    """
    path = Path(path)
    if sample_rate <= 0:
        raise ValueError(f"sample_rate: expected a positive integer, got {sample_rate}")
    check_audio_file(path, max_seconds)  # a huge file is refused from its header, before it is read
    got = _read_soundfile(path)
    data, sr = got if got is not None else _read_ffmpeg(path, sample_rate, max_seconds)
    if data.size == 0 or data.shape[-1] == 0:
        raise AudioError(f"{path}: expected audio samples, got an empty file (0 samples)")
    if max_seconds is not None and data.shape[-1] / sr > max_seconds:
        raise AudioError(f"{path}: expected at most {max_seconds:g} s, got {data.shape[-1] / sr:.2f} s")
    wav = torch.from_numpy(np.ascontiguousarray(data)).float().mean(dim=0, keepdim=True)  # [1, N]
    if not torch.isfinite(wav).all():
        raise AudioError(f"{path}: expected finite samples, got NaN or Inf values")
    peak = float(wav.abs().max())
    if peak > 1.0:  # a float file past full scale: scaled down whole, not clipped (clipping distorts every peak)
        wav /= peak
    if sr != sample_rate:
        import torchaudio.functional as AF

        wav = AF.resample(wav, sr, sample_rate)
    return wav.clamp_(-1.0, 1.0)


AUDIO_OUT_SUFFIXES = (".wav", ".flac")  # what save_audio writes (16-bit PCM)


def check_audio_out(path: str | Path) -> Path:
    """An output audio path whose format its extension names (``AUDIO_OUT_SUFFIXES``), checked before any
    work is done, so that a long generation is not lost to a name ``save_audio`` cannot write."""
    p = Path(path)
    if p.suffix.lower() not in AUDIO_OUT_SUFFIXES:
        raise ValueError(f"{path}: the output's extension must name its format, one of "
                         f"{', '.join(AUDIO_OUT_SUFFIXES)}, got {p.suffix or 'none'!r}")
    if p.is_dir():
        raise ValueError(f"{path}: is a directory, not an audio file name")
    return p


def save_audio(path: str | Path, wav: Tensor, sr: int) -> None:
    """Write ``wav`` (``[N]``, ``[1, N]`` or ``[1, 1, N]``) as 16-bit PCM wav or flac (by ``path``'s extension);
    values are clipped to [-1, 1]."""
    import soundfile as sf

    check_audio_out(path)
    if wav.dim() == 3 and wav.shape[0] == 1:
        wav = wav[0]
    if wav.dim() == 1:
        wav = wav[None]
    if wav.dim() != 2 or wav.shape[0] != 1:
        raise ValueError(f"save_audio: expected mono [N], [1, N] or [1, 1, N], got shape {tuple(wav.shape)}")
    if wav.shape[-1] == 0:
        raise ValueError(f"{path}: nothing to write (0 audio samples)")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wav[0].detach().float().clamp(-1, 1).cpu().numpy(), int(sr), subtype="PCM_16")
