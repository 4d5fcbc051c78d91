"""What every evaluation reads: manifest items of one split, their audio, codecs and their teachers."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor


@dataclass
class EvalItem:
    id: str
    wav: Tensor  # [1, N] float32 at ``sample_rate``
    sample_rate: int
    text: str
    speaker: str
    synth: str
    phones: list = field(default_factory=list)
    words: list = field(default_factory=list)  # [(start_s, end_s, word), ...] where the manifest has them


def load_items(manifest: str | Path, split: str | None = "test", limit: int | None = None,
               sample_rate: int = 16000) -> list[EvalItem]:
    """Items of ``split`` (``None``: all), at most ``limit`` spread evenly over synthesizers.

    The limit keeps every synthesizer represented (round-robin over ``synth``) so a short run still
    gives a per-synthesizer breakdown; the order inside a synthesizer is the manifest's.
    """
    from codec.audio import load_audio
    from codec.data import read_manifest, resolve_path

    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 item, got {limit}")
    recs = read_manifest(manifest)
    if split is not None:
        recs = [r for r in recs if r.get("split", "test") == split]
    if not recs:
        raise ValueError(f"{manifest}: expected items with split={split!r}, got none")
    if limit is not None and limit < len(recs):
        groups: dict[str, list[dict]] = {}
        for r in recs:
            groups.setdefault(str(r.get("synth", "")), []).append(r)
        picked, i = [], 0
        while len(picked) < limit:
            for g in groups.values():
                if i < len(g) and len(picked) < limit:
                    picked.append(g[i])
            i += 1
        recs = picked
    return [EvalItem(id=str(r["id"]), wav=load_audio(resolve_path(r), sample_rate), sample_rate=sample_rate,
                     text=str(r.get("text", "")), speaker=str(r.get("speaker", "")),
                     synth=str(r.get("synth", "real")), phones=r.get("phones") or [],
                     words=r.get("words") or [])
            for r in recs]


class LoadedCodec:
    """A codec checkpoint plus, for variants that encode with their teacher (sac), that teacher."""

    def __init__(self, path: str | Path, teacher_spec: str | None = None) -> None:
        from codec.model import DualStreamCodec

        self.path = Path(path)
        self.model = DualStreamCodec.from_pretrained(self.path).eval()
        self.name = self.path.name
        self._teacher_spec = teacher_spec
        self._teacher = None

    @property
    def teacher_spec(self) -> str:
        if self._teacher_spec:
            return self._teacher_spec
        info = self.path / "training.json"
        spec = json.loads(info.read_text()).get("teacher_spec") if info.exists() else None
        return spec or "whisper-base-ct2"

    @property
    def teacher(self):
        if self._teacher is None:
            from adapters.teachers import load_teacher

            self._teacher = load_teacher(self.teacher_spec)
        return self._teacher

    def teacher_batch(self, wav: Tensor):
        if not self.model.needs_teacher_at_encode:
            return None
        from adapters.kmeans import teacher_batch_for

        return teacher_batch_for(self.model, self.teacher, wav)

    @torch.no_grad()
    def encode(self, wav: Tensor):
        """``wav [1, N]`` or ``[B, 1, N]`` at the codec rate -> ``CodecTokens``."""
        x = wav if wav.dim() == 3 else wav[None]
        return self.model.encode(x, teacher=self.teacher_batch(x))

    @torch.no_grad()
    def reconstruct(self, wav: Tensor) -> Tensor:
        """``wav [1, N]`` -> reconstruction ``[1, N]`` (trimmed to the input length)."""
        return self.model.decode(self.encode(wav))[0, :, : wav.shape[-1]]
