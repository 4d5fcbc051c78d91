"""ASR by the CTC reader with a lexicon and the backbone's own language model (shallow fusion at word ends).

Why: the CTC reader (:mod:`slm.ctc_reader`) spells what the semantic tokens carry far better than the speech
LM writes it (CER 0.37-0.49 against 0.79), but it has no notion of words: "the most ha bemeri di can ameten"
for "the most happy marriage i can imagine". Joint decoding driven by the speech LM failed because the LM's
candidates rarely held the right word (``docs/results/joint_asr``). Here the reader drives: a CTC prefix beam
search over characters, where

* a **lexicon** (a character trie of words, each with a unigram log-probability) keeps every partial word a
  prefix of a real word; the best unigram log-probability below the prefix is its look-ahead score;
* at each word end (and at the end of the clip) the **backbone's language model** scores the words so far,
  ``log p_LM(w_1 .. w_k)``, replacing the look-ahead; the backbone is the speech LM's own (the LoRA adapter
  disabled), so no model is added;

and a hypothesis ``h`` is ranked by

    log p_CTC(h) + a * (log p_LM(complete words of h) + lookahead(partial word)) + b * words(h)

(``a``: ``lm_weight``, ``b``: ``word_bonus``). The beam search is the standard CTC prefix search (blank and
non-blank path probabilities per prefix, repeats merged across a blank only); characters below ``char_prune``
at a frame are not tried. The language model's scores are memoised per word sequence and computed in batches,
so a word sequence that many prefixes share costs one forward.

Pieces: :class:`Lexicon` (from a word list, texts, or the ``wordfreq`` package's English list),
:class:`TextScorer` (a causal LM's log-probability of texts), :class:`FusionConfig` and :func:`fused_transcribe`.
"""
from __future__ import annotations

import bisect
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from adapters.backbones import cache_kw, out_cache
from slm.ctc_reader import ALPHABET, normalize
from slm.generate import fast_bf16

NEG = -math.inf


def _lse(a: float, b: float) -> float:
    if a == NEG:
        return b
    if b == NEG:
        return a
    m = max(a, b)
    return m + math.log1p(math.exp(-abs(a - b)))


