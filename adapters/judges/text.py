"""English text normalisation and WER/CER for every ASR-based figure (one place, one definition).

Seed-TTS-eval strips punctuation and lowercases before jiwer; we do the same after spelling out
numbers, money, percentages, ordinals, years and common abbreviations with the corpus' own
normaliser (``adapters.corpus.text.normalise``, the rules that turned the corpus text into what the
synthesizers said), so "It costs $5." and "it costs five dollars" agree: Whisper may write digits
or words and neither is a recognition error.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

from adapters.corpus.text import normalise as spell_out


def normalize_text(text: str) -> str:
    """Lowercase, spell out numbers/currency/%/ordinals/abbreviations, drop punctuation, squeeze spaces.

    >>> normalize_text("It costs $5.")
    'it costs five dollars'
    """
    if not isinstance(text, str):
        raise TypeError(f"expected str, got {type(text).__name__}")
    t = unicodedata.normalize("NFKC", text).replace("\u2018", "'")
    t = spell_out(t).lower()
    t = t.replace("'", "")  # "don't" == "dont": apostrophe spelling is not a recognition error
    t = re.sub(r"[^a-z\s]", " ", t)  # hyphens and punctuation become word breaks
    return re.sub(r"\s+", " ", t).strip()


@dataclass
class ErrorRates:
    """Corpus-level error rates: total edits / total reference words (chars), not a mean of ratios."""

    wer: float
    cer: float
    n_words: int
    n_utts: int


def error_rates(references: list[str], hypotheses: list[str]) -> ErrorRates:
    """WER and CER of ``hypotheses`` against ``references`` after :func:`normalize_text`."""
    import jiwer

    if len(references) != len(hypotheses):
        raise ValueError(f"expected as many hypotheses as references, got {len(hypotheses)} vs {len(references)}")
    refs = [normalize_text(r) for r in references]
    hyps = [normalize_text(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r]  # jiwer rejects empty references
    if not keep:
        return ErrorRates(float("nan"), float("nan"), 0, 0)
    refs, hyps = [refs[i] for i in keep], [hyps[i] for i in keep]
    n_words = sum(len(r.split()) for r in refs)
    return ErrorRates(wer=float(jiwer.wer(refs, hyps)), cer=float(jiwer.cer(refs, hyps)),
                      n_words=n_words, n_utts=len(refs))


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate of one pair after normalisation."""
    return error_rates([reference], [hypothesis]).wer
