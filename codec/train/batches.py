"""Training batches as a pure function of the step: exact resume needs no data-loader state.

Step ``s`` on rank ``r`` takes items ``perm_e[(k * world + r) * B : ...]`` of epoch ``e``'s
permutation (seeded by ``seed + e``) and crops each at a random multiple of the hop, drawn from a
generator seeded by ``(seed, s, r, i)``. Restarting at step ``s`` therefore replays exactly the
batches an uninterrupted run would have seen, with any number of loader workers.

Teacher features/units are read from their on-disk caches for the same crop (never computed here).
``codec.data.ManifestDataset`` draws crops from a process-global RNG, which cannot be replayed per
step; this module reuses its manifest reader and ``load_audio`` and only owns the step -> crop map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from codec.contracts import CodecTokens
from codec.modules.teacher import TeacherBatch
from codec.text_encoder import TimedText
from codec.train.teacher_cache import CacheReader

# Phone labels of silence in the synthesisers' alignments (espeak/flite/festival manifests).
SILENCE_PHONES = frozenset({"sil", "sp", "pau", "spn", "h#", "#", ""})


@dataclass
class CodecBatch:
    wav: Tensor                     # [B, 1, N] float32
    teacher: TeacherBatch | None    # features [B, Tt, D] / units [B, Ts] aligned to the crops
    texts: list[str | TimedText]   # the crop's timed words; the transcript when the row has no word times
    ids: list[str]
    starts: list[int]               # crop start sample per item
    # per item: the head tokens to decode instead of the codec's own (config ``head_tokens``), else None
    head: list[CodecTokens | None] | None = None


def collate_codec_batch(items: list[CodecBatch]) -> CodecBatch:
    """A DataLoader over :class:`StepBatches` yields one ready batch per index; unwrap it."""
    return items[0]


class StepBatches(Dataset):
    """``ds[step] -> CodecBatch`` for this rank. ``rows``: manifest rows with absolute ``path``."""

    def __init__(self, rows: list[dict], sample_rate: int, segment_samples: int, hop: int, batch_size: int,
                 seed: int = 0, features: CacheReader | None = None, units: CacheReader | None = None,
                 rank: int = 0, world: int = 1, steps: int = 1, head: HeadTokens | None = None,
                 head_prob: float = 0.0) -> None:
        if not rows:
            raise ValueError("no training utterances (empty manifest split)")
        if segment_samples % hop:
            raise ValueError(f"segment of {segment_samples} samples must be a multiple of the hop {hop}")
        per_step = batch_size * world
        if len(rows) < per_step:
            raise ValueError(f"{len(rows)} utterances cannot fill one step of batch {batch_size} x {world} ranks")
        self.rows, self.sr, self.seg, self.hop, self.b = rows, sample_rate, segment_samples, hop, batch_size
        self.seed, self.features, self.units, self.rank, self.world = seed, features, units, rank, world
        self.steps_per_epoch = len(rows) // per_step
        self.steps = steps
        self.head, self.head_prob = head, head_prob
        # rows with a transcript but no word times (old espeak rows): their crops fall back to the
        # whole transcript spread evenly over the frames
        self.untimed_rows = sum(1 for r in rows if r.get("text") and not r.get("words"))
        self._perm: tuple[int, Tensor] | None = None

    def __len__(self) -> int:
        return self.steps

    def indices(self, step: int) -> list[int]:
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._perm is None or self._perm[0] != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm = (epoch, torch.randperm(len(self.rows), generator=g))
        start = (k * self.world + self.rank) * self.b
        return self._perm[1][start : start + self.b].tolist()

    def _crop(self, wav: Tensor, rng: np.random.Generator) -> tuple[Tensor, int]:
        n = wav.shape[-1]
        if n <= self.seg:
            return torch.nn.functional.pad(wav, (0, self.seg - n)), 0
        start = self.hop * int(rng.integers(0, (n - self.seg) // self.hop + 1))
        return wav[:, start : start + self.seg], start

    def __getitem__(self, step: int) -> CodecBatch:
        from codec.audio import load_audio

        wavs, feats, units, texts, ids, starts, head = [], [], [], [], [], [], []
        for i, idx in enumerate(self.indices(step)):
            row = self.rows[idx]
            rng = np.random.default_rng([self.seed, step, self.rank, i])
            full = load_audio(row["path"], self.sr)
            w, s = self._crop(full, rng)
            if self.head is not None:  # drawn after the crop: the crops are those of a run without head tokens
                use = rng.random() < self.head_prob and full.shape[-1] > self.seg and self.head.has(row["id"])
                head.append(self.head.crop(row["id"], s, self.seg) if use else None)
            wavs.append(w)
            starts.append(s)
            ids.append(row["id"])
            texts.append(crop_words(row, s / self.sr, self.seg / self.sr))
            if self.features is not None:
                feats.append(self.features.crop(row["id"], s, self.seg).float())
            if self.units is not None:
                units.append(self.units.crop(row["id"], s, self.seg).long())
        teacher = None
        if self.features is not None or self.units is not None:
            teacher = TeacherBatch(
                features=torch.stack(feats) if feats else None,
                units=torch.stack(units) if units else None,
                feature_rate=self.features.frame_rate if self.features is not None else 50.0,
            )
        return CodecBatch(torch.stack(wavs), teacher, texts, ids, starts, head if self.head is not None else None)


class HeadTokens:
    """A token dir (``index.jsonl`` + ``items/<id>.safetensors``, as ``slm head-tokens`` and ``slm codec
    tokenize`` write it), held in memory, cropped to training crops. ``semantic_hop``: samples per
    semantic frame of the codec that made the tokens."""

    def __init__(self, token_dir: str | Path, semantic_hop: int) -> None:
        import json

        d = Path(token_dir)
        if not (d / "index.jsonl").is_file():
            raise FileNotFoundError(f"{d} holds no index.jsonl: make it with `slm head-tokens MODEL --manifest ... "
                                    f"--out {d}`")
        self.dir, self.hop = d, semantic_hop
        self.index = {}
        for line in (d / "index.jsonl").read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                self.index[rec["id"]] = d / rec["tokens"]
        self._cache: dict[str, CodecTokens] = {}

    def __len__(self) -> int:
        return len(self.index)

    def has(self, uid: str) -> bool:
        return uid in self.index

    def tokens(self, uid: str) -> CodecTokens:
        if uid not in self._cache:
            self._cache[uid] = CodecTokens.load(self.index[uid])
        return self._cache[uid]

    def crop(self, uid: str, start: int, n: int) -> CodecTokens:
        """Tokens of samples ``[start, start + n)``; both must be whole semantic frames."""
        if start % self.hop or n % self.hop:
            raise ValueError(f"crop [{start}, {start + n}) is not on the {self.hop}-sample semantic grid")
        t, a, f = self.tokens(uid), start // self.hop, n // self.hop
        if t.semantic.shape[-1] < a + f:
            raise ValueError(f"{self.index[uid]}: {t.semantic.shape[-1]} semantic frames cannot hold frames "
                             f"[{a}, {a + f}): the tokens are not of this utterance's audio")
        r = t.acoustic.shape[-1] // t.semantic.shape[-1]
        return CodecTokens(semantic=t.semantic[..., a : a + f], acoustic=t.acoustic[..., a * r : (a + f) * r],
                           global_=t.global_)


def crop_words(row: dict, start_s: float, dur_s: float) -> TimedText | str:
    """The words overlapping the crop ``[start_s, start_s + dur_s)`` with times relative to the crop
    (cut at its edges), or the whole transcript when the row has no word times.

    Word ends are first extended over the non-silence phones that follow them up to the next word
    (:func:`snap_word_ends`): espeak's word marks stop before each word's last phone.
    """
    words = row.get("words") or []
    if not words:
        return row.get("text") or ""
    end = start_s + dur_s
    return TimedText(tuple((max(a, start_s) - start_s, min(b, end) - start_s, w)
                           for a, b, w in snap_word_ends(words, row.get("phones") or []) if a < end and b > start_s))


def snap_word_ends(words: list, phones: list, eps: float = 1e-4) -> list[tuple[float, float, str]]:
    """Extend each word's end across the contiguous non-silence phones that start at (or straddle)
    it, never past the next word's start. In data/synth2h espeak's word marks hold 2877 s of its
    3342 s of non-silence phones (5044 of 6103 gaps > 20 ms between words lie inside the word's last
    phone); snapped, they hold 3339 s. flite's marks meet their phones already, festival's in all
    but 5 gaps."""
    out = []
    for k, (a, b, w) in enumerate(words):
        a, b = float(a), float(b)
        stop = float(words[k + 1][0]) if k + 1 < len(words) else float("inf")
        for pa, pb, ph in phones:
            if pa <= b + eps and pb > b + eps and str(ph).lower() not in SILENCE_PHONES and pb <= stop + eps:
                b = float(pb)
        out.append((a, b, w))
    return out


def read_rows(manifest: str, split: str | None) -> list[dict]:
    """Manifest rows of one split (all when ``split`` is None) with absolute audio ``path``s."""
    from codec.data import read_manifest, resolve_path

    rows = [r for r in read_manifest(manifest) if split is None or r.get("split") == split]
    for r in rows:
        r["path"] = str(resolve_path(r))
    return rows


def crop_hop(model_semantic_hop: int, sample_rate: int, *caches: CacheReader | None) -> int:
    """Crop starts must be whole frames of the codec's semantic grid and of every cache."""
    hop = model_semantic_hop
    for c in caches:
        if c is None:
            continue
        if c.sample_rate != sample_rate:
            raise ValueError(f"{c.cache_dir} was computed at {c.sample_rate} Hz, the codec runs at {sample_rate} Hz")
        h = sample_rate / c.frame_rate
        if abs(h - round(h)) > 1e-6:
            raise ValueError(f"{c.cache_dir}: frame rate {c.frame_rate} Hz is not a whole number of samples")
        hop = math.lcm(hop, round(h))
    return hop
