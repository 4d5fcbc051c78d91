"""A CTC reader of semantic tokens, and ASR by the speech LM with CTC prefix scores (joint decoding).

Why: the speech LM reads the semantic tokens and knows where words end, but it mostly picks the wrong word
(``docs/results/aligned_asr``): a 135 M backbone fine-tuned for a few thousand steps does not learn to spell
from 25 Hz units. A small bidirectional reader trained with CTC on the same frozen tokens does learn it in
minutes on a CPU. Neither is a good recogniser alone: the reader spells what it hears with no notion of
words, the LM writes fluent English that follows the audio loosely. Joint decoding (hybrid CTC/attention, as
in ESPnet) keeps both: a beam search over the LM's text tokens in the plain ASR form (``<|asr|>
<|audio_start|> s.. <|audio_end|> text``) where every hypothesis is scored by

    (1 - w) * log p_LM(text | tokens) + w * log p_CTC(text's characters as a prefix | tokens)

with the CTC prefix probability computed exactly (:class:`CTCPrefixScorer`), and the full CTC probability
once the hypothesis ends. The reader reads the same semantic tokens the LM does: nothing here touches audio.

Pieces:

* :func:`normalize`: the reader's alphabet (``a-z``, apostrophe, space) from any text;
* :class:`CTCReader`: embedding -> depthwise conv -> transformer encoder -> ``upsample`` CTC outputs per
  frame (a 25 Hz stream carries fewer frames than fast speech has characters); ``save_pretrained`` /
  ``from_pretrained`` (config.json + safetensors, with a format version);
* :func:`train_reader`: CTC training on token dirs (``slm.lm_data.load_tokens``), resumable, with progress;
* :class:`CTCPrefixScorer` and :func:`joint_transcribe`: the decoding above.
"""
from __future__ import annotations

import json
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from adapters.backbones import cache_kw, out_cache

FORMAT_VERSION = 1
ALPHABET = "'abcdefghijklmnopqrstuvwxyz "  # index len(ALPHABET) is the CTC blank
_NOT_ALPHABET = re.compile(r"[^a-z' ]+")


def normalize(text: str) -> str:
    """Lower case, anything outside ``a-z'`` becomes a space, spaces collapsed and stripped: what the reader
    spells (and what its error rates are counted on)."""
    return " ".join(_NOT_ALPHABET.sub(" ", text.lower()).split())


def char_ids(text: str) -> Tensor:
    return torch.tensor([ALPHABET.index(c) for c in normalize(text)], dtype=torch.long)


@dataclass
class ReaderConfig:
    n_codes: int = 1024  # the semantic codebook size of the codec whose tokens it reads
    frame_rate: float = 25.0
    dim: int = 192
    layers: int = 4
    heads: int = 4
    ff_mult: int = 3
    kernel_size: int = 5
    dropout: float = 0.1
    upsample: int = 2  # CTC outputs per frame: 50 per second at 25 Hz, above the ~15 characters/s of fast speech
    alphabet: str = ALPHABET
    # also read the acoustic stream: its codebook size (0 = semantic codes only) and codes per semantic frame
    # (r * Ka); the codes then come as [.., T, 1 + acoustic_per_frame], the semantic code first
    acoustic_codes: int = 0
    acoustic_per_frame: int = 0
    acoustic_dim: int = 64

    def __post_init__(self) -> None:
        if self.dim % self.heads or self.dim % 16:
            raise ValueError(f"dim ({self.dim}) must be divisible by heads ({self.heads}) and by 16")
        if self.upsample < 1 or self.n_codes < 1:
            raise ValueError(f"upsample and n_codes must be >= 1, got {self.upsample} and {self.n_codes}")
        if (self.acoustic_codes > 0) != (self.acoustic_per_frame > 0):
            raise ValueError("acoustic_codes and acoustic_per_frame are set together (both > 0, or both 0), got "
                             f"{self.acoustic_codes} and {self.acoustic_per_frame}")

    @property
    def columns(self) -> int:
        """Code columns per frame: 1 (semantic) or 1 + acoustic_per_frame."""
        return 1 + self.acoustic_per_frame


