"""A tiny REAL `SpeechPipeline` for the demo tests: tiny random Llama + tiny causal codec + token layout,
trained for two steps through the same `slm.train` path as the real models (so the bundle format is the
real one). Random weights: audio is noise-like and transcripts are arbitrary, by design.

Built once per test process (cached on disk under a temp dir); nothing is downloaded.
"""
from __future__ import annotations

import tempfile
from functools import cache
from pathlib import Path


@cache
def tiny_pipeline_dir() -> str:
    from slm.train import train
    from tests.test_slm_helpers import tiny_train_config

    tmp = Path(tempfile.mkdtemp(prefix="tiny_demo_pipeline_"))
    return str(train(tiny_train_config(tmp, steps=2, save_every=2), progress=False))


def tiny_pipeline():
    from slm.pipeline import SpeechPipeline

    return SpeechPipeline.from_pretrained(tiny_pipeline_dir())


@cache
def tiny_codec_root() -> str:
    """A folder laid out like ``checkpoints/codec``: ``<variant>/`` save_pretrained dirs (tiny, random)."""
    import shutil

    from tests.test_slm_helpers import tiny_codec_dir

    root = Path(tempfile.mkdtemp(prefix="tiny_codec_root_")) / "codec"
    for variant in ("sacodec", "stacodec"):
        shutil.copytree(tiny_codec_dir(variant), root / variant)
    return str(root)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(app) -> str:
    """Launch a built demo on a free localhost port in a background thread; returns its URL."""
    from demos.app import launch

    port = free_port()
    launch(app, host="127.0.0.1", port=port, block=False, quiet=True)
    return f"http://127.0.0.1:{port}/"


def speechlike_wav(path: str | Path, seconds: float = 1.5, sample_rate: int = 16000) -> str:
    """A voiced-looking test clip (harmonics with a syllable envelope) written as 16-bit wav."""
    import numpy as np
    import soundfile as sf

    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120 + 20 * np.sin(2 * np.pi * 1.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * 4 * t)) * 0.2
    sf.write(str(path), (voiced * envelope).astype(np.float32), sample_rate, subtype="PCM_16")
    return str(path)
