"""Task templates: the one place that says how text and semantic tokens are laid out (DESIGN.md §6).

* TTS:          ``<|tts|> text <|audio_start|> s.. <|audio_end|>``        loss on ``s.. <|audio_end|>``
* ASR:          ``<|asr|> <|audio_start|> s.. <|audio_end|> text <eos>``  loss on ``text <eos>``
* continuation: ``<|continue|> <|audio_start|> s..``                      loss on ``s..`` after the first one
* interleaved:  ``<|interleave|> w.. <|audio_start|> s.. <|audio_end|> w.. ...``  loss on all after the task
  token: one utterance cut at word boundaries into spans of 1-4 words, alternately given as text and as
  the semantic tokens spoken over those words (word-level text/speech interleaving, after SpiritLM)

Every builder returns a :class:`Example`; ``labels`` is ``-100`` wherever no loss is taken, so only the
part the model generates at inference is learned. ``semantic_pos[i]`` is the position of the i-th
semantic token; the acoustic head reads the hidden state one position earlier (the step that sampled it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import accumulate

import torch
from torch import Tensor

from slm.layout import TokenLayout

IGNORE = -100
TASKS = ("tts", "asr", "continue", "interleave")


@dataclass
class Example:
    """One training / prompt sequence. ``input_ids`` and ``labels`` are ``[T]`` int64."""

    task: str
    input_ids: Tensor
    labels: Tensor
    semantic_pos: Tensor  # [Ts] positions of the semantic tokens in input_ids
    acoustic: Tensor | None = None  # [Ts, L] acoustic codes per semantic frame (L = r * Ka), or None

    def __len__(self) -> int:
        return int(self.input_ids.numel())


@dataclass
class Parsed:
    """What :func:`parse` recovers from a sequence."""

    task: str
    text: str
    codes: Tensor  # [Ts] semantic codes 0..K-1
    complete: bool = True  # False if the audio span was never closed
    extra: dict = field(default_factory=dict)


def _text_ids(tokenizer, text: str) -> list[int]:
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"text must be a non-empty string, got {text!r}")
    return tokenizer(text.strip(), add_special_tokens=False)["input_ids"]


def _semantic(codes: Tensor) -> Tensor:
    codes = torch.as_tensor(codes)
    if codes.dim() == 2 and codes.shape[0] == 1:  # [Ks=1, Ts]
        codes = codes[0]
    if codes.dim() != 1:
        raise ValueError(f"semantic codes must be [Ts] (or [1, Ts]), got shape {tuple(codes.shape)}")
    return codes.long()


def _build(task: str, parts: list[tuple[list[int] | Tensor, bool]], sem_start: int, n_sem: int,
           acoustic: Tensor | None) -> Example:
    ids, labels = [], []
    for chunk, learn in parts:
        chunk = torch.as_tensor(chunk, dtype=torch.long).tolist()
        ids += chunk
        labels += chunk if learn else [IGNORE] * len(chunk)
    if acoustic is not None and acoustic.shape[0] != n_sem:
        raise ValueError(f"acoustic frames {acoustic.shape[0]} != semantic frames {n_sem}")
    return Example(task, torch.tensor(ids), torch.tensor(labels), torch.arange(sem_start, sem_start + n_sem),
                   acoustic)


def tts_example(tokenizer, layout: TokenLayout, text: str, codes: Tensor, acoustic: Tensor | None = None,
                prompt_text: str | None = None, prompt_codes: Tensor | None = None) -> Example:
    """``<|tts|> [prompt_text] text <|audio_start|> [prompt s..] s.. <|audio_end|>``.

    The optional prompt (a voice reference: its transcript and codes) is never learned; it is how
    voice cloning by prompting works (VALL-E / Llasa style)."""
    codes = _semantic(codes)
    head = [layout.special_id("tts")] + (_text_ids(tokenizer, prompt_text) if prompt_text else [])
    head += _text_ids(tokenizer, text) + [layout.audio_start]
    pc = layout.codes_to_ids(_semantic(prompt_codes)) if prompt_codes is not None else torch.empty(0, dtype=torch.long)
    sem = layout.codes_to_ids(codes)
    return _build("tts", [(head, False), (pc, False), (sem, True), ([layout.audio_end], True)],
                  len(head) + len(pc), len(sem), acoustic)


def tts_prompt(tokenizer, layout: TokenLayout, text: str, prompt_text: str | None = None,
               prompt_codes: Tensor | None = None) -> Tensor:
    """The prefix fed to generation for TTS: everything up to (and with) the prompt codes. ``[T]``."""
    ex = tts_example(tokenizer, layout, text, torch.zeros(0, dtype=torch.long), None, prompt_text, prompt_codes)
    return ex.input_ids[:-1]  # drop <|audio_end|>


def asr_example(tokenizer, layout: TokenLayout, codes: Tensor, text: str, acoustic: Tensor | None = None) -> Example:
    codes = _semantic(codes)
    sem = layout.codes_to_ids(codes)
    head = [layout.special_id("asr"), layout.audio_start]
    tail = _text_ids(tokenizer, text) + [tokenizer.eos_token_id]
    return _build("asr", [(head, False), (sem, False), ([layout.audio_end], False), (tail, True)],
                  len(head), len(sem), acoustic)


def asr_prompt(tokenizer, layout: TokenLayout, codes: Tensor) -> Tensor:
    sem = layout.codes_to_ids(_semantic(codes))
    return torch.cat([torch.tensor([layout.special_id("asr"), layout.audio_start]), sem,
                      torch.tensor([layout.audio_end])])


def continuation_example(layout: TokenLayout, codes: Tensor, acoustic: Tensor | None = None) -> Example:
    codes = _semantic(codes)
    if codes.numel() < 2:
        raise ValueError(f"continuation needs at least 2 semantic frames, got {codes.numel()}")
    sem = layout.codes_to_ids(codes)
    head = [layout.special_id("continue"), layout.audio_start]
    return _build("continue", [(head, False), (sem[:1], False), (sem[1:], True)], len(head), len(sem), acoustic)


def continuation_prompt(layout: TokenLayout, codes: Tensor) -> Tensor:
    return continuation_example(layout, _semantic(codes)).input_ids


def interleave_example(tokenizer, layout: TokenLayout, words: list, codes: Tensor, duration: float,
                       rng, acoustic: Tensor | None = None, max_span: int = 4) -> Example | None:
    """Word-level interleaving of one utterance: spans of 1..``max_span`` words, alternately as text and as
    the semantic frames from the span's first word start to the next span's (the first span from 0, the
    last to the end, so every frame is in exactly one span). ``words``: ``[(start_s, end_s, word), ...]``
    as in the manifest; ``rng``: a ``random.Random`` (spans and the first modality). None when the
    utterance has fewer than two words or the layout has no ``<|interleave|>``."""
    if "<|interleave|>" not in layout.specials or len(words) < 2 or not duration > 0:
        return None
    codes = _semantic(codes)
    n = codes.numel()
    if acoustic is not None and acoustic.shape[0] != n:
        raise ValueError(f"acoustic frames {acoustic.shape[0]} != semantic frames {n}")
    spans, i = [], 0
    while i < len(words):
        k = rng.randint(1, max_span)
        spans.append(words[i : i + k])
        i += k
    starts = [min(n, max(0, round(float(sp[0][0]) / duration * n))) for sp in spans[1:]]
    cuts = list(accumulate([0, *starts, n], max))  # monotone
    sem_ids = layout.codes_to_ids(codes)
    ids, labels, sem_pos, frames = [layout.special_id("interleave")], [IGNORE], [], []
    speech = rng.random() < 0.5
    for j, sp in enumerate(spans):
        a, b = cuts[j], cuts[j + 1]
        if speech and b > a:
            chunk = [layout.audio_start] + sem_ids[a:b].tolist() + [layout.audio_end]
            sem_pos += range(len(ids) + 1, len(ids) + 1 + b - a)
            frames += range(a, b)
        else:  # text (also a speech turn whose words got no frames)
            chunk = tokenizer((" " if j else "") + " ".join(str(w[2]) for w in sp), add_special_tokens=False)["input_ids"]
        ids += chunk
        labels += chunk
        speech = not speech
    ac = acoustic[torch.tensor(frames, dtype=torch.long)] if acoustic is not None and frames else None
    return Example("interleave", torch.tensor(ids), torch.tensor(labels), torch.tensor(sem_pos, dtype=torch.long), ac)


def parse(ids: Tensor, layout: TokenLayout, tokenizer) -> Parsed:
    """Recover task, text and semantic codes from a sequence built by this module (round trip)."""
    ids = torch.as_tensor(ids).long().flatten()
    if ids.numel() == 0:
        raise ValueError("cannot parse an empty sequence")
    tasks = {layout.special_id(t): t for t in TASKS if f"<|{t}|>" in layout.specials}
    first = int(ids[0])
    if first not in tasks:
        raise ValueError(f"sequence must start with a task token {list(tasks)}, got id {first}")
    task = tasks[first]
    if task == "interleave":  # text spans joined; the codes of every speech span in order
        sem = layout.is_semantic(ids)
        marks = (ids == layout.audio_start) | (ids == layout.audio_end) | sem
        marks[0] = True
        text = tokenizer.decode(ids[~marks].tolist(), skip_special_tokens=False).strip()
        return Parsed(task, text, layout.ids_to_codes(ids[sem]),
                      complete=int((ids == layout.audio_start).sum()) == int((ids == layout.audio_end).sum()))
    pos = (ids == layout.audio_start).nonzero().flatten()
    if pos.numel() != 1:
        raise ValueError(f"expected exactly one <|audio_start|>, found {pos.numel()}")
    a = int(pos[0])
    ends = (ids == layout.audio_end).nonzero().flatten()
    b = int(ends[0]) if ends.numel() else ids.numel()
    codes = layout.ids_to_codes(ids[a + 1 : b])
    if task == "tts":
        text_ids = ids[1:a]
    elif task == "asr":
        text_ids = ids[b + 1 :]
        if text_ids.numel() and int(text_ids[-1]) == tokenizer.eos_token_id:
            text_ids = text_ids[:-1]
    else:
        text_ids = ids[:0]
    if not bool(layout.is_text(text_ids).all()):
        raise ValueError("non-text token inside a text span")
    text = tokenizer.decode(text_ids.tolist(), skip_special_tokens=False).strip()
    return Parsed(task, text, codes, complete=bool(ends.numel()))
