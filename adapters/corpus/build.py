"""Build the synthetic multi-speaker, phone-aligned English corpus.

Layout of ``out_dir``::

    wavs/<id>.wav          16 kHz mono 16-bit PCM
    meta/<id>.json         one record per utterance (written last, atomically: its presence = done)
    manifest.jsonl         all records in plan order; manifest.{train,valid,test}.jsonl per split
    summary.json           speakers/sentences/hours per split and synthesizer, failures, build time

Manifest record (one JSON object per line)::

    id            "<synth>-<sentence_id>-<speaker hash>"
    path          wav path relative to the manifest's directory
    text          normalised transcript, exactly what is spoken (lower case, light punctuation)
    raw_text      the source sentence from the fortunes files
    speaker       voice setting = speaker id, e.g. "espeak:en-gb-scotland+f3:r170:p55"
    synth         "espeak" | "flite" | "festival"
    voice         the settings dict behind the speaker id
    sample_rate   16000;  duration (s);  num_samples
    split         "train" | "valid" | "test"
    sentence_id   12 hex digits (sha1 of the normalised text)
    phones        [[start_s, end_s, label], ...] contiguous from 0 to the audio length, labels from
                  ``phones.INVENTORY`` (ARPAbet-39 + "sil"), "sil" at both edges
    words         [[start_s, end_s, word], ...] (empty when a synthesizer's words could not be aligned)

Split rule: sentences are split by hash (90/5/5, `text.sentence_split`); speakers are split into
held-out *test speakers* (espeak variants f4 and m6 in every accent, flite ``awb``, festival
``ked_diphone``, all their settings) and the rest. ``test`` = test speaker + test sentence;
``valid`` = seen speaker + valid sentence (unseen text); ``train`` = seen speaker + train sentence. So
train never contains a test speaker or a test/valid sentence. The plan is a pure function of the seed
and the hours (a bigger ``hours`` extends the same per-(synth, split) sequence), so reruns skip what exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import time
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from . import espeak, festival, flite
from .phones import finalize
from .text import Sentence, load_sentences

SAMPLE_RATE = 16000
SYNTH_SHARE = {"espeak": 0.5, "flite": 0.3, "festival": 0.2}  # fraction of hours per synthesizer
SPLIT_SHARE = {"train": 0.9, "valid": 0.05, "test": 0.05}  # fraction of hours per split
TEST_ESPEAK_VARIANTS = ("f4", "m6")
TEST_FLITE_VOICES = ("awb",)
TEST_FESTIVAL_VOICES = ("ked_diphone",)
# seconds ~= a + b * words * stretch, least-squares fit on a 1198-utterance build of this corpus
_DURATION_FIT = {"espeak": (0.15, 0.29), "flite": (0.33, 0.315), "festival": (0.57, 0.31)}
CHUNK = 16  # utterances per worker task (festival runs one process per chunk)


@dataclass(frozen=True)
class Speaker:
    id: str
    synth: str
    voice: dict = field(hash=False)
    held_out: bool  # a test speaker


@dataclass(frozen=True)
class PlannedUtt:
    id: str
    speaker: Speaker
    sentence: Sentence
    split: str


def _h(s: str) -> int:
    return int(hashlib.sha1(s.encode()).hexdigest()[:8], 16)


def speakers() -> list[Speaker]:
    """Every voice setting used as a speaker (only voices installed on this machine)."""
    out = []
    accents = ["en"] + espeak.available_accents()  # "en" is espeak-ng's British English (en-gb) voice
    for acc in accents:
        for var in espeak.available_variants():
            h = _h(f"{acc}+{var}")
            rate, pitch = 145 + 15 * (h % 4), 35 + 5 * ((h >> 4) % 7)
            v = {"voice": f"{acc}+{var}", "rate": rate, "pitch": pitch}
            out.append(Speaker(f"espeak:{'en-gb' if acc == 'en' else acc}+{var}:r{rate}:p{pitch}", "espeak", v,
                               var in TEST_ESPEAK_VARIANTS))
    for vo in flite.available_voices():
        base = 100 if vo in ("rms", "awb", "kal16") else 170
        for st in (0.85, 1.0, 1.2):
            for df in (-15, 15):
                v = {"voice": vo, "stretch": st, "f0": base + df}
                out.append(Speaker(f"flite:{vo}:s{st}:f{base + df}", "flite", v, vo in TEST_FLITE_VOICES))
    for vo in festival.available_voices():
        if not festival.VARIABLE[vo]:
            out.append(Speaker(f"festival:{vo}", "festival", {"voice": vo, "stretch": 1.0, "f0": None},
                               vo in TEST_FESTIVAL_VOICES))
            continue
        for st in (0.9, 1.0, 1.15):
            for f0 in (95, 125):
                v = {"voice": vo, "stretch": st, "f0": f0}
                out.append(Speaker(f"festival:{vo}:s{st}:f{f0}", "festival", v, vo in TEST_FESTIVAL_VOICES))
    return out


def _est_seconds(s: Sentence, spk: Speaker) -> float:
    words = len(s.text.split())
    stretch = 175 / spk.voice["rate"] if spk.synth == "espeak" else spk.voice["stretch"]
    a, b = _DURATION_FIT[spk.synth]
    return a + b * words * stretch


def plan(hours: float, seed: int) -> list[PlannedUtt]:
    """Deterministic utterance list for ``hours`` of audio (estimated from word counts)."""
    sents = load_sentences()
    by_split = {k: [s for s in sents if s.split == k] for k in SPLIT_SHARE}
    spk = speakers()
    out: list[PlannedUtt] = []
    for synth, share in SYNTH_SHARE.items():
        for split, sshare in SPLIT_SHARE.items():
            pool = [s for s in spk if s.synth == synth and s.held_out == (split == "test")]
            if not pool:
                continue
            rng = random.Random(f"{seed}:{synth}:{split}")
            order = list(by_split[split])
            rng.shuffle(order)
            budget, k, seen = hours * 3600 * share * sshare, 0, set()
            while budget > 0 and k < 50 * len(order):
                sen, sp = order[k % len(order)], pool[rng.randrange(len(pool))]
                k += 1
                uid = f"{synth}-{sen.id}-{hashlib.sha1(sp.id.encode()).hexdigest()[:6]}"
                if uid in seen:
                    continue
                seen.add(uid)
                out.append(PlannedUtt(uid, sp, sen, split))
                budget -= _est_seconds(sen, sp)
    return out


def _worker_init() -> None:
    espeak.start_zygote()  # before torch: keeps the per-utterance fork cheap
    import torch

    torch.set_num_threads(1)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _finish(out_dir: Path, u: PlannedUtt, audio: np.ndarray, sr: int, phones: list, words: list) -> dict:
    import io

    import soundfile as sf
    import torch
    import torchaudio.functional as AF

    wav = torch.from_numpy(audio.astype(np.float32) / 32768.0)
    if sr != SAMPLE_RATE:
        wav = AF.resample(wav, sr, SAMPLE_RATE)
    peak = float(wav.abs().max()) if wav.numel() else 0.0
    if peak < 1e-4:
        raise ValueError(f"silent output for {u.id}")
    wav = wav * (0.9 / peak)  # same peak level for every synthesizer
    n = wav.numel()
    dur = n / SAMPLE_RATE
    buf = io.BytesIO()
    sf.write(buf, wav.numpy(), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    _atomic_write(out_dir / "wavs" / f"{u.id}.wav", buf.getvalue())
    words = [[a, min(b, round(dur, 5)), w] for a, b, w in words if a < dur]
    return {"id": u.id, "path": f"wavs/{u.id}.wav", "text": u.sentence.text, "raw_text": u.sentence.raw_text,
            "speaker": u.speaker.id, "synth": u.speaker.synth, "voice": u.speaker.voice,
            "sample_rate": SAMPLE_RATE, "duration": round(dur, 5), "num_samples": n, "split": u.split,
            "sentence_id": u.sentence.id, "phones": finalize(phones, dur), "words": words}


def _run_chunk(args: tuple[str, list[PlannedUtt]]) -> tuple[list[dict], list[str]]:
    out_dir, utts = Path(args[0]), args[1]
    recs, errors = [], []
    results: list = []
    if utts and utts[0].speaker.synth == "festival":
        jobs = [festival.FestivalJob(u.sentence.text, u.speaker.voice["voice"], u.speaker.voice["stretch"],
                                     u.speaker.voice["f0"]) for u in utts]
        try:
            results = festival.synth_batch(jobs)
        except Exception as e:  # noqa: BLE001 - one bad batch must not stop the build
            results = [None] * len(utts)
            errors.append(f"festival batch: {e}")
    for i, u in enumerate(utts):
        v = u.speaker.voice
        try:
            if u.speaker.synth == "espeak":
                res = espeak.synth_aligned(u.sentence.text, v["voice"], v["rate"], v["pitch"])
            elif u.speaker.synth == "flite":
                res = flite.synth(u.sentence.text, v["voice"], v["stretch"], v["f0"])
            else:
                res = results[i]
                if res is None:
                    raise RuntimeError("festival produced no output")
            rec = _finish(out_dir, u, *res)
            _atomic_write(out_dir / "meta" / f"{u.id}.json", json.dumps(rec).encode())
            recs.append(rec)
        except Exception as e:  # noqa: BLE001 - counted and reported in summary.json
            errors.append(f"{u.id}: {type(e).__name__}: {e}")
    return recs, errors


def build_corpus(out_dir: str | Path, hours: float, seed: int = 0, workers: int | None = None,
                 progress: bool = True) -> dict:
    """Synthesise (or resume) the corpus in ``out_dir``; returns the summary dict (also summary.json)."""
    if hours <= 0:
        raise ValueError(f"hours must be > 0, got {hours}")
    from tqdm import tqdm

    t0 = time.time()
    out = Path(out_dir)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    (out / "meta").mkdir(exist_ok=True)
    todo_plan = plan(hours, seed)
    done: dict[str, dict] = {}
    todo: list[PlannedUtt] = []
    for u in todo_plan:
        meta = out / "meta" / f"{u.id}.json"
        if meta.exists() and (out / "wavs" / f"{u.id}.wav").exists():
            done[u.id] = json.loads(meta.read_text())
        else:
            todo.append(u)
    chunks = []
    for synth in SYNTH_SHARE:
        us = [u for u in todo if u.speaker.synth == synth]
        chunks += [(str(out), us[i:i + CHUNK]) for i in range(0, len(us), CHUNK)]
    errors: list[str] = []
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=len(todo), desc=f"synth {hours} h", unit="utt", disable=not progress)
    def _collect(results: Iterable[tuple[list[dict], list[str]]]) -> None:
        nonlocal errors
        for recs, errs in results:
            for r in recs:
                done[r["id"]] = r
            errors += errs
            bar.update(len(recs) + len([e for e in errs if not e.startswith("festival batch")]))

    if chunks and workers == 1:  # in-process: no pool start-up cost for small builds and resumes
        _worker_init()
        _collect(map(_run_chunk, chunks))
    elif chunks:
        with get_context("spawn").Pool(workers, initializer=_worker_init) as pool:
            _collect(pool.imap_unordered(_run_chunk, chunks))
    bar.close()
    if errors:
        warnings.warn(f"{len(errors)} utterances failed and were skipped (see summary.json); first: {errors[0]}")
    records = [done[u.id] for u in todo_plan if u.id in done]
    _write_manifests(out, records)
    summary = summarize(records, time.time() - t0, len(todo), errors, hours, seed)
    _atomic_write(out / "summary.json", json.dumps(summary, indent=2).encode())
    return summary


def _write_manifests(out: Path, records: list[dict]) -> None:
    _atomic_write(out / "manifest.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    for split in SPLIT_SHARE:
        rows = [r for r in records if r["split"] == split]
        _atomic_write(out / f"manifest.{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows).encode())


def summarize(records: list[dict], seconds: float, synthesised: int, errors: list[str], hours: float,
              seed: int) -> dict:
    per_split = {}
    for split in SPLIT_SHARE:
        rows = [r for r in records if r["split"] == split]
        per_split[split] = {"utterances": len(rows), "speakers": len({r["speaker"] for r in rows}),
                            "sentences": len({r["sentence_id"] for r in rows}),
                            "hours": round(sum(r["duration"] for r in rows) / 3600, 4)}
    per_synth = {s: round(sum(r["duration"] for r in records if r["synth"] == s) / 3600, 4) for s in SYNTH_SHARE}
    return {"requested_hours": hours, "seed": seed, "utterances": len(records),
            "hours": round(sum(r["duration"] for r in records) / 3600, 4), "splits": per_split,
            "hours_per_synth": per_synth, "synthesised_this_run": synthesised,
            "build_time_s": round(seconds, 1), "failures": len(errors), "failure_examples": errors[:20],
            "speakers_total": len({r["speaker"] for r in records})}