class Lexicon:
    """Words with unigram log-probabilities, as a sorted list: a string is a valid partial word when some word
    starts with it (one bisection), and its look-ahead is the best log-probability among those words
    (memoised). Words are normalised to the reader's alphabet (no spaces)."""

    def __init__(self, words: dict[str, float]):
        clean: dict[str, float] = {}
        for w, lp in words.items():
            w = normalize(w).replace(" ", "")
            if w and (w not in clean or lp > clean[w]):
                clean[w] = float(lp)
        if not clean:
            raise ValueError("empty lexicon: no word survives normalisation to the reader's alphabet")
        self.words = sorted(clean)
        self.logp = torch.tensor([clean[w] for w in self.words], dtype=torch.float64)
        self._index = {w: i for i, w in enumerate(self.words)}
        self._ahead: dict[str, float] = {}

    def __len__(self) -> int:
        return len(self.words)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def word_logp(self, word: str) -> float:
        i = self._index.get(word)
        return NEG if i is None else float(self.logp[i])

    def lookahead(self, prefix: str) -> float:
        """Best unigram log-prob of the words that start with ``prefix``; -inf when none does."""
        got = self._ahead.get(prefix)
        if got is None:
            lo = bisect.bisect_left(self.words, prefix)
            hi = bisect.bisect_left(self.words, prefix + "\x7f", lo)
            got = float(self.logp[lo:hi].max()) if hi > lo else NEG
            self._ahead[prefix] = got
        return got

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def from_counts(cls, counts: dict[str, float]) -> Lexicon:
        total = float(sum(counts.values()))
        if total <= 0:
            raise ValueError("empty lexicon: no word counts")
        return cls({w: math.log(c / total) for w, c in counts.items() if c > 0})

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> Lexicon:
        """Word frequencies of ``texts`` (e.g. a training manifest's transcripts)."""
        return cls.from_counts(Counter(w for t in texts for w in normalize(t).split()))

    @classmethod
    def from_wordfreq(cls, top_n: int = 100_000, lang: str = "en") -> Lexicon:
        """The ``top_n`` most frequent words of the ``wordfreq`` package (installed with the project)."""
        try:
            import wordfreq
        except ImportError as e:  # pragma: no cover - a dependency of the project
            raise ImportError("a wordfreq lexicon needs the wordfreq package: pip install wordfreq") from e
        words = wordfreq.top_n_list(lang, top_n)
        return cls({w: math.log(max(wordfreq.word_frequency(w, lang), 1e-9)) for w in words})

    @classmethod
    def from_file(cls, path: str | Path) -> Lexicon:
        """One word per line, optionally ``word<TAB>count``."""
        counts: Counter = Counter()
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            w, _, c = line.partition("\t")
            counts[w.strip()] += float(c) if c.strip() else 1.0
        return cls.from_counts(counts)

    @classmethod
    def from_spec(cls, spec: str, base: str | Path | None = None) -> Lexicon:
        """``wordfreq[:N]``, or a word-list file: as given, else relative to ``base`` (a model dir)."""
        what = cls.check_spec(spec, base)
        return cls.from_wordfreq(what) if isinstance(what, int) else cls.from_file(what)

    @staticmethod
    def check_spec(spec: str, base: str | Path | None = None) -> int | Path:
        """What :meth:`from_spec` would load, checked without loading it: N of ``wordfreq[:N]``, or the word
        list's path. A clear error for a bad N or a missing file (the CLI calls this before the model loads)."""
        if spec == "wordfreq" or spec.startswith("wordfreq:"):
            n = spec.partition(":")[2].strip() or "100000"
            if not n.isdigit() or int(n) < 1:
                raise ValueError(f"lexicon {spec!r}: expected 'wordfreq:N' with N a whole number >= 1 "
                                 "(the N most frequent English words)")
            return int(n)
        p = Path(spec)
        if not p.is_file() and base is not None and not p.is_absolute():
            p = Path(base) / p
        if not p.is_file():
            raise FileNotFoundError(f"lexicon {spec!r}: no such file (expected 'wordfreq[:N]' or a word list)")
        return p

    def extend(self, texts: Iterable[str]) -> Lexicon:
        """This lexicon plus the words of ``texts`` (new words get the lexicon's smallest log-prob)."""
        floor = float(self.logp.min())
        words = dict(zip(self.words, self.logp.tolist()))
        for w in {w for t in texts for w in normalize(t).split()}:
            words.setdefault(w, floor)
        return Lexicon(words)


_I = re.compile(r"\bi\b")


def lm_text(words: str) -> str:
    """How normalised words are shown to a cased LM: sentence case and a capital "I" (as in "I'm")."""
    s = _I.sub("I", words)
    return s[:1].upper() + s[1:]


