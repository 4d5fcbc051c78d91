"""Shared bits of the speed benchmarks: machine record, a fixed speech clip, timing, subprocess workers.

Each model is measured in its own child process (same threads, same clip) so that peak resident
memory (``ru_maxrss``) belongs to that model alone; the parent collects the JSON rows.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

import numpy as np

TEXT = ("The quick brown fox jumps over the lazy dog, and then it runs across the cold northern field "
        "towards the station where seven ships wait for the morning tide.")
# what the same-run TTS A/B scripts speak (two sentences: the second starts while the first plays)
TTS_TEXT = ("The quick brown fox jumps over the lazy dog, twice. Please call Stella and ask her to bring these "
            "things with her from the store.")


def machine(threads: int, dtype: str = "float32") -> dict:
    import torch

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads, "torch": torch.__version__,
            "python": platform.python_version(), "dtype": dtype,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""), "gomp_spincount": os.environ.get("GOMP_SPINCOUNT", "")}


def speech_clip(seconds: float = 5.0, sample_rate: int = 16000) -> np.ndarray:
    """A fixed speech clip: espeak-ng reading ``TEXT``, cut/zero-padded to ``seconds``.
    (Speed does not depend on the content; espeak makes it real speech and reproducible.)"""
    n = int(seconds * sample_rate)
    if shutil.which("espeak-ng") is None:  # a deterministic chirp keeps the benchmark runnable anywhere
        t = np.arange(n) / sample_rate
        return (0.3 * np.sin(2 * np.pi * (200 + 300 * t / seconds) * t)).astype(np.float32)
    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "clip.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", path, TEXT], check=True)
        wav, sr = sf.read(path, dtype="float32")
    wav = AF.resample(torch.from_numpy(wav), sr, sample_rate).numpy()
    out = np.zeros(n, np.float32)
    out[: min(n, len(wav))] = wav[:n]
    return out


def time_it(fn: Callable[[], object], repeats: int, warmup: int = 1) -> dict:
    for _ in range(warmup):
        fn()
    times, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    # CPU seconds (all threads of this process) are what a shared machine's load distorts least.
    return {"seconds_min": min(times), "seconds_median": float(np.median(times)),
            "cpu_seconds_median": float(np.median(cpu)), "repeats": repeats}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def run_worker(script: str, spec: dict, threads: int, timeout: float = 1800) -> dict:
    """Run ``script --worker JSON`` in a child process with ``threads`` threads; return its JSON row."""
    from codec.runtime import omp_defaults

    env = dict(omp_defaults(dict(os.environ)), OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               TOKENIZERS_PARALLELISM="false",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    res = subprocess.run([sys.executable, script, "--worker", json.dumps({**spec, "threads": threads})],
                         check=False, capture_output=True, text=True, env=env, timeout=timeout)
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("{")]
    if res.returncode != 0 or not lines:
        return {"name": spec.get("name"), "error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(lines[-1])


def print_table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """``columns``: (key, header, format spec)."""
    print(" | ".join(h for _, h, _ in columns))
    print("-|-".join("-" * len(h) for _, h, _ in columns))
    for r in rows:
        if "error" in r:
            print(f"{r.get('name')} | error: {r['error']}")
            continue
        print(" | ".join(format(r[k], f) if isinstance(r.get(k), (int, float)) else
                         ("–" if r.get(k) is None else str(r[k])) for k, _, f in columns))


def write_json(path: str | None, result: dict) -> None:
    """Save a benchmark result (with its machine record) as JSON; no-op without a path."""
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
    print(f"wrote {path}")


def write_markdown(path: str | None, lines: list[str] | str) -> str:
    """Print a benchmark's markdown table (lines or one text) and save it; no file without a path. Returns the
    text."""
    text = lines if isinstance(lines, str) else "\n".join(lines)
    text = text.rstrip("\n") + "\n"
    print(text)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    return text


def ab_parser(doc: str | None, model: str, text: str = TTS_TEXT) -> argparse.ArgumentParser:
    """The options every same-run A/B script shares: ``--model`` (a speech-LM dir), ``--threads``, ``--repeats``,
    ``--text`` (what TTS speaks), ``--out`` (JSON) and ``--md`` (the table)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=model)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--text", default=text)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--md", help="write the markdown table here")
    return ap