class CTCReader(nn.Module):
    """Semantic codes ``[B, T]`` -> CTC log-probs ``[B, T * upsample, len(alphabet) + 1]`` (blank last). A reader
    of both streams (``cfg.acoustic_codes > 0``) takes ``[B, T, 1 + acoustic_per_frame]``: each frame's semantic
    code, then its acoustic codes; their embeddings are concatenated, projected and added to the semantic one."""

    def __init__(self, cfg: ReaderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.n_out = len(cfg.alphabet) + 1
        self.embed = nn.Embedding(cfg.n_codes, cfg.dim)
        if cfg.acoustic_codes:
            self.acoustic_embed = nn.Embedding(cfg.acoustic_codes, cfg.acoustic_dim)
            self.acoustic_proj = nn.Linear(cfg.acoustic_per_frame * cfg.acoustic_dim, cfg.dim)
        self.conv = nn.Conv1d(cfg.dim, cfg.dim, cfg.kernel_size, padding=cfg.kernel_size // 2, groups=cfg.dim // 16)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, cfg.ff_mult * cfg.dim, cfg.dropout, batch_first=True,
                                           norm_first=True, activation="gelu")
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.upsample * self.n_out)

    @property
    def blank(self) -> int:
        return self.n_out - 1

    def forward(self, codes: Tensor, lengths: Tensor | None = None) -> Tensor:
        cols = self.cfg.columns
        if cols == 1 and codes.dim() == 3 and codes.shape[-1] == 1:
            codes = codes[..., 0]
        want = "[B, T]" if cols == 1 else f"[B, T, {cols}] (semantic, then {cols - 1} acoustic codes per frame)"
        if (cols == 1 and codes.dim() != 2) or (cols > 1 and (codes.dim() != 3 or codes.shape[-1] != cols)):
            raise ValueError(f"expected codes {want}, got {tuple(codes.shape)}")
        sem = codes if cols == 1 else codes[..., 0]
        if sem.numel() and (int(sem.min()) < 0 or int(sem.max()) >= self.cfg.n_codes):
            raise ValueError(f"codes must be in [0, {self.cfg.n_codes}), got [{int(sem.min())}, {int(sem.max())}]: "
                             "tokens of another codec?")
        b, t = sem.shape
        x = self.embed(sem)
        if cols > 1:
            ac = codes[..., 1:]
            if ac.numel() and (int(ac.min()) < 0 or int(ac.max()) >= self.cfg.acoustic_codes):
                raise ValueError(f"acoustic codes must be in [0, {self.cfg.acoustic_codes}), got "
                                 f"[{int(ac.min())}, {int(ac.max())}]: tokens of another codec?")
            x = x + self.acoustic_proj(self.acoustic_embed(ac).flatten(2))
        pad = None
        if lengths is not None:
            pad = torch.arange(t, device=codes.device)[None] >= lengths.to(codes.device)[:, None]
            x = x.masked_fill(pad[..., None], 0.0)
        x = x + self.conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.encoder(x, src_key_padding_mask=pad)
        return self.out(self.norm(x)).view(b, t * self.cfg.upsample, self.n_out).log_softmax(-1)

    @torch.no_grad()
    def log_probs(self, codes: Tensor) -> Tensor:
        """One clip's codes ``[T]`` (``[T, 1 + acoustic_per_frame]`` for a reader of both streams) ->
        ``[T * upsample, C]`` log-probs (eval mode)."""
        was = self.training
        self.eval()
        codes = torch.as_tensor(codes).long().to(self.embed.weight.device)
        try:
            return self(codes.view(1, -1) if self.cfg.columns == 1 else codes[None])[0].float()
        finally:
            self.train(was)

    def transcribe(self, codes: Tensor) -> str:
        """Greedy CTC: the best path, repeats merged, blanks dropped."""
        return ctc_greedy(self.log_probs(codes), self.blank, self.cfg.alphabet)

    def save_pretrained(self, directory: str | Path, extra: dict | None = None) -> Path:
        from codec.runtime import save_safetensors

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {"format_version": FORMAT_VERSION, "config": asdict(self.cfg), **(extra or {})}
        (d / "config.json").write_text(json.dumps(meta, indent=1))
        save_safetensors({k: v.detach().contiguous() for k, v in self.state_dict().items()}, str(d / "model.safetensors"))
        return d

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> CTCReader:
        from safetensors.torch import load_file

        d = Path(directory)
        if not (d / "config.json").exists() or not (d / "model.safetensors").exists():
            raise FileNotFoundError(f"{d} is not a CTC reader dir (config.json + model.safetensors)")
        meta = json.loads((d / "config.json").read_text())
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{d}: CTC reader format {meta.get('format_version')}, this code reads {FORMAT_VERSION}")
        model = cls(ReaderConfig(**meta["config"]))
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        return model.eval()