class TextScorer:
    """``log p(text)`` of whole-word texts under a causal LM: the text's words, each tokenised on its own (with
    its leading space), after a start token. Incremental: a text is scored as its parent (all words but the
    last) plus the last word's tokens, read with the parent's KV cache, so a beam that grows word by word
    forwards ~2 tokens per new text, batched. ``model`` may be a peft model: ``base_only`` scores with the
    adapter disabled (the backbone's own language model). ``vocab``: normalise over the first ``vocab`` ids
    only (the text vocabulary of an extended model: its audio rows are not words). :meth:`reset` frees the
    caches (the decoder calls it per clip)."""

    def __init__(self, model, tokenizer, start_id: int | None = None, batch: int = 32, base_only: bool = True,
                 vocab: int | None = None, step=None):
        self.model, self.tokenizer, self.batch, self.vocab = model, tokenizer, batch, vocab
        self.step = step  # a FusedStep of `model` (slm.generate): the hand-written forward, else transformers'
        self.base_only = base_only and hasattr(model, "disable_adapter")
        if start_id is None:
            start_id = tokenizer.convert_tokens_to_ids("<|endoftext|>") if "<|endoftext|>" in tokenizer.get_vocab() \
                else (tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id)
        if start_id is None:
            raise ValueError("the tokenizer has no start token (bos/eos/<|endoftext|>): pass start_id")
        self.start_id = int(start_id)
        self.forwards = 0
        self.reset()

    def reset(self) -> None:
        # text -> (log p(text), per-layer (k, v) [H, L, D], log-probs [V] of the next token)
        self.state: dict[str, tuple[float, list[tuple[Tensor, Tensor]], Tensor]] = {}

    def retain(self, texts: Iterable[str]) -> None:
        """Free the caches of every text but ``texts`` (and the start): the decoder keeps only what its beam can
        still extend, so memory stays ~beam x text length whatever the clip's length."""
        keep = set(texts) | {""}
        for t in [t for t in self.state if t not in keep]:
            del self.state[t]

    def __call__(self, texts: list[str]) -> list[float]:
        self.prefetch(texts)
        return [self.state[t][0] for t in texts]

    def _word_ids(self, parent: str, word: str) -> list[int]:
        shown = lm_text(word) if not parent else " " + _I.sub("I", word)
        ids = self.tokenizer(shown, add_special_tokens=False).input_ids
        if not ids:
            raise ValueError(f"the tokenizer gives no tokens for {shown!r}")
        return ids

    def prefetch(self, texts: Iterable[str]) -> None:
        """Score ``texts`` and every ancestor of theirs not yet scored (the texts of their first words), a
        word count at a time: each level is one batch (of at most ``batch``) after its parents."""
        need: set[str] = set()
        stack = [t for t in texts if t not in self.state]
        while stack:
            t = stack.pop()
            if t in need or t in self.state:
                continue
            need.add(t)
            if t:
                stack.append(_parent(t))
        if "" in need:
            self._extend([""])
            need.discard("")
        levels: dict[int, list[str]] = {}
        for t in need:
            levels.setdefault(t.count(" "), []).append(t)
        for depth in sorted(levels):
            todo = sorted(levels[depth], key=lambda t: (len(t) - len(_parent(t)), t))  # similar lengths together
            for i in range(0, len(todo), self.batch):
                self._extend(todo[i:i + self.batch])

    def _parts(self) -> tuple[torch.nn.Module, torch.nn.Module]:
        """The model's decoder body and output layer (run apart, so the output layer reads only the positions
        and text rows that are scored)."""
        return self.model.get_decoder(), self.model.get_output_embeddings()

    def _head(self, head: torch.nn.Module, h: Tensor) -> Tensor:
        """``log p`` over the text vocabulary (fp32) of hidden states ``h [N, D]``."""
        w = getattr(head, "weight", None)
        if type(head) is torch.nn.Linear and w is not None:
            logits = torch.nn.functional.linear(h, w[:self.vocab] if self.vocab else w, head.bias)
        else:
            logits = head(h)[..., :self.vocab]
        return logits.float().log_softmax(-1)

    @torch.no_grad()
    def _extend(self, texts: list[str]) -> None:
        dev = next(self.model.parameters()).device
        ctx = self.model.disable_adapter() if self.base_only else nullcontext()
        body, head = self._parts()
        if texts == [""]:
            if self.step is not None:
                hid, kv = _step_forward(self.step, None, [0], torch.tensor([[self.start_id]], device=dev))
                last = self._head(head, hid[0, -1:])[0].cpu()
                kv = [(k[0], v[0]) for k, v in kv]
            else:
                with ctx:
                    out = body(input_ids=torch.tensor([[self.start_id]], device=dev), use_cache=True)
                    last = self._head(head, out.last_hidden_state[0, -1:])[0].cpu()
                kv = [(k[0], v[0]) for k, v in _layers(out_cache(out))]
            self.forwards += 1
            self.state[""] = (0.0, kv, last)
            return
        parents = [_parent(t) for t in texts]
        news = [self._word_ids(p, t[len(p):].strip()) for p, t in zip(parents, texts)]
        lp_len = [self.state[p][1][0][0].shape[1] for p in parents]
        B, L, n = len(texts), max(lp_len), max(len(x) for x in news)
        past = []  # per layer: the parents' K/V, padded to the longest
        for li in range(len(self.state[parents[0]][1])):
            k0 = self.state[parents[0]][1][li][0]
            K = k0.new_zeros(B, k0.shape[0], L, k0.shape[2])
            V = torch.zeros_like(K)
            for i, p in enumerate(parents):
                k, v = self.state[p][1][li]
                K[i, :, :k.shape[1]] = k
                V[i, :, :v.shape[1]] = v
            past.append((K, V))
        ids = torch.zeros(B, n, dtype=torch.long)
        for i, x in enumerate(news):
            ids[i, :len(x)] = torch.tensor(x)
        with ctx:
            if self.step is not None:  # the hand-written forward: no per-module overhead (most batches are tiny)
                hid, new_kv = _step_forward(self.step, past, lp_len, ids.to(dev))
            else:
                from transformers import DynamicCache

                mask = torch.zeros(B, L + n, dtype=torch.long)
                for i, (lp, x) in enumerate(zip(lp_len, news)):
                    mask[i, :lp] = 1
                    mask[i, L:L + len(x)] = 1
                pos = torch.tensor(lp_len)[:, None] + torch.arange(n)
                out = body(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                           use_cache=True, **{cache_kw(body): DynamicCache(past)})
                hid = out.last_hidden_state
                new_kv = [(k[:, :, L:], v[:, :, L:]) for k, v in _layers(out_cache(out))]
            rows = torch.cat([hid[i, :len(x)] for i, x in enumerate(news)])  # no padding through the output layer
            logp = self._head(head, rows).cpu()
        self.forwards += 1
        at = 0
        for i, (t, p, x) in enumerate(zip(texts, parents, news)):
            base, kv_p, last = self.state[p]
            s = base + float(last[x[0]])
            for j in range(1, len(x)):
                s += float(logp[at + j - 1, x[j]])
            kv_i = [(torch.cat([kp, k[i, :, :len(x)]], 1), torch.cat([vp, v[i, :, :len(x)]], 1))
                    for (kp, vp), (k, v) in zip(kv_p, new_kv)]
            self.state[t] = (s, kv_i, logp[at + len(x) - 1].clone())  # not a view: the batch is freed
            at += len(x)


