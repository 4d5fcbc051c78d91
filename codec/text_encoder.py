"""A small text encoder over a sentencepiece vocabulary, for SecoustiCodec's contrastive
frame-level speech-text alignment (arXiv 2508.02849; the paper's text branch is not released)."""
from __future__ import annotations

import io
from collections.abc import Iterable
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


class TextTokenizer:
    """sentencepiece model -> padded ids ``[B, L]`` (pad id 0) and a mask ``[B, L]``."""

    def __init__(self, model: str | Path | bytes) -> None:
        import sentencepiece as spm

        self.proto = Path(model).read_bytes() if not isinstance(model, bytes) else model
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def __call__(self, texts: list[str], device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
        ids = [self.sp.encode(t)[:512] or [1] for t in texts]
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
