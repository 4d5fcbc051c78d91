"""Task templates: the one place that says how text and semantic tokens are laid out (DESIGN.md §6).

* TTS:          ``<|tts|> text <|audio_start|> s.. <|audio_end|>``        loss on ``s.. <|audio_end|>``
* ASR:          ``<|asr|> <|audio_start|> s.. <|audio_end|> text <eos>``  loss on ``text <eos>``
* aligned TTS:  ``<|tts|> text <|audio_start|> w1 s.. w2 s.. <|audio_end|>``  loss on ``s..``, on the first
  token of ``w2..`` (when to move to the next word) and ``<|audio_end|>``: the TTS task with each word's
  text placed before the frames spoken over it (word times from the manifest; after ELLA-V), so the model
  maps the word it just read to its frames instead of learning a whole-sentence alignment
  With ``phones`` each ``w`` is followed by its phones as text (``" hello ( hh ah l ow )"``, the
  phone-bridged form: phones from the manifest in training, from espeak-ng's G2P at inference), so the
  model maps sounds rather than spellings to frames
* aligned ASR:  ``<|asr|> <|audio_start|> s.. w1 s.. w2 .. wN <|audio_end|>``  loss on ``w..``, on the frames
  after the first and ``<|audio_end|>``: ASR with each word's text right after the frames spoken over it, so a
  word is read from the few frames just before it and the transcript streams out as the audio comes in (the
  model tells a word's end by putting its mass on text rather than on the next frame)
* continuation: ``<|continue|> <|audio_start|> s..``                      loss on ``s..`` after the first one
* interleaved:  ``<|interleave|> w.. <|audio_start|> s.. <|audio_end|> w.. ...``  loss on all after the task
  token: one utterance cut at word boundaries into spans of 1-4 words, alternately given as text and as
  the semantic tokens spoken over those words (word-level text/speech interleaving, after SpiritLM)

Every builder returns a :class:`Example`; ``labels`` is ``-100`` wherever no loss is taken, so only the
part the model generates at inference is learned. ``semantic_pos[i]`` is the position of the i-th
semantic token; the acoustic head reads the hidden state one position earlier (the step that sampled it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from itertools import accumulate

import torch
from torch import Tensor

from slm.layout import TokenLayout

IGNORE = -100
_WORD_RE = re.compile(r"[a-z0-9']+")
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


def word_ids(tokenizer, words: list[str], phones: list[list[str]] | None = None) -> list[list[int]]:
    """Token ids of each word as it is spoken inside an aligned TTS span (a leading space, as mid-text).

    ``phones`` (one list per word, ARPAbet-39 labels): the phone-bridged form, each word followed by its
    phones as text, ``" hello ( hh ah l ow )"``; the model then maps phones, not spellings, to frames."""
    if phones is not None and len(phones) != len(words):
        raise ValueError(f"{len(phones)} phone lists for {len(words)} words")
    text = [" " + str(w).strip() for w in words]
    if phones is not None:
        text = [t + phone_text(p) for t, p in zip(text, phones)]
    out = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in text]
    if not words or not all(str(w).strip() for w in words):
        raise ValueError(f"aligned TTS needs non-empty words, got {words!r}")
    return out


def phone_text(phones: list[str]) -> str:
    """How a word's phones are written after it in the phone-bridged aligned TTS form."""
    return " ( " + " ".join(phones) + " )"


def word_phones(words: list, phones: list) -> list[list[str]]:
    """The phones each word entry owns, from the manifest's exact phone segments: those whose midpoint lies
    from the word's start to the next word's (the first word from 0, the last to the end: the split
    :func:`word_frames` makes of the frames); ``sil`` left out. ``words``: ``[(start_s, end_s, word), ..]``,
    ``phones``: ``[(start_s, end_s, label), ..]``."""
    out = []
    for k in range(len(words)):
        lo = float(words[k][0]) - 1e-4 if k else float("-inf")
        hi = float(words[k + 1][0]) - 1e-4 if k + 1 < len(words) else float("inf")
        out.append([str(p[2]) for p in phones if p[2] != "sil" and lo <= (float(p[0]) + float(p[1])) / 2 < hi])
    return out


