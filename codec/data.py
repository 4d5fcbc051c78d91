"""Speech data for codec and LM training: JSONL manifests, a crop/whole-utterance dataset, loaders.

Manifest: one JSON object per line with at least ``id`` and ``path`` (relative to the manifest's
directory, or absolute); optional ``text``, ``speaker``, ``split``, ``duration``, ``num_samples``,
``sample_rate``, ``phones``, ``words`` (the synthetic corpus schema, see ``adapters.corpus.build``).

:class:`ManifestDataset` loads through :func:`codec.audio.load_audio` (resampled, down-mixed), so any
readable file works. A file that cannot be used (missing, corrupt, empty, NaN) is skipped: the
dataset returns the next good item, counts it in ``skipped`` / ``bad_ids`` and warns once, so an
epoch never crashes half-way. (With DataLoader workers each worker process keeps its own counter.)

Loaders turn other layouts into manifest records: LibriSpeech / LibriTTS folders
(:func:`libri_records`) and a Hugging Face ``datasets`` audio dataset (:func:`hf_dataset_records`).
"""
from __future__ import annotations

import json
import os
import random
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from .audio import AudioError, load_audio, save_audio


def read_manifest(path: str | Path) -> list[dict]:
    """Records of a JSONL manifest; each gets ``_root`` (the manifest's directory) for relative paths."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path}: expected a JSONL file, got no such file")
    recs = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: expected one JSON object per line, got invalid JSON ({e})") from e
        if "id" not in r or "path" not in r:
            raise ValueError(f"{path}:{n}: expected fields 'id' and 'path', got {sorted(r)}")
        r["_root"] = str(path.parent)
        recs.append(r)
    return recs


def write_manifest(path: str | Path, records: Iterable[dict]) -> None:
    """Write records as JSONL atomically (``_``-prefixed private keys are dropped)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.writelines(json.dumps({k: v for k, v in r.items() if not k.startswith("_")}) + "\n" for r in records)
    os.replace(tmp, path)


def resolve_path(rec: dict) -> Path:
    p = Path(rec["path"])
    return p if p.is_absolute() else Path(rec.get("_root", ".")) / p


@dataclass
class Utterance:
    """One item: ``wav`` is ``[1, N]`` float32; ``length`` valid samples (the rest is zero padding)."""

    wav: Tensor
    id: str
    start: int  # first sample of the crop within the utterance
    length: int
    text: str
    speaker: str


@dataclass
class Batch:
    wav: Tensor  # [B, 1, N] zero-padded
    lengths: Tensor  # [B] int64 valid samples
    starts: Tensor  # [B] int64 crop starts (samples)
    ids: list[str]
    texts: list[str]
    speakers: list[str]


class ManifestDataset(Dataset):
    """Random crops (``segment_seconds``) for codec training, or whole utterances (``None``) for the LM.

    Crop starts are multiples of ``align_hop`` samples so teacher frames cached per utterance line up
    with the crop (frame ``start // align_hop``). Clips shorter than a segment are zero-padded and
    ``length`` says how many samples are real. Crops are random per (seed, epoch, index) when
    ``random_crop`` and start at 0 otherwise.
    """

    def __init__(self, manifest: str | Path | list[dict], sample_rate: int = 16000,
                 segment_seconds: float | None = 1.0, align_hop: int = 1, split: str | None = None,
                 random_crop: bool = True, seed: int = 0, max_seconds: float | None = None) -> None:
        recs = read_manifest(manifest) if isinstance(manifest, (str, Path)) else list(manifest)
        if split is not None:
            recs = [r for r in recs if r.get("split") == split]
        if not recs:
            raise ValueError(f"ManifestDataset: expected at least one record (split={split!r}), got none")
        if align_hop < 1:
            raise ValueError(f"align_hop: expected >= 1 samples, got {align_hop}")
        if segment_seconds is not None and segment_seconds <= 0:
            raise ValueError(f"segment_seconds: expected > 0 or None, got {segment_seconds}")
        self.records, self.sample_rate, self.align_hop = recs, sample_rate, align_hop
        self.segment = None if segment_seconds is None else round(segment_seconds * sample_rate)
        self.random_crop, self.seed, self.epoch, self.max_seconds = random_crop, seed, 0, max_seconds
        self.skipped = 0
        self.bad_ids: set[str] = set()
        self._warned = False

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _load(self, i: int) -> Tensor:
        rec = self.records[i]
        return load_audio(resolve_path(rec), self.sample_rate, max_seconds=self.max_seconds)

    def __getitem__(self, i: int) -> Utterance:
        for k in range(len(self.records)):
            j = (i + k) % len(self.records)
            if self.records[j]["id"] in self.bad_ids:
                continue
            try:
                wav = self._load(j)
            except (AudioError, OSError, RuntimeError) as e:
                self._mark_bad(j, e)
                continue
            return self._crop(j, wav)
        raise RuntimeError(f"ManifestDataset: expected a readable file, got {self.skipped} unreadable of "
                           f"{len(self.records)} (all bad)")

    def _mark_bad(self, j: int, err: Exception) -> None:
        self.skipped += 1
        self.bad_ids.add(self.records[j]["id"])
        if not self._warned:
            self._warned = True
            warnings.warn(f"skipping unreadable audio (counted in dataset.skipped; further ones silent): {err}")

    def _crop(self, j: int, wav: Tensor) -> Utterance:
        rec, n = self.records[j], wav.shape[-1]
        start = 0
        if self.segment is not None:
            room = (n - self.segment) // self.align_hop
            if room > 0 and self.random_crop:
                start = random.Random(f"{self.seed}:{self.epoch}:{j}").randint(0, room) * self.align_hop
            wav = wav[:, start:start + self.segment]
            length = wav.shape[-1]
            if length < self.segment:
                wav = torch.nn.functional.pad(wav, (0, self.segment - length))
        else:
            length = n
        return Utterance(wav=wav, id=rec["id"], start=start, length=length, text=rec.get("text", ""),
                         speaker=rec.get("speaker", ""))