def ctc_greedy(logp: Tensor, blank: int, alphabet: str = ALPHABET) -> str:
    from slm.eval.probe import greedy_decode

    return " ".join("".join(alphabet[i] for i in greedy_decode(logp, len(logp), blank)).split())


# --- training -----------------------------------------------------------------------------------------


@dataclass
class ReaderTrainConfig:
    token_dir: str = ""
    out_dir: str = ""
    steps: int = 3000
    batch_size: int = 16
    lr: float = 1.5e-3
    warmup: float = 0.08  # share of the steps
    weight_decay: float = 0.01
    eval_every: int = 500
    eval_items: int = 200
    seed: int = 0
    reader: dict = field(default_factory=dict)  # ReaderConfig fields
    acoustic: bool = False  # read the acoustic stream too (its codebook size and codes per frame from the tokens)
    # token noise against overfitting to the train voices: each code replaced by a random one with probability
    # `substitute`; and about `time_mask` of the frames, in spans of 1..`mask_span`, replaced by random codes
    substitute: float = 0.0
    time_mask: float = 0.0
    mask_span: int = 4

    def __post_init__(self) -> None:
        for k in ("substitute", "time_mask"):
            if not 0.0 <= getattr(self, k) < 1.0:
                raise ValueError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if self.mask_span < 1:
            raise ValueError(f"mask_span must be >= 1, got {self.mask_span}")


def reader_codes(semantic: Tensor, acoustic: Tensor | None, columns: int) -> Tensor:
    """What a reader with ``columns`` code columns reads from one clip: ``semantic [T]`` as it is (1 column), or
    ``[T, 1 + L]`` with the per-frame acoustic codes ``[T, L]`` (``Utterance.acoustic``) beside it."""
    semantic = torch.as_tensor(semantic).long().flatten()
    if columns == 1:
        return semantic
    if acoustic is None or acoustic.dim() != 2 or acoustic.shape != (len(semantic), columns - 1):
        got = None if acoustic is None else tuple(acoustic.shape)
        raise ValueError(f"this reader reads {columns - 1} acoustic codes per semantic frame ([{len(semantic)}, "
                         f"{columns - 1}]), got {got}: tokens without the acoustic stream, or of another codec")
    return torch.cat([semantic[:, None], acoustic.long()], 1)


def _pairs(utts, columns: int = 1) -> list[tuple[Tensor, Tensor]]:
    out = []
    for u in utts:
        ids = char_ids(u.text)
        if len(ids):
            out.append((reader_codes(u.semantic, u.acoustic, columns), ids))
    return out


def corrupt(codes: Tensor, lengths: Tensor, sizes: list[int], substitute: float, time_mask: float,
            mask_span: int) -> Tensor:
    """Token noise for training (draws from torch's global RNG): codes ``[B, T]`` or ``[B, T, C]`` with column
    ``c``'s codebook size ``sizes[c]``. Each code becomes a random one with probability ``substitute``; spans
    of 1..``mask_span`` frames covering about ``time_mask`` of each clip get random codes in every column."""
    if not substitute and not time_mask:
        return codes
    x = codes if codes.dim() == 3 else codes[..., None]
    b, t, c = x.shape
    rand = torch.stack([torch.randint(0, n, (b, t)) for n in sizes], -1)
    hit = torch.rand(b, t, c) < substitute
    if time_mask:
        n_spans = (lengths.float() * time_mask / ((mask_span + 1) / 2)).round().long()
        frame = torch.arange(t)
        for i in range(b):
            for _ in range(int(n_spans[i])):
                w = int(torch.randint(1, mask_span + 1, ()))
                s0 = int(torch.randint(0, max(1, int(lengths[i]) - w + 1), ()))
                hit[i, (frame >= s0) & (frame < s0 + w)] = True
    x = torch.where(hit, rand, x)
    return x if codes.dim() == 3 else x[..., 0]


def ctc_fits(n_frames: int, ids: Tensor, upsample: int) -> bool:
    """Whether CTC can emit ``ids`` from ``n_frames * upsample`` outputs (a blank between repeated characters)."""
    repeats = int((ids[1:] == ids[:-1]).sum()) if len(ids) > 1 else 0
    return n_frames * upsample >= len(ids) + repeats


