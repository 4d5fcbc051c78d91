"""Where codec codes live in the LLM vocabulary (DESIGN.md §6).

The backbone's text vocabulary ``0..base_vocab-1`` is kept as is. Appended after it:

* a contiguous block of semantic tokens ``<|s_0|>..<|s_{K-1}|>`` (ids ``semantic_offset + code``),
* the task / span specials ``<|audio_start|> <|audio_end|> <|tts|> <|asr|> <|continue|>`` and, in layouts
  made since word-level interleaving exists, ``<|interleave|>``.

Codes stay ``0..K-1`` inside ``codec``; this is the only place that adds or removes the offset
(Spark-TTS / Llasa / GLM-4-Voice extend the vocabulary the same way). The layout is written to
``token_layout.json`` next to every adapter so that a checkpoint can never be read with a shifted
vocabulary.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

LAYOUT_VERSION = 1
LAYOUT_FILE = "token_layout.json"
SPECIALS: tuple[str, ...] = ("<|audio_start|>", "<|audio_end|>", "<|tts|>", "<|asr|>", "<|continue|>")
# added to new layouts; older model dirs without it load unchanged (their runs cannot use the task)
OPTIONAL_SPECIALS: tuple[str, ...] = ("<|interleave|>",)


def semantic_token(code: int) -> str:
    return f"<|s_{code}|>"


@dataclass(frozen=True)
class TokenLayout:
    """The extended vocabulary: ``[text 0..base_vocab) [semantic K) [specials)``."""

    base_vocab: int  # text tokens of the backbone (len(tokenizer) before extension)
    n_semantic: int  # K: semantic codebook size of the codec
    specials: tuple[str, ...] = SPECIALS
    version: int = LAYOUT_VERSION
    # Row initialisation of the new embeddings: "mean" = every new row is the mean of the text rows,
    # deterministic, so a saved adapter re-applies on a freshly extended backbone bit for bit.
    init: str = "mean"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.base_vocab <= 0 or self.n_semantic <= 0:
            raise ValueError(f"base_vocab and n_semantic must be > 0, got {self.base_vocab}, {self.n_semantic}")
        missing = [s for s in SPECIALS if s not in self.specials]
        if missing:
            raise ValueError(f"token layout lacks required specials {missing}")

    # ---- ranges ---------------------------------------------------------------------------------------------
    @property
    def semantic_offset(self) -> int:
        return self.base_vocab

    @property
    def vocab_size(self) -> int:
        return self.base_vocab + self.n_semantic + len(self.specials)

    def new_tokens(self) -> list[str]:
        """Token strings to append, in id order."""
        return [semantic_token(i) for i in range(self.n_semantic)] + list(self.specials)

    def new_ids(self) -> list[int]:
        return list(range(self.base_vocab, self.vocab_size))

    def special_id(self, name: str) -> int:
        """Id of a special given as ``"tts"`` or ``"<|tts|>"``."""
        tok = name if name.startswith("<|") else f"<|{name}|>"
        if tok not in self.specials:
            raise KeyError(f"unknown special {name!r}; known: {list(self.specials)}")
        return self.base_vocab + self.n_semantic + self.specials.index(tok)

    @property
    def audio_start(self) -> int:
        return self.special_id("audio_start")

    @property
    def audio_end(self) -> int:
        return self.special_id("audio_end")

    # ---- code <-> id ----------------------------------------------------------------------------------------
    def codes_to_ids(self, codes: Tensor) -> Tensor:
        """Semantic codes ``0..K-1`` (any shape) -> vocabulary ids."""
        codes = torch.as_tensor(codes)
        if codes.is_floating_point():
            raise TypeError(f"semantic codes must be integers, got {codes.dtype}")
        if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= self.n_semantic):
            raise ValueError(f"semantic codes must be in 0..{self.n_semantic - 1}, got range "
                             f"{int(codes.min())}..{int(codes.max())} (codec/layout mismatch?)")
        return codes.long() + self.semantic_offset

    def ids_to_codes(self, ids: Tensor) -> Tensor:
        """Vocabulary ids of semantic tokens -> codes ``0..K-1``; any other id is an error."""
        ids = torch.as_tensor(ids).long()
        bad = ~self.is_semantic(ids)
        if bad.any():
            raise ValueError(f"ids {ids[bad][:8].tolist()} are not semantic tokens "
                             f"(expected {self.semantic_offset}..{self.semantic_offset + self.n_semantic - 1})")
        return ids - self.semantic_offset

    def is_semantic(self, ids: Tensor) -> Tensor:
        ids = torch.as_tensor(ids)
        return (ids >= self.semantic_offset) & (ids < self.semantic_offset + self.n_semantic)

    def is_text(self, ids: Tensor) -> Tensor:
        ids = torch.as_tensor(ids)
        return (ids >= 0) & (ids < self.base_vocab)

    # ---- vocabulary masks for constrained decoding ----------------------------------------------------------
    def audio_mask(self, vocab: int | None = None) -> Tensor:
        """``[V]`` bool: what may follow inside an audio span (semantic tokens + ``<|audio_end|>``)."""
        m = torch.zeros(vocab or self.vocab_size, dtype=torch.bool)
        m[self.semantic_offset : self.semantic_offset + self.n_semantic] = True
        m[self.audio_end] = True
        return m

    def text_mask(self, vocab: int | None = None, extra: tuple[int, ...] = ()) -> Tensor:
        """``[V]`` bool: text tokens only (plus ``extra`` ids, e.g. ``<|audio_start|>``)."""
        m = torch.zeros(vocab or self.vocab_size, dtype=torch.bool)
        m[: self.base_vocab] = True
        for i in extra:
            m[i] = True
        return m

    # ---- tokenizer ------------------------------------------------------------------------------------------
    @classmethod
    def for_tokenizer(cls, tokenizer, n_semantic: int) -> TokenLayout:
        """Layout for ``tokenizer`` (not yet extended) and a codec with ``n_semantic`` codes."""
        return cls(base_vocab=len(tokenizer), n_semantic=int(n_semantic), specials=SPECIALS + OPTIONAL_SPECIALS)

    def extend_tokenizer(self, tokenizer) -> None:
        """Add the new tokens to ``tokenizer`` in place and check they got the layout's ids."""
        if len(tokenizer) == self.vocab_size:
            self.check_tokenizer(tokenizer)
            return
        if len(tokenizer) != self.base_vocab:
            raise ValueError(f"tokenizer has {len(tokenizer)} tokens; the layout expects {self.base_vocab} "
                             f"(base) or {self.vocab_size} (extended)")
        tokenizer.add_tokens(self.new_tokens(), special_tokens=True)
        self.check_tokenizer(tokenizer)

    def check_tokenizer(self, tokenizer) -> None:
        ids = tokenizer.convert_tokens_to_ids([semantic_token(0), semantic_token(self.n_semantic - 1),
                                               *self.specials])
        want = [self.semantic_offset, self.semantic_offset + self.n_semantic - 1,
                *[self.special_id(s) for s in self.specials]]
        if ids != want:
            raise ValueError(f"tokenizer ids {ids} do not match the token layout {want}")

    # ---- save / load ----------------------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / LAYOUT_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        d = asdict(self)
        d["specials"] = list(self.specials)
        d["semantic_offset"] = self.semantic_offset  # informative; recomputed on load
        d["vocab_size"] = self.vocab_size
        path.write_text(json.dumps(d, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> TokenLayout:
        path = Path(path)
        if path.is_dir():
            path = path / LAYOUT_FILE
        if not path.exists():
            raise FileNotFoundError(f"no {LAYOUT_FILE} at {path}")
        d = json.loads(path.read_text())
        if d.get("version", 0) > LAYOUT_VERSION:
            raise ValueError(f"{path}: layout version {d['version']} is newer than supported {LAYOUT_VERSION}")
        layout = cls(base_vocab=d["base_vocab"], n_semantic=d["n_semantic"], specials=tuple(d["specials"]),
                     version=d.get("version", LAYOUT_VERSION), init=d.get("init", "mean"), extra=d.get("extra", {}))
        if "vocab_size" in d and d["vocab_size"] != layout.vocab_size:
            raise ValueError(f"{path}: vocab_size {d['vocab_size']} disagrees with the layout ({layout.vocab_size})")
        return layout