def _step_forward(f, past: list[tuple[Tensor, Tensor]] | None, past_len: list[int], ids: Tensor
                  ) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """A Llama forward through a FusedStep's fused matrices (``slm.generate.FusedStep``) for ``B`` rows, each
    with its own past: ``past`` per layer ``(K, V) [B, kv_heads, L, head_dim]`` of which row b's first
    ``past_len[b]`` positions are real (None: no past), and new tokens ``ids [B, n]`` (padding after a row's
    own tokens is harmless: nothing real attends to it). Returns the final-norm hidden states ``[B, n, D]``
    and each layer's new ``(K, V) [B, kv_heads, n, head_dim]``."""
    import torch.nn.functional as F

    B, n = ids.shape
    dev = ids.device
    plen = torch.tensor(past_len, device=dev)
    L = 0 if past is None else past[0][0].shape[2]
    at = plen[:, None] + torch.arange(n, device=dev)  # [B, n] each new token's position
    x = f.embed[ids]  # [B, n, D]
    cos, sin = f.rotary(x, at)  # [B, n, hd]
    # row b's query i sees its real past (j < past_len[b]) and the new tokens up to itself
    seen = torch.cat([(torch.arange(L, device=dev) < plen[:, None])[:, None].expand(B, n, L),
                      torch.ones(n, n, dtype=torch.bool, device=dev).tril()[None].expand(B, n, n)], -1)[:, None]
    new_kv = []

    def attend(i: int, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        k, v = k.transpose(1, 2), v.transpose(1, 2)  # [B, nkv, n, hd]
        new_kv.append((k, v))
        K = k if past is None else torch.cat([past[i][0], k], 2)
        V = v if past is None else torch.cat([past[i][1], v], 2)
        return F.scaled_dot_product_attention(q, K, V, attn_mask=seen, enable_gqa=f.nh != f.nkv)

    x = f.layers_forward(x, cos[:, :, None], sin[:, :, None], attend)
    return F.rms_norm(x, (x.shape[-1],), f.norm, f.eps), new_kv


def _parent(text: str) -> str:
    """The text of all whole words but the last ("" for one word)."""
    return text[:text.rfind(" ")] if " " in text else ""


def _layers(cache) -> list[tuple[Tensor, Tensor]]:
    """Per-layer (keys, values) ``[B, H, L, D]`` of a transformers cache (any version's layout)."""
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return [(k, v) for k, v in cache]


@dataclass
class FusionConfig:
    # defaults: the best of a grid on 20 valid items of the bundle (docs/results/fused_asr)
    beam: int = 32
    lm_weight: float = 0.8  # a above: the LM's (and the look-ahead's) weight against the reader's log-prob
    word_bonus: float = 2.0  # b above: per word, against the LM's preference for fewer words
    char_prune: float = -8.0  # characters with a log-prob below this at a frame are not tried
    lexicon: str | None = "wordfreq:100000"  # Lexicon.from_spec; None: any spelling (the LM judges whole words)
    text_lm: str = "base"  # the backbone without the adapter ("base") or the speech LM itself ("adapted")
    # the "base" LM's weights: "auto" is bfloat16 where the device has bf16 matmul units (CUDA; CPUs with
    # AVX512-BF16 or AMX), where its batched word scoring is ~3x faster than float32; else float32
    lm_dtype: str = "auto"
    # rescoring (SpeechPipeline): the best `rescore_n` transcripts re-ranked by score + rescore_weight *
    # the speech LM's log p(words | semantic tokens) in its aligned ASR form; 0: off
    rescore_weight: float = 0.0
    rescore_n: int = 8
    # reader frames a newly ended word may wait for its LM score, ranked meanwhile on its parent's score plus
    # its unigram log-prob: the words that end in the next `lm_lag` frames share one LM forward, and those
    # pruned before then are never scored. 0: every frame's new words are scored at once (the exact search).
    # 8 (0.16 s at the bundle's 50 reader frames/s): ~2x faster at the same WER (docs/results/fused_asr_lag)
    lm_lag: int = 8

    def __post_init__(self) -> None:
        if self.beam < 1:
            raise ValueError(f"beam must be >= 1, got {self.beam}")
        if self.lm_weight < 0:
            raise ValueError(f"lm_weight must be >= 0, got {self.lm_weight}")
        if self.rescore_weight < 0 or self.rescore_n < 1:
            raise ValueError(f"rescore_weight must be >= 0 and rescore_n >= 1, got {self.rescore_weight} and "
                             f"{self.rescore_n}")
        if self.text_lm not in ("base", "adapted"):
            raise ValueError(f"text_lm must be 'base' or 'adapted', got {self.text_lm!r}")
        if self.lm_lag < 0:
            raise ValueError(f"lm_lag must be >= 0 frames, got {self.lm_lag}")
        if self.lm_dtype not in ("auto", "float32", "bfloat16"):
            raise ValueError(f"lm_dtype must be 'auto', 'float32' or 'bfloat16', got {self.lm_dtype!r}")

    def dtype(self, device: str | torch.device = "cpu") -> torch.dtype:
        """The text LM's weight dtype on ``device`` (``lm_dtype`` with "auto" resolved)."""
        if self.lm_dtype != "auto":
            return getattr(torch, self.lm_dtype)
        return torch.bfloat16 if fast_bf16(device) else torch.float32


def _adder(paths: dict[str, list[float]]) -> Callable[[str, float, float], None]:
    """Adds path probabilities (blank-ending, non-blank-ending) to a prefix of ``paths``."""
    def add(h: str, pb: float, pnb: float) -> None:
        cur = paths.get(h)
        if cur is None:
            paths[h] = [pb, pnb]
        else:
            cur[0], cur[1] = _lse(cur[0], pb), _lse(cur[1], pnb)
    return add


def fused_transcribe(logp: Tensor, blank: int, score_words: Callable[[list[str]], list[float]],
                     lexicon: Lexicon | None = None, cfg: FusionConfig | None = None,
                     alphabet: str = ALPHABET) -> str:
    """CTC prefix beam search over one clip's reader log-probs ``[T, C]`` with lexicon look-ahead and LM
    shallow fusion at word ends (see the module doc). ``score_words(texts)`` gives ``log p_LM`` of each text of
    whole words (a :class:`TextScorer`). Returns the best transcript (normalised words)."""
    return fused_nbest(logp, blank, score_words, lexicon, cfg, alphabet)[0].text


@dataclass
class Hypothesis:
    """One transcript of :func:`fused_nbest`: ``score = ctc + lm_weight * lm + word_bonus * words``."""

    text: str
    score: float
    ctc: float  # log p_CTC of the transcript (summed over the beam's paths that spell it)
    lm: float  # log p_LM of its words (0 for the fallback of a beam with no whole-word transcript)


def fused_nbest(logp: Tensor, blank: int, score_words: Callable[[list[str]], list[float]],
                lexicon: Lexicon | None = None, cfg: FusionConfig | None = None,
                alphabet: str = ALPHABET) -> list[Hypothesis]:
    """:func:`fused_transcribe`'s search, returning every transcript left in the beam at the end, best first
    (at most ``cfg.beam``), for rescoring by another model."""
    cfg = cfg or FusionConfig()
    a, b = cfg.lm_weight, cfg.word_bonus
    space = alphabet.index(" ")
    x = logp.double().cpu()
    if x.ndim != 2 or x.shape[1] != len(alphabet) + 1:
        raise ValueError(f"log-probs must be [T, {len(alphabet) + 1}], got {tuple(x.shape)}")
    x_list = x.tolist()
    if hasattr(score_words, "reset"):
        score_words.reset()  # caches are per clip
    # per prefix h: [log p_blank-ending, log p_nonblank-ending]; h never starts or ends a word with two spaces
    beams: dict[str, list[float]] = {"": [0.0, NEG]}

    def partial(h: str) -> str:
        return h[h.rfind(" ") + 1:]

    def complete(h: str) -> str:
        return h[:h.rfind(" ")] if " " in h else ""

    lm_of: dict[str, float] = {"": 0.0}  # LM log-prob of whole-word texts, as far as asked
    guess_of: dict[str, float] = {}  # estimates of texts not scored yet, within one frame
    pending: dict[str, int] = {}  # texts the beam holds unscored -> the frame since which it has held them

    def fusion(h: str, lm: float) -> float:
        p = partial(h)
        ahead = 0.0 if not p else (lexicon.lookahead(p) if lexicon is not None else 0.0)
        return a * (lm + ahead) + b * (h.count(" ") + (1 if p else 0))

    def lm_est(c: str) -> float:
        """LM log-prob of the whole-word text ``c``: its score, else its parent's (score or estimate) plus its
        last word's unigram log-prob."""
        if c in lm_of:
            return lm_of[c]
        g = guess_of.get(c)
        if g is None:
            g = lm_est(complete(c)) + (lexicon.word_logp(partial(c)) if lexicon is not None else 0.0)
            guess_of[c] = g
        return g

    def rank(paths: dict[str, list[float]], t: int) -> dict[str, float]:
        """Fusion scores of the best ``beam`` prefixes of ``paths``. A prefix that has just ended a word is
        first ranked with its parent's LM score plus the word's unigram log-prob (an estimate); the LM scores
        only those that survive that, at once (``lm_lag`` 0) or once the oldest of them has waited
        ``lm_lag`` frames, all in one batch."""
        guess_of.clear()  # estimates live for one frame: scores that arrive change them
        est = {h: fusion(h, lm_est(complete(h))) for h in paths}
        keep = sorted(paths, key=lambda h: -(_lse(*paths[h]) + est[h]))[:cfg.beam]
        held = {c: pending.get(c, t) for c in dict.fromkeys(complete(h) for h in keep) if c not in lm_of}
        pending.clear()
        pending.update(held)
        if pending and min(pending.values()) <= t - cfg.lm_lag:
            new = list(pending)
            if hasattr(score_words, "prefetch"):
                score_words.prefetch(new)  # one batch per word count
            for c, lm in zip(new, score_words(new)):
                lm_of[c] = lm
            pending.clear()
            guess_of.clear()
        return {h: fusion(h, lm_est(complete(h))) for h in keep}

    def scored_ancestor(c: str) -> str:
        while c not in lm_of:
            c = complete(c)
        return c

    for t in range(x.shape[0]):
        row = x_list[t]
        cands = [c for c in range(len(row)) if c != blank and row[c] >= cfg.char_prune]
        nxt: dict[str, list[float]] = {}
        add = _adder(nxt)

        for h, (pb, pnb) in beams.items():
            tot = _lse(pb, pnb)
            add(h, tot + row[blank], NEG)  # a blank: h stays, now blank-ending
            last = alphabet.index(h[-1]) if h else -1
            if last >= 0:
                add(h, NEG, pnb + row[last])  # the last character repeated without a blank: merged
            for c in cands:
                ch = alphabet[c]
                if c == space:
                    if not h or h[-1] == " " or (lexicon is not None and partial(h) not in lexicon):
                        continue  # a word ends only after a whole word
                elif lexicon is not None and lexicon.lookahead(partial(h) + ch) == NEG:
                    continue  # no word starts like this
                via = pb if c == last else tot  # a repeat needs a blank in between
                if via == NEG:
                    continue
                add(h + ch, NEG, via + row[c])
        scores = rank(nxt, t)
        order = sorted(scores, key=lambda h: -(_lse(*nxt[h]) + scores[h]))
        beams = {h: nxt[h] for h in order[:cfg.beam]}
        if hasattr(score_words, "retain"):  # and the scored parents that unscored texts will be read after
            score_words.retain({c for h in beams for c in (complete(h), scored_ancestor(complete(h)))})
    # the end: the last partial word must be a whole word; the LM scores all words
    finals: dict[str, float] = {}
    for h, (pb, pnb) in beams.items():  # "w" and "w " are one transcript
        finals[h.rstrip(" ")] = _lse(finals.get(h.rstrip(" "), NEG), _lse(pb, pnb))
    keep = [(h, s) for h, s in finals.items() if not h or lexicon is None or partial(h) in lexicon]
    if not keep:  # no hypothesis ends on a whole word: the best one as it stands
        h = max(beams, key=lambda h: _lse(*beams[h]))
        return [Hypothesis(h.strip(), _lse(*beams[h]), _lse(*beams[h]), 0.0)]
    lms = score_words([h for h, _ in keep])
    out = [Hypothesis(h, c + a * lm + b * len(h.split()), c, lm) for (h, c), lm in zip(keep, lms, strict=True)]
    return sorted(out, key=lambda x: -x.score)


def ctc_align(logp: Tensor, ids: Tensor, blank: int) -> list[int]:
    """The most probable CTC path (Viterbi) of the labels ``ids [L]`` through ``logp [T, C]``: the frame at which
    each label is first emitted (non-decreasing; a repeated label comes after a blank). Raises when ``T`` frames
    cannot emit the labels."""
    x = logp.double().cpu()
    ids = torch.as_tensor(ids).long().flatten()
    T, L = x.shape[0], ids.numel()
    if L == 0:
        return []
    ext = torch.full((2 * L + 1,), blank, dtype=torch.long)
    ext[1::2] = ids
    S = ext.numel()
    # a state may be entered from s-2 when it is a label that differs from the label two states back
    skip = torch.zeros(S, dtype=torch.bool)
    skip[3::2] = ids[1:] != ids[:-1]
    emit = x[:, ext]  # [T, S]
    score = torch.full((S,), NEG, dtype=torch.float64)
    score[0], score[1] = emit[0, 0], emit[0, 1]
    back = torch.zeros((T, S), dtype=torch.long)
    idx = torch.arange(S)
    for t in range(1, T):
        stay = score
        step = torch.cat([torch.tensor([NEG], dtype=torch.float64), score[:-1]])
        jump = torch.cat([torch.tensor([NEG, NEG], dtype=torch.float64), score[:-2]]).masked_fill(~skip, NEG)
        cand = torch.stack([stay, step, jump])  # [3, S]
        best, arg = cand.max(0)
        score = best + emit[t]
        back[t] = idx - arg
    end = S - 1 if score[S - 1] >= score[S - 2] else S - 2
    if score[end] == NEG:
        raise ValueError(f"{T} CTC frames cannot emit {L} labels")
    first = [T] * L
    s = end
    for t in range(T - 1, -1, -1):
        if s % 2 == 1:
            first[s // 2] = t
        s = int(back[t, s]) if t else s
    return first