def collate(items: list[Utterance]) -> Batch:
    """Stack utterances into ``[B, 1, N]`` (zero-padded to the longest) with their valid lengths."""
    if not items:
        raise ValueError("collate: expected at least one item, got an empty list")
    n = max(u.wav.shape[-1] for u in items)
    wav = torch.zeros(len(items), 1, n)
    for b, u in enumerate(items):
        wav[b, :, : u.wav.shape[-1]] = u.wav
    return Batch(wav=wav, lengths=torch.tensor([u.length for u in items]),
                 starts=torch.tensor([u.start for u in items]), ids=[u.id for u in items],
                 texts=[u.text for u in items], speakers=[u.speaker for u in items])


def _info(path: Path) -> tuple[int, int] | None:
    import soundfile as sf

    try:
        i = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError):
        return None
    return i.frames, i.samplerate


def libri_records(root: str | Path, *, split: str = "train", normalized: bool = True) -> list[dict]:
    """Records from a LibriSpeech (``spk/chap/spk-chap.trans.txt`` + ``.flac``) or LibriTTS
    (``spk/chap/*.wav`` + ``*.normalized.txt`` / ``*.original.txt``) folder. Paths are absolute;
    unreadable audio and utterances without a transcript are skipped (warned once with the count)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: expected a LibriSpeech/LibriTTS folder, got no such directory")
    texts: dict[str, tuple[str, Path]] = {}
    for trans in root.rglob("*.trans.txt"):  # LibriSpeech
        for line in trans.read_text().splitlines():
            if " " in line:
                uid, t = line.split(" ", 1)
                texts[uid] = (t.strip(), trans.parent / f"{uid}.flac")
    suffix = ".normalized.txt" if normalized else ".original.txt"
    for tf in root.rglob(f"*{suffix}"):  # LibriTTS
        uid = tf.name[: -len(suffix)]
        texts[uid] = (tf.read_text().strip(), tf.with_name(uid + ".wav"))
    recs, skipped = [], 0
    for uid in sorted(texts):
        t, p = texts[uid]
        info = _info(p) if p.exists() else None
        if info is None or info[0] == 0:
            skipped += 1
            continue
        sep = "-" if "-" in uid else "_"
        recs.append({"id": uid, "path": str(p.resolve()), "text": t, "speaker": uid.split(sep)[0],
                     "split": split, "sample_rate": info[1], "num_samples": info[0],
                     "duration": round(info[0] / info[1], 5)})
    if not recs and not skipped:
        raise ValueError(f"{root}: expected LibriSpeech *.trans.txt or LibriTTS *{suffix} files, found none")
    if skipped:
        warnings.warn(f"libri_records: skipped {skipped} utterances with missing/unreadable audio under {root}")
    return recs


def hf_dataset_records(ds: Any, out_dir: str | Path, *, audio_column: str = "audio", text_column: str = "text",
                       speaker_column: str | None = None, id_column: str | None = None, split: str = "train",
                       sample_rate: int = 16000) -> list[dict]:
    """Write a Hugging Face ``datasets.Dataset`` with an ``Audio`` column as 16-bit wavs under
    ``out_dir/wavs`` (resampled, mono) and return manifest records (paths relative to ``out_dir``).

    The column is read undecoded (bytes/path) and decoded here, so no optional decoder backend is
    needed; rows whose audio cannot be decoded are skipped (warned once with the count).
    """
    from datasets import Audio

    if audio_column not in ds.column_names:
        raise ValueError(f"hf_dataset_records: expected audio column {audio_column!r}, got {ds.column_names}")
    ds = ds.cast_column(audio_column, Audio(decode=False))
    out = Path(out_dir)
    (out / "wavs").mkdir(parents=True, exist_ok=True)
    recs, skipped = [], 0
    for i, row in enumerate(ds):
        a = row[audio_column] or {}
        uid = str(row[id_column]) if id_column else f"{split}-{i:07d}"
        dst = out / "wavs" / f"{uid}.wav"
        try:
            src = a.get("path") if not a.get("bytes") else None
            if src is None:
                tmp = out / "wavs" / f".{uid}.src"
                tmp.write_bytes(a.get("bytes") or b"")
                src = tmp
            try:
                wav = load_audio(src, sample_rate)
            finally:
                if src != a.get("path"):
                    Path(src).unlink(missing_ok=True)
        except (AudioError, OSError, TypeError) as e:
            skipped += 1
            if skipped == 1:
                first = e
            continue
        save_audio(dst, wav, sample_rate)
        recs.append({"id": uid, "path": f"wavs/{uid}.wav", "text": str(row.get(text_column, "") or ""),
                     "speaker": str(row[speaker_column]) if speaker_column else "", "split": split,
                     "sample_rate": sample_rate, "num_samples": wav.shape[-1],
                     "duration": round(wav.shape[-1] / sample_rate, 5)})
    if skipped:
        warnings.warn(f"hf_dataset_records: skipped {skipped} rows with undecodable audio (first: {first})")
    return recs


__all__ = [
    "Batch",
    "ManifestDataset",
    "Utterance",
    "collate",
    "hf_dataset_records",
    "libri_records",
    "read_manifest",
    "resolve_path",
    "write_manifest",
]
