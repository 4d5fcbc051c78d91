"""Speech-LM data: codec tokens of a manifest, multi-task examples, packing, batches (DESIGN.md §6).

Token dirs hold one ``CodecTokens`` safetensors file per utterance plus ``index.jsonl`` (one line per
utterance: ``id``, ``tokens`` (file name, relative), ``text``, ``speaker``, ``split``). They come from
``slm codec tokenize`` or from :func:`tokenize_manifest` here (which caches: existing files are kept).

Every epoch each utterance becomes one example of one task, drawn with the configured ratios from a
seeded generator (so a given (seed, epoch) always gives the same data: exact resume needs that).
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from codec.contracts import CodecTokens
from slm.acoustic_head import frames_from_acoustic
from slm.layout import TokenLayout
from slm.templates import (
    IGNORE,
    Example,
    asr_aligned_example,
    asr_example,
    continuation_example,
    interleave_example,
    tts_aligned_example,
    tts_example,
    with_phones,
)

INDEX = "index.jsonl"


@dataclass
class Utterance:
    id: str
    text: str
    speaker: str
    split: str
    semantic: Tensor  # [Ts]
    acoustic: Tensor  # [Ts, L] per-frame acoustic codes (L = r*Ka, may be 0)
    global_: Tensor | None = None  # [D] float or [G] int
    # [(start_s, end_s, word), ...] from the manifest (the aligned and interleave tasks); with the manifest's
    # phones each entry also carries its own, [start_s, end_s, word, [phone, ..]] (templates.with_phones)
    words: list | None = None
    duration: float = 0.0  # seconds of audio the Ts frames cover (0 = unknown)


@dataclass
class Batch:
    """A padded batch of packed sequences. ``[B, T]`` unless said otherwise."""

    input_ids: Tensor
    labels: Tensor
    attention_mask: Tensor
    head_mask: Tensor  # True at position p-1 of every semantic token p that has acoustic targets
    head_sem: Tensor  # [B, T] semantic code of that next token (0 elsewhere)
    head_codes: Tensor  # [B, T, L] its acoustic codes (-100 elsewhere)
    head_item: Tensor  # [B, T] index into `voices` of the example the frame belongs to (-1 elsewhere)
    voices: list[Tensor]  # per example: reference acoustic codes [Ka, Ta] for the head's voice vector
    globals_: list[Tensor | None]
    # [B, T] index of each token's example within its row (0, 1, ...), -1 on padding: what the
    # block-diagonal mask and the per-example positions are built from (slm.packing)
    segment_ids: Tensor | None = None


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not JSON ({e})") from None
    return rows


def tokenize_manifest(codec, manifest: str | Path, out_dir: str | Path, teacher=None,
                      codec_dir: str | Path | None = None) -> Path:
    """Encode every row of a JSONL manifest (id, path, text, speaker, split) once; returns ``out_dir``.

    ``teacher``: a loaded semantic teacher, needed only by codecs that encode with one (sac). Each token file
    records the codec (``codec_dir``, variant, rates: :func:`codec.contracts.token_metadata`)."""
    from tqdm import tqdm

    from codec.audio import load_audio
    from codec.contracts import token_metadata
    from codec.data import read_manifest, resolve_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_manifest(manifest)
    meta = token_metadata(codec, codec_dir)  # once: it digests the codec's weights
    index = []
    for row in tqdm(rows, desc="tokenising", unit="utt"):
        f = out / f"{row['id']}.safetensors"
        if not f.exists():
            wav = load_audio(resolve_path(row), codec.sample_rate)
            wav = wav.view(1, 1, -1) if wav.dim() < 3 else wav
            with torch.no_grad():
                if getattr(codec, "needs_teacher_at_encode", False):
                    from adapters.kmeans import teacher_batch_for

                    toks = codec.encode(wav, teacher=teacher_batch_for(codec, teacher, wav))
                else:
                    toks = codec.encode(wav)
            toks.save(f.with_suffix(".tmp"), metadata={"id": str(row["id"]), **meta})
            f.with_suffix(".tmp").rename(f)
        index.append({"id": row["id"], "tokens": f.name, "text": row.get("text", ""),
                      "speaker": row.get("speaker", ""), "split": row.get("split", "train"),
                      **{k: row[k] for k in ("duration", "words", "phones") if row.get(k)}})
    with open(out / INDEX, "w") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in index)
    return out


def utterance(uid: str, text: str, speaker: str, split: str, tokens: CodecTokens, **kw) -> Utterance:
    """An :class:`Utterance` from one clip's codec tokens (batch of one); ``kw``: words, duration."""
    t = tokens[0]
    if t.semantic.shape[1] != 1:
        raise ValueError(f"{uid}: the speech LM models one semantic codebook, got Ks={t.semantic.shape[1]}")
    g = None if t.global_ is None else t.global_[0]
    return Utterance(uid, text, speaker, split, t.semantic[0, 0], frames_from_acoustic(t.acoustic[0], t.ratio), g, **kw)


