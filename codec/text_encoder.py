"""A small text encoder over a sentencepiece vocabulary, for SecoustiCodec's contrastive
frame-level speech-text alignment (arXiv 2508.02849; the paper's text branch is not released).

A crop's text comes either as a plain string (spread evenly over the crop's frames: no alignment
known) or as :class:`TimedText`, the crop's words with their times (from the synthesisers' word
alignments in the corpus manifests), which :func:`word_frame_index` maps onto the semantic frames.
"""
from __future__ import annotations

import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn


def train_text_tokenizer(sentences: Iterable[str], out_path: str | Path, vocab_size: int = 256) -> Path:
    """Train a unigram sentencepiece model on ``sentences`` and write it to ``out_path``.

    ``hard_vocab_limit=False`` lets a tiny corpus yield fewer pieces than asked instead of failing;
    read the real size back with ``TextTokenizer(out_path).vocab_size``.
    """
    import sentencepiece as spm

    sentences = [s.strip() for s in sentences if s and s.strip()]
    if not sentences:
        raise ValueError("train_text_tokenizer: no non-empty sentences given")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=buf, vocab_size=vocab_size, model_type="unigram",
        character_coverage=1.0, hard_vocab_limit=False, pad_id=0, unk_id=1, bos_id=-1, eos_id=-1,
        minloglevel=2,
    )
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(buf.getvalue())
    return out


@dataclass(frozen=True)
class TimedText:
    """The words of an audio crop, ``((start_s, end_s, word), ...)``, times in seconds from the crop
    start (a word cut by the crop edge keeps only its part inside the crop)."""

    words: tuple[tuple[float, float, str], ...]

    def __post_init__(self) -> None:
        words = tuple((float(a), float(b), str(w)) for a, b, w in self.words)
        for a, b, w in words:
            if not (math.isfinite(a) and math.isfinite(b)) or b < a:
                raise ValueError(f"TimedText word {w!r} needs finite times with start <= end, got ({a}, {b})")
        object.__setattr__(self, "words", words)

    @property
    def text(self) -> str:
        return " ".join(w for _, _, w in self.words)


def word_frame_index(words: Sequence[tuple[float, float, str]], n_frames: int, frame_s: float) -> Tensor:
    """``[T]`` long: for each frame, the index of the word whose span holds the frame's centre
    (``(t + 0.5) * frame_s``), or -1 when the centre falls between words (silence or padding)."""
    centres = (torch.arange(n_frames, dtype=torch.float64) + 0.5) * frame_s
    out = torch.full((n_frames,), -1, dtype=torch.long)
    for k, (a, b, _) in enumerate(words):
        out[(centres >= a) & (centres < b)] = k
    return out


class TextTokenizer:
    """sentencepiece model -> padded ids ``[B, L]`` (pad id 0) and a mask ``[B, L]``."""

    def __init__(self, model: str | Path | bytes) -> None:
        import sentencepiece as spm

        self.proto = Path(model).read_bytes() if not isinstance(model, bytes) else model
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode_words(self, words: list[str]) -> list[list[int]]:
        """One id list per word (a word encoded alone gets the same pieces as inside its sentence:
        sentencepiece never merges across the word-initial space)."""
        return [list(i) for i in self.sp.encode(list(words))] if words else []

    def __call__(self, texts: list[str], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        return self.pad([self.sp.encode(t) for t in texts], device)

    @staticmethod
    def pad(seqs: list[list[int]], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        """id lists -> ``[B, L]`` ids (pad 0; at most 512, an empty list becomes unk) and mask."""
        ids = [i[:512] or [1] for i in seqs]
        n = max(len(i) for i in ids)
        out = torch.zeros(len(ids), n, dtype=torch.long)
        for j, i in enumerate(ids):
            out[j, : len(i)] = torch.tensor(i)
        return out.to(device), (out != 0).to(device)


class TextEncoder(nn.Module):
    """ids ``[B, L]`` -> states ``[B, L, dim]`` (embedding + small transformer encoder)."""

    def __init__(self, vocab_size: int, dim: int, layers: int, max_len: int = 512) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_len, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, max(1, dim // 32), 2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        if int(ids.max()) >= self.embed.num_embeddings:
            raise ValueError(f"text id {int(ids.max())} outside the encoder vocabulary of "
                             f"{self.embed.num_embeddings}: the tokenizer does not match text_vocab_size")
        x = self.embed(ids) + self.pos[: ids.shape[1]]
        return self.encoder(x, src_key_padding_mask=~mask)