def error_rates(model: CTCReader, items: list[tuple[Tensor, Tensor]]) -> dict:
    import jiwer

    refs = ["".join(model.cfg.alphabet[i] for i in t.tolist()) for _, t in items]
    hyps = [model.transcribe(c) or "-" for c, _ in items]
    return {"cer": float(jiwer.cer(refs, hyps)), "wer": float(jiwer.wer(refs, hyps)), "items": len(items)}


def train_reader(cfg: ReaderTrainConfig, progress: bool = True, stop_after: int | None = None) -> dict:
    """Train a reader on ``cfg.token_dir``'s train split (its valid split, when present, is scored every
    ``eval_every`` steps). Checkpoints ``out_dir/state.pt`` at each evaluation and resumes from it; the
    final reader goes to ``out_dir/reader``. ``stop_after``: leave after that many steps of this run, its state saved (rerun to resume)."""
    from tqdm import tqdm

    from slm.eval.probe import ctc_batch
    from slm.lm_data import load_tokens

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    utts = load_tokens(cfg.token_dir, "train")
    if not any(char_ids(u.text).numel() for u in utts):
        raise ValueError(f"{cfg.token_dir}: no train utterances with text")
    extra: dict = {}
    if cfg.acoustic:
        per_frame = {int(u.acoustic.shape[-1]) if u.acoustic.dim() == 2 else 0 for u in utts}
        if len(per_frame) != 1 or 0 in per_frame:
            raise ValueError(f"{cfg.token_dir}: acoustic=True needs acoustic codes on every frame of every "
                             f"utterance (codes per frame seen: {sorted(per_frame)})")
        top = int(max(int(u.acoustic.max()) for u in utts if u.acoustic.numel()))
        # the codebook size: the smallest power of two above the largest code seen (codebooks are; a code
        # unseen in training must still be readable at inference). reader: {acoustic_codes: N} overrides it
        extra = {"acoustic_per_frame": per_frame.pop(), "acoustic_codes": 1 << top.bit_length()}
    rcfg = ReaderConfig(**{"n_codes": 1, **extra, **cfg.reader})
    train = _pairs(utts, rcfg.columns)
    valid = _pairs(load_tokens(cfg.token_dir, "valid", limit=cfg.eval_items), rcfg.columns)
    seen = [int(max(int(c.view(len(c), -1)[:, j].max()) for c, _ in train)) + 1 for j in range(rcfg.columns)]
    if "n_codes" not in cfg.reader:
        rcfg.n_codes = seen[0]  # as before: the semantic codes the reader was trained on
    sizes = [rcfg.n_codes] + [rcfg.acoustic_codes] * (rcfg.columns - 1)
    if any(n < m for n, m in zip(sizes, seen)):
        raise ValueError(f"reader codebook sizes {sizes} < the largest codes in {cfg.token_dir} + 1 ({seen})")
    n_all = len(train)
    train = [p for p in train if ctc_fits(len(p[0]), p[1], rcfg.upsample)]  # CTC would give them zero loss
    if not train:
        raise ValueError(f"{cfg.token_dir}: no train utterance has enough frames for its characters at upsample "
                         f"{rcfg.upsample}; raise the reader's upsample")
    if len(train) < n_all:
        print(f"ctc reader: {n_all - len(train)} of {n_all} train utterances have fewer outputs than characters "
              f"(upsample {rcfg.upsample}) and are left out")
    torch.manual_seed(cfg.seed)
    model = CTCReader(rcfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps, pct_start=cfg.warmup)
    ctc = nn.CTCLoss(blank=model.blank, zero_infinity=True)
    log: list[dict] = []
    step = 0
    state_f = out / "state.pt"
    if state_f.exists():
        st = torch.load(state_f, weights_only=False)
        if st["reader"] != asdict(rcfg) or st["steps"] != cfg.steps:
            raise ValueError(f"{state_f} was written by another reader config or step count; remove it to start over")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, log = st["step"], st["log"]
        torch.set_rng_state(st["torch_rng"])  # dropout draws on: the resumed run is the uninterrupted one
    rng = random.Random(cfg.seed)
    for _ in range(step):  # the data order is a function of the step: a resumed run draws what it would have
        rng.sample(range(len(train)), min(cfg.batch_size, len(train)))
    model.train()
    bar = tqdm(total=cfg.steps, initial=step, desc="ctc reader", disable=not progress)
    t0, losses, start, saved = time.time(), [], step, step

    def save() -> None:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                    "log": log, "reader": asdict(rcfg), "steps": cfg.steps,
                    "torch_rng": torch.get_rng_state()}, state_f.with_suffix(".tmp"))
        state_f.with_suffix(".tmp").replace(state_f)
        (out / "train_log.json").write_text(json.dumps(log, indent=1))

    while step < cfg.steps:
        idx = rng.sample(range(len(train)), min(cfg.batch_size, len(train)))
        codes, lens, tgt, tlens = ctc_batch([train[i] for i in idx])
        codes = corrupt(codes, lens, sizes, cfg.substitute, cfg.time_mask, cfg.mask_span)
        logp = model(codes, lens)
        loss = ctc(logp.transpose(0, 1), tgt, lens * rcfg.upsample, tlens)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            row = {"step": step, "loss": sum(losses) / len(losses), "seconds": round(time.time() - t0, 1)}
            if valid:
                row.update({f"valid_{k}": v for k, v in error_rates(model, valid).items()})
                model.train()
            log.append(row)
            losses = []
            save()
            saved = step
        if stop_after is not None and step - start >= stop_after:
            if saved != step:  # leaving between evaluations: the steps made since are kept for the resume
                save()
            break
    bar.close()
    if step >= cfg.steps:
        model.save_pretrained(out / "reader", extra={"token_dir": str(cfg.token_dir), "steps": cfg.steps,
                                                    "log": log})
    return {"step": step, "log": log}