def with_phones(words: list | None, phones: list | None) -> list | None:
    """Word entries ``[start_s, end_s, word, phones]``: each word carries its phones (:func:`word_phones`),
    the form the phone-bridged aligned TTS examples are built from. Unchanged without phones."""
    if not words or not phones:
        return words
    return [[*w[:3], p] for w, p in zip(words, word_phones(words, phones))]


def split_words(text: str) -> list[str]:
    """The words of a sentence as the corpus' word times name them: lower case, no punctuation, hyphens
    split (the manifest's ``words``; ``"seventy-six"`` -> ``seventy``, ``six``)."""
    return _WORD_RE.findall(text.lower())


def word_frames(words: list, n: int, duration: float) -> list[int]:
    """``cuts`` (``len(words) + 1``): word ``k`` owns frames ``[cuts[k], cuts[k+1])``, the first from 0 and the
    last to ``n``; a word starts at the frame of its start time, moved just enough that every word gets
    at least one frame (needs ``n >= len(words)``)."""
    m = len(words)
    if n < m:
        raise ValueError(f"{m} words need at least {m} frames, got {n}")
    cuts = [0]
    for k in range(1, m):
        cuts.append(min(max(round(float(words[k][0]) / duration * n), cuts[-1] + 1), n - (m - k)))
    return cuts + [n]


def _aligned_span(tokenizer, layout: TokenLayout, words: list, codes: Tensor, duration: float,
                  acoustic: Tensor | None, phones: bool = False) -> tuple[list[int], list[int], list[list[int]]] | None:
    """What both aligned forms are built from: the frames' ids, :func:`word_frames` cuts and each word's token
    ids (with its phones when ``phones`` and every entry carries them, :func:`with_phones`); None when there
    are no word times or fewer frames than words."""
    codes = _semantic(codes)
    n = codes.numel()
    if not words or not duration > 0 or n < len(words):
        return None
    if acoustic is not None and acoustic.shape[0] != n:
        raise ValueError(f"acoustic frames {acoustic.shape[0]} != semantic frames {n}")
    ph = [list(w[3]) for w in words] if phones and all(len(w) > 3 for w in words) else None
    return (layout.codes_to_ids(codes).tolist(), word_frames(words, n, duration),
            word_ids(tokenizer, [w[2] for w in words], ph))


def tts_aligned_example(tokenizer, layout: TokenLayout, text: str, words: list, codes: Tensor, duration: float,
                        acoustic: Tensor | None = None, prompt_text: str | None = None,
                        prompt_codes: Tensor | None = None, phones: bool = False) -> Example | None:
    """``<|tts|> [prompt_text] text <|audio_start|> [prompt s..] w1 s.. w2 s.. <|audio_end|>``: TTS with each
    word's tokens before the frames spoken over it. ``words``: ``[(start_s, end_s, word), ...]`` (manifest);
    a manifest entry may hold several words. None when there are no word times or fewer frames than words.
    ``phones``: the phone-bridged form, each ``w`` followed by its phones (entries from :func:`with_phones`;
    entries without phones give the plain aligned form)."""
    aligned = _aligned_span(tokenizer, layout, words, codes, duration, acoustic, phones)
    if aligned is None:
        return None
    sem, cuts, word_tokens = aligned
    head = [layout.special_id("tts")] + (_text_ids(tokenizer, prompt_text) if prompt_text else [])
    head += _text_ids(tokenizer, text) + [layout.audio_start]
    pc = layout.codes_to_ids(_semantic(prompt_codes)).tolist() if prompt_codes is not None else []
    ids, labels, pos = head + pc, [IGNORE] * (len(head) + len(pc)), []
    for k, w in enumerate(word_tokens):
        ids += w
        labels += ([w[0]] if k else [IGNORE]) + [IGNORE] * (len(w) - 1)  # learn only when to move on
        a, b = cuts[k], cuts[k + 1]
        pos += range(len(ids), len(ids) + b - a)
        ids += sem[a:b]
        labels += sem[a:b]
    ids.append(layout.audio_end)
    labels.append(layout.audio_end)
    return Example("tts", torch.tensor(ids), torch.tensor(labels), torch.tensor(pos, dtype=torch.long), acoustic)


def asr_example(tokenizer, layout: TokenLayout, codes: Tensor, text: str, acoustic: Tensor | None = None) -> Example:
    codes = _semantic(codes)
    sem = layout.codes_to_ids(codes)
    head = [layout.special_id("asr"), layout.audio_start]
    tail = _text_ids(tokenizer, text) + [tokenizer.eos_token_id]
    return _build("asr", [(head, False), (sem, False), ([layout.audio_end], False), (tail, True)],
                  len(head), len(sem), acoustic)


