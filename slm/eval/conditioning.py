"""Does the speech LM use what it is conditioned on?

A model that has not learned the text <-> speech mapping can still lower its training loss a lot: as an
unconditional language model of semantic tokens (TTS, continuation) and of English (ASR transcripts).
This measures the part of the loss that comes from the conditioning, on held-out items:

* TTS: cross-entropy of the semantic tokens given the item's own text, and given another item's text;
* ASR: cross-entropy of the transcript given the item's own audio tokens, and given another item's;
* aligned TTS (items with word times): cross-entropy of the semantic tokens with each word's own text fed
  before its frames, and with another item's words in those places (same timing, other words); for a model
  that speaks the phone-bridged form, each word with its phones;
* aligned ASR (items with word times): cross-entropy of the words written after their own frames, and
  after another item's frames (the words at the same relative times of that item's frames).

``gain = shuffled - real`` (nats per token): ~0 means the conditioning is ignored; a model that reads
its input well gains several nats (the shuffled case then looks like noise to it). Items are paired by a
fixed derangement, so the numbers are reproducible.
"""
from __future__ import annotations

import dataclasses

import torch

from slm.eval.data import EvalItem


def _utterances(pipe, items: list[EvalItem]):
    from slm.lm_data import utterance
    from slm.templates import with_phones

    return [utterance(it.id, it.text, it.speaker, "test", pipe.encode(it.wav, it.sample_rate),
                      words=with_phones(it.words, it.phones) or None, duration=it.wav.shape[-1] / it.sample_rate)
            for it in items]


@torch.no_grad()
def conditioning_gain(pipe, items: list[EvalItem], max_len: int = 1024) -> dict:
    """``{"tts": {"real", "shuffled", "gain"}, "asr": {...}, "n"}``: mean target cross-entropy (nats per
    token) with each item's own conditioning and with another item's. Needs at least 2 items with text."""
    return gain_on_utterances(pipe, _utterances(pipe, items), max_len)


@torch.no_grad()
def gain_on_utterances(pipe, utts, max_len: int = 1024) -> dict:
    """:func:`conditioning_gain` on already tokenised :class:`slm.lm_data.Utterance` s (e.g. a token dir's
    train split, to check that a run can fit the items it trained on)."""
    from slm.train import BatchSource, SpeechLM, TaskMix, TrainConfig

    utts = [u for u in utts if u.text.strip()]
    if len(utts) < 2:
        raise ValueError(f"conditioning_gain needs at least 2 items with text, got {len(utts)}")
    n = len(utts)
    other = [(i + 1) % n for i in range(n)]  # a derangement: nobody keeps its own pairing
    swapped = {
        "tts": [dataclasses.replace(u, text=utts[j].text) for u, j in zip(utts, other)],
        "asr": [dataclasses.replace(u, semantic=utts[j].semantic, acoustic=utts[j].acoustic) for u, j in zip(utts, other)],
    }
    tasks, items = ["tts", "asr"], {"tts": utts, "asr": utts}
    timed = [u for u in utts if u.words]
    if len(timed) >= 2:  # aligned TTS (items with word times): another item's words (cycled) at these times
        tasks.append("tts_aligned")
        items["tts_aligned"], swapped["tts_aligned"] = timed, []
        for k, u in enumerate(timed):
            w = [x[2:] for x in timed[(k + 1) % len(timed)].words]  # the word (and its phones, if any)
            words = [[x[0], x[1], *w[i % len(w)]] for i, x in enumerate(u.words)]
            swapped["tts_aligned"].append(dataclasses.replace(u, words=words, text=" ".join(x[2] for x in words)))
        # aligned ASR: these words after the frames of the next timed item with enough frames for them
        pairs = [(u, timed[(k + 1) % len(timed)]) for k, u in enumerate(timed)]
        pairs = [(u, o) for u, o in pairs if min(u.semantic.numel(), o.semantic.numel()) >= len(u.words)]
        if len(pairs) >= 2:
            tasks.append("asr_aligned")
            items["asr_aligned"] = [u for u, _ in pairs]
            swapped["asr_aligned"] = [dataclasses.replace(u, semantic=o.semantic, acoustic=o.acoustic) for u, o in pairs]
    model = SpeechLM(pipe.lm, pipe.head, 1.0, True, "none", text_vocab=pipe.layout.base_vocab).eval()
    frame_len = pipe.head.cfg.frame_len if pipe.head is not None else 0
    key = {"tts": "lm/loss_audio", "asr": "lm/loss_text", "tts_aligned": "lm/loss_audio", "asr_aligned": "lm/loss_text"}
    res: dict = {"n": n}
    for task in tasks:
        asr = task.startswith("asr")
        mix = {"tts": float(not asr), "asr": float(asr), "continue": 0.0, "prompt_prob": 0.0,
               "tts_aligned": float(task == "tts_aligned"), "asr_aligned": float(task == "asr_aligned"),
               "tts_phones": float(task == "tts_aligned" and bool(getattr(pipe, "tts_phones", False)))}
        cfg = TrainConfig(batch_size=1, max_len=max_len, tasks=mix, packing="none")
        row = {}
        for name, us in (("real", items[task]), ("shuffled", swapped[task])):
            src = BatchSource(us, pipe.tokenizer, pipe.layout, TaskMix.from_dict(mix), cfg, frame_len)
            vals = [float(model(src(i))[key[task]]) for i in range(src.per_epoch)]
            row[name] = sum(vals) / len(vals)
        row["gain"] = row["shuffled"] - row["real"]
        if task in ("tts_aligned", "asr_aligned"):
            row["n"] = len(items[task])  # the items with word times
        res[task] = row
    return res