# --- CTC prefix scores and joint decoding --------------------------------------------------------------


class CTCPrefixScorer:
    """Exact CTC prefix probabilities of character strings under one clip's log-probs ``[T, C]``.

    For a prefix ``h`` it keeps, per frame t, the log-probability of the paths that have emitted exactly ``h``
    by frame t and end in a non-blank (``r_n``) or a blank (``r_b``); the prefix score ``psi(h)`` is the
    probability that the transcript starts with ``h``, and ``full(h) = r_n[T-1] + r_b[T-1]`` that it is ``h``.
    Extending a prefix by one character is a first-order linear recurrence in t, solved here in closed form
    with cumulative sums and ``logcumsumexp`` (vectorised over frames, no Python loop over t). Prefix states
    are memoised, so a beam's shared prefixes are computed once."""

    def __init__(self, logp: Tensor, blank: int, alphabet: str = ALPHABET):
        self.x = logp.double().cpu()
        self.T = self.x.shape[0]
        self.blank = blank
        self.index = {c: i for i, c in enumerate(alphabet)}
        self._B = self.x[:, blank].cumsum(0)
        neg = torch.full((self.T,), -math.inf, dtype=torch.float64)
        self._memo: dict[str, tuple[Tensor, Tensor, float]] = {"": (neg, self._B.clone(), 0.0)}

    def _state(self, h: str) -> tuple[Tensor, Tensor, float]:
        if h in self._memo:
            return self._memo[h]
        g = h[:-1]
        rn_g, rb_g, _ = self._state(g)
        c = self.index[h[-1]]
        a = self.x[:, c]
        phi = rb_g if g and g[-1] == h[-1] else torch.logaddexp(rn_g, rb_g)  # [T]: g emitted by frame t
        start = torch.tensor([0.0 if not g else -math.inf], dtype=torch.float64)  # the empty prefix at t = -1
        prev = torch.cat([start, phi[:-1]])  # phi[t-1]
        A = a.cumsum(0)
        A_prev = torch.cat([torch.zeros(1, dtype=torch.float64), A[:-1]])
        rn = A + torch.logcumsumexp(prev - A_prev, 0)
        B = self._B
        w = torch.cat([torch.tensor([-math.inf], dtype=torch.float64), rn[:-1] - B[:-1]])
        rb = B + torch.logcumsumexp(w, 0)
        psi = float(torch.logsumexp(prev + a, 0))
        self._memo[h] = (rn, rb, psi)
        return self._memo[h]

    def prefix(self, h: str) -> float:
        """log P(transcript starts with ``h``); ``h`` in the scorer's alphabet."""
        return self._state(h)[2]

    def full(self, h: str) -> float:
        """log P(transcript == ``h``)."""
        rn, rb, _ = self._state(h)
        return float(torch.logaddexp(rn[-1], rb[-1]))