def asr_aligned_example(tokenizer, layout: TokenLayout, words: list, codes: Tensor, duration: float,
                        acoustic: Tensor | None = None) -> Example | None:
    """``<|asr|> <|audio_start|> s.. w1 s.. w2 .. s.. wN <|audio_end|>``: ASR with each word's tokens right after
    the frames it owns (:func:`word_frames`: from its start to the next word's; the last to the end).
    ``words``: ``[(start_s, end_s, word), ...]`` (manifest). None when there are no word times or fewer
    frames than words."""
    aligned = _aligned_span(tokenizer, layout, words, codes, duration, acoustic)
    if aligned is None:
        return None
    sem, cuts, word_tokens = aligned
    return asr_aligned_from_cuts(layout, sem, cuts, word_tokens, acoustic)


def asr_aligned_from_cuts(layout: TokenLayout, sem: list[int], cuts: list[int], word_tokens: list[list[int]],
                          acoustic: Tensor | None = None) -> Example:
    """:func:`asr_aligned_example` from its parts: the frames' ids ``sem``, ``cuts`` (word ``k`` owns frames
    ``[cuts[k], cuts[k+1])``; an empty span puts the word right after the one before) and each word's token ids.
    What scoring a transcript of generated or recognised tokens in this form builds
    (``SpeechPipeline.aligned_asr_scores``)."""
    ids = [layout.special_id("asr"), layout.audio_start]
    labels, pos = [IGNORE] * len(ids), []
    for k, w in enumerate(word_tokens):
        a, b = cuts[k], cuts[k + 1]
        pos += range(len(ids), len(ids) + b - a)
        ids += sem[a:b]
        if b > a:
            labels += ([IGNORE] if a == 0 else [sem[a]]) + sem[a + 1 : b]  # the first frame has nothing before it
        ids += w
        labels += w
    ids.append(layout.audio_end)
    labels.append(layout.audio_end)
    return Example("asr", torch.tensor(ids), torch.tensor(labels), torch.tensor(pos, dtype=torch.long), acoustic)


def asr_prompt(tokenizer, layout: TokenLayout, codes: Tensor) -> Tensor:
    sem = layout.codes_to_ids(_semantic(codes))
    return torch.cat([torch.tensor([layout.special_id("asr"), layout.audio_start]), sem,
                      torch.tensor([layout.audio_end])])


def continuation_example(layout: TokenLayout, codes: Tensor, acoustic: Tensor | None = None) -> Example:
    codes = _semantic(codes)
    if codes.numel() < 2:
        raise ValueError(f"continuation needs at least 2 semantic frames, got {codes.numel()}")
    sem = layout.codes_to_ids(codes)
    head = _continue_head(layout)
    return _build("continue", [(head, False), (sem[:1], False), (sem[1:], True)], len(head), len(sem), acoustic)


def continuation_prompt(layout: TokenLayout, codes: Tensor) -> Tensor:
    return continuation_example(layout, _semantic(codes)).input_ids


def _continue_head(layout: TokenLayout) -> list[int]:
    return [layout.special_id("continue"), layout.audio_start]


def audio_only_prompt(layout: TokenLayout, codes: Tensor | None = None) -> Tensor:
    """``<|continue|> <|audio_start|> [s..]``: audio without any text, in the continuation form (any number of
    frames, none included): the unconditional stream of TTS guidance (``Sampling.cfg_scale``)."""
    sem = layout.codes_to_ids(_semantic(codes)) if codes is not None else torch.zeros(0, dtype=torch.long)
    return torch.cat([torch.tensor(_continue_head(layout)), sem])


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
    span, extra = ids[a + 1 : b], {}
    sem = layout.is_semantic(span)
    if task in ("tts", "asr") and not bool(sem.all()):  # aligned TTS / ASR: the words inside the span
        extra = {"words": tokenizer.decode(span[~sem].tolist(), skip_special_tokens=False).strip()}
        span = span[sem]
    codes = layout.ids_to_codes(span)
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
    if task == "asr" and not text and extra:  # aligned ASR: the transcript is the words of the span
        text = extra["words"]
    return Parsed(task, text, codes, complete=bool(ends.numel()), extra=extra)