def load_tokens(token_dir: str | Path, split: str | None = None, limit: int | None = None,
                codec=None) -> list[Utterance]:
    """The utterances of a token dir (``split``: only those; ``limit``: the first N). With ``codec`` (the codec a
    run trains with and decodes by), tokens of another codec are a clear error (:func:`check_tokens_fit`)."""
    from codec.contracts import check_token_metadata

    d = Path(token_dir)
    if not (d / INDEX).exists():
        raise FileNotFoundError(f"no {INDEX} in {d}: run `slm codec tokenize` or set `manifest` in the config")
    utts = []
    for row in read_jsonl(d / INDEX):
        if split is not None and row.get("split", "train") != split:
            continue
        name = row.get("tokens") or row.get("token_path") or row.get("file") or f"{row['id']}.safetensors"
        tokens, meta = CodecTokens.load_with_metadata(d / name)
        if codec is not None:
            check_token_metadata(d / name, meta, codec)
        utts.append(utterance(str(row["id"]), row.get("text", ""), str(row.get("speaker", "")), row.get("split", "train"),
                              tokens, words=with_phones(row.get("words"), row.get("phones")) or None,
                              duration=float(row.get("duration") or 0.0)))
        if codec is not None:
            check_tokens_fit(utts[-1], codec, d / name)
        if limit and len(utts) >= limit:
            break
    return utts


def check_tokens_fit(u: Utterance, codec, where) -> None:
    """One utterance's codes against ``codec``: semantic ids outside its codebook, or acoustic frames of another
    width (rate ratio x codebooks) or past its acoustic codebook, come from another codec. A clear error here
    rather than an index error mid-training or, worse, a model trained on another codec's units."""
    from slm.acoustic_head import acoustic_ratio

    ks, ka, n = codec.semantic_codebook_size, codec.acoustic_codebook_size, codec.n_acoustic_codebooks
    width = acoustic_ratio(codec) * n if n else 0
    problems = []
    if u.semantic.numel() and (int(u.semantic.min()) < 0 or int(u.semantic.max()) >= ks):
        problems.append(f"semantic ids {int(u.semantic.min())}..{int(u.semantic.max())} (the codec has {ks})")
    if u.acoustic.numel() and u.acoustic.shape[-1] != width:
        problems.append(f"{u.acoustic.shape[-1]} acoustic codes per frame (the codec makes {width})")
    elif u.acoustic.numel() and (int(u.acoustic.min()) < 0 or int(u.acoustic.max()) >= ka):
        problems.append(f"acoustic codes {int(u.acoustic.min())}..{int(u.acoustic.max())} (the codec has {ka})")
    if problems:
        raise ValueError(f"{where} does not come from this codec: {'; '.join(problems)}; tokenise the manifest with "
                         "the run's codec (`slm codec tokenize`) or set the codec that made these tokens")


@dataclass
class TaskMix:
    tts: float = 0.6
    asr: float = 0.2
    continue_: float = 0.2
    prompt_prob: float = 0.3  # TTS examples prefixed by another utterance of the same speaker (voice prompt)
    # word-level text/speech interleaving (slm.templates.interleave_example): needs word times in the token
    # index (`slm codec tokenize` copies the manifest's `words`) and a layout with <|interleave|>; an
    # utterance without word times becomes a TTS example instead
    interleave: float = 0.0
    # share of TTS examples in the aligned form (slm.templates.tts_aligned_example: each word's text before
    # its frames); needs word times like `interleave`. A model trained with it speaks in that form
    # (slm_config.json "tts_aligned"); the plain form stays in the mix so both work
    tts_aligned: float = 0.0
    # share of ASR examples in the aligned form (slm.templates.asr_aligned_example: each word's text right
    # after its frames; a streaming transcript); needs word times. A model trained with it transcribes in
    # that form (slm_config.json "asr_aligned")
    asr_aligned: float = 0.0
    # share of aligned TTS examples in the phone-bridged form (each word followed by its phones, from the
    # manifest's exact phone times; slm.templates.word_ids). A model trained with it speaks that way, its
    # phones from espeak-ng's G2P (slm_config.json "tts_phones"); needs phones in the token index
    tts_phones: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> TaskMix:
        from codec.config import check_types

        d = dict(d or {})
        if "continue" in d:
            d["continue_"] = d.pop("continue")
        unknown = sorted((k for k in d if k not in cls.__dataclass_fields__), key=str)
        if unknown:
            known = sorted(k.rstrip("_") for k in cls.__dataclass_fields__)
            raise ValueError(f"unknown tasks keys {unknown}; known keys are {known}")
        check_types(cls, d, "tasks.")
        return cls(**d)