@dataclass
class JointConfig:
    ctc_weight: float = 0.7  # w above: 0 is the LM alone (beam search), 1 the reader alone with the LM's tokens
    beam: int = 4
    pre_beam: int = 30  # LM candidates per hypothesis that get a CTC score
    max_new_tokens: int = 200

    def __post_init__(self) -> None:
        if not 0.0 <= self.ctc_weight <= 1.0:
            raise ValueError(f"ctc_weight must be in [0, 1], got {self.ctc_weight}")
        if self.beam < 1 or self.pre_beam < 1 or self.max_new_tokens < 1:
            raise ValueError("beam, pre_beam and max_new_tokens must be >= 1")


@torch.no_grad()
def joint_transcribe(model: nn.Module, tokenizer, prompt: Tensor, text_ids: Tensor, eos_id: int, scorer: CTCPrefixScorer,
                     cfg: JointConfig | None = None) -> list[int]:
    """Beam search over text ids ``text_ids`` (``[A]``) after ``prompt`` (the plain ASR form), scoring each
    hypothesis by ``(1 - w) log p_LM + w log p_CTC`` (CTC prefix score while open, full score once ended by
    ``eos_id``). A text token that adds nothing the reader spells (punctuation) costs only its LM score; one
    whose characters are not in the reader's alphabet cannot occur (they normalise away). Returns the best
    ended hypothesis' ids (without eos), or the best open one when none ended within ``max_new_tokens``."""
    cfg = cfg or JointConfig()
    w = cfg.ctc_weight
    dev = next(model.parameters()).device
    allowed = torch.cat([text_ids.to(dev), torch.tensor([eos_id], device=dev)]).unique()
    eos_j = int((allowed == eos_id).nonzero()[0, 0])
    out = model(input_ids=prompt.view(1, -1).to(dev), use_cache=True, logits_to_keep=1)
    cache, kw = out_cache(out), cache_kw(model)
    logits = out.logits[:, -1].float()
    # open hypotheses: (ids, lm log-prob, characters)
    beams: list[tuple[list[int], float, str]] = [([], 0.0, "")]
    ended: list[tuple[float, list[int]]] = []
    text_cache: dict[tuple[int, ...], str] = {}

    def chars(ids: list[int]) -> str:
        key = tuple(ids)
        if key not in text_cache:
            text_cache[key] = normalize(tokenizer.decode(ids, skip_special_tokens=True))
        return text_cache[key]

    for _ in range(cfg.max_new_tokens):
        lp = logits[:, allowed].log_softmax(-1)  # [nb, A]: the LM over text + eos
        cands: list[tuple[float, int, int, float, str]] = []  # (score, beam, token, lm, chars)
        k = min(cfg.pre_beam, lp.shape[1])
        top = lp.topk(k, -1)
        for b, (ids, lm, ch) in enumerate(beams):
            # ending is always a candidate (whatever the LM's rank for it): the ended scores bound the search
            ended.append(((1 - w) * (lm + float(lp[b, eos_j])) + w * scorer.full(ch), ids))
            for v, j in zip(top.values[b].tolist(), top.indices[b].tolist()):
                tok = int(allowed[j])
                if tok == eos_id:
                    continue
                lm2 = lm + v
                ch2 = chars(ids + [tok])
                cands.append(((1 - w) * lm2 + w * scorer.prefix(ch2), b, tok, lm2, ch2))
        cands.sort(key=lambda c: -c[0])
        cands = cands[: cfg.beam]
        best_end = max((s for s, _ in ended), default=-math.inf)
        if not cands or cands[0][0] < best_end:  # no open hypothesis can still beat an ended one (scores only fall)
            break
        beams = [(beams[b][0] + [tok], lm2, ch2) for _, b, tok, lm2, ch2 in cands]
        cache.reorder_cache(torch.tensor([b for _, b, _, _, _ in cands], device=dev))
        out = model(input_ids=torch.tensor([[t] for _, _, t, _, _ in cands], device=dev),
                    use_cache=True, logits_to_keep=1, **{kw: cache})
        cache = out_cache(out)
        logits = out.logits[:, -1].float()
    if ended:
        return max(ended, key=lambda e: e[0])[1]
    return beams[0][0]