def make_examples(utts: list[Utterance], tokenizer, layout: TokenLayout, mix: TaskMix, seed: int,
                  epoch: int) -> list[tuple[Example, int]]:
    """One example per utterance (task by ratio); returns (example, utterance index) pairs."""
    rng = random.Random(seed * 1_000_003 + epoch)
    by_spk: dict[str, list[int]] = {}
    for i, u in enumerate(utts):
        by_spk.setdefault(u.speaker, []).append(i)
    tasks, weights = ["tts", "asr", "continue", "interleave"], [mix.tts, mix.asr, mix.continue_, mix.interleave]
    if mix.interleave > 0 and "<|interleave|>" not in layout.specials:
        raise ValueError("tasks.interleave > 0 but the token layout has no <|interleave|> (a model dir made "
                         "before the task existed, e.g. through init_from): set interleave to 0")
    out = []
    for i, u in enumerate(utts):
        task = rng.choices(tasks, weights)[0]
        has_text = bool(u.text.strip())
        if task == "interleave":
            ex = interleave_example(tokenizer, layout, u.words or [], u.semantic, u.duration, rng,
                                    u.acoustic if u.acoustic.shape[-1] else None)
            if ex is not None:
                out.append((ex, i))
                continue
            task = "tts"
        if task in ("tts", "asr") and not has_text:
            task = "continue"
        if task == "continue" and u.semantic.numel() < 2:
            continue
        ac = u.acoustic if u.acoustic.shape[-1] else None
        if task == "tts":
            mates = [j for j in by_spk.get(u.speaker, []) if j != i and utts[j].text.strip()]
            p = utts[rng.choice(mates)] if mates and u.speaker and rng.random() < mix.prompt_prob else None
            pt, pc = (p.text, p.semantic) if p is not None else (None, None)
            ex = None
            if mix.tts_aligned > 0 and rng.random() < mix.tts_aligned:
                ph = mix.tts_phones > 0 and rng.random() < mix.tts_phones
                ex = tts_aligned_example(tokenizer, layout, u.text, u.words or [], u.semantic, u.duration, ac, pt, pc,
                                         phones=ph)
            ex = ex or tts_example(tokenizer, layout, u.text, u.semantic, ac, pt, pc)
        elif task == "asr":
            ex = None
            if mix.asr_aligned > 0 and rng.random() < mix.asr_aligned:
                ex = asr_aligned_example(tokenizer, layout, u.words or [], u.semantic, u.duration, ac)
            ex = ex or asr_example(tokenizer, layout, u.semantic, u.text, ac)
        else:
            ex = continuation_example(layout, u.semantic, ac)
        out.append((ex, i))
    rng.shuffle(out)
    return out


def pack(examples: list[tuple[Example, int]], max_len: int, one_per_row: bool = False
         ) -> list[list[tuple[Example, int]]]:
    """Greedy first-fit packing into rows of at most ``max_len`` tokens (examples longer are dropped).

    ``collate`` records where each example lies in its row (``Batch.segment_ids``), so that training can
    keep packed examples apart (block-diagonal causal mask, positions from 0 per example: slm.packing).
    ``one_per_row``: no packing, every example in a row of its own."""
    packs: list[list[tuple[Example, int]]] = []
    room: list[int] = []
    for item in examples:
        n = len(item[0])
        if n > max_len:
            continue
        if one_per_row:
            packs.append([item])
            continue
        for k, r in enumerate(room):
            if n <= r:
                packs[k].append(item)
                room[k] -= n
                break
        else:
            packs.append([item])
            room.append(max_len - n)
    return packs


def collate(packs: list[list[tuple[Example, int]]], utts: list[Utterance], pad_id: int, frame_len: int,
            semantic_offset: int) -> Batch:
    T = max(sum(len(e) for e, _ in p) for p in packs)
    B, L = len(packs), frame_len
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    att = torch.zeros(B, T, dtype=torch.long)
    hmask = torch.zeros(B, T, dtype=torch.bool)
    hsem = torch.zeros(B, T, dtype=torch.long)
    hcodes = torch.full((B, T, max(L, 1)), IGNORE, dtype=torch.long)
    hitem = torch.full((B, T), -1, dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)
    voices, globals_ = [], []
    for b, p in enumerate(packs):
        o = 0
        for k, (ex, ui) in enumerate(p):
            n = len(ex)
            ids[b, o : o + n], labels[b, o : o + n], att[b, o : o + n] = ex.input_ids, ex.labels, 1
            seg[b, o : o + n] = k
            labels[b, o] = IGNORE  # never learn an example's first token from the previous example's last
            if ex.acoustic is not None and L:
                ctx = ex.semantic_pos + o - 1  # the state that sampled each semantic token
                hmask[b, ctx] = True
                hsem[b, ctx] = ex.input_ids[ex.semantic_pos] - semantic_offset
                hcodes[b, ctx] = ex.acoustic
                hitem[b, ctx] = len(voices)
                u = utts[ui]
                voices.append(u.acoustic.reshape(1, 1, -1))  # reference codes of the same utterance
                globals_.append(u.global_)
            o += n
    return Batch(ids, labels, att, hmask, hsem, hcodes, hitem, voices, globals_, seg)
