"""`slm train | tts | asr | continue | head-tokens | head-fit | ctc-reader`: fine-tune and run the speech LM."""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from slm import ASR_METHODS, READER_ASR_METHODS
from slm.cli import add_int8_flag, seed_arg


def register(subparsers) -> None:
    t = subparsers.add_parser("train", help="fine-tune a causal LM (LoRA) + acoustic head on codec tokens")
    t.add_argument("--config", required=True, help="YAML (see configs/lm/)")
    t.add_argument("--backbone", default=None, help="override: hub id, local dir or smollm2-135m")
    t.add_argument("--out-dir", default=None, help="override the config's out_dir")
    t.add_argument("--codec", default=None, help="override the codec dir")
    t.add_argument("--tokens", default=None, help="override the token dir (from `slm codec tokenize`)")
    t.add_argument("--init-from", default=None,
                   help="fine-tune a trained speech-LM dir further ('default': the bundled model): its adapter and "
                        "head are the start, its codec the default codec")
    t.add_argument("--steps", type=int, default=None, help="override the number of optimizer steps")
    t.add_argument("--stop-after", type=int, default=None, help="leave after N steps (resume later)")
    t.set_defaults(func=_train)

    s = subparsers.add_parser("tts", help="text -> speech with a trained speech-LM dir")
    s.add_argument("text", nargs="?")
    s.add_argument("--model", default="default")
    s.add_argument("--out", help="output .wav")
    s.add_argument("--voice", default=None, help="voice name (see --list-voices) or a reference wav")
    s.add_argument("--list-voices", action="store_true", help="print the model's bundled voices and exit")
    _sampling_args(s)
    s.add_argument("--max-seconds", type=float, default=20.0)
    s.add_argument("--best-of", type=int, default=None, metavar="N",
                   help="sample N candidates per sentence (decoded side by side), speak the one the CTC reader "
                        "reads best (int8 on CPU: N=4 takes ~1.7x the time of 1)")
    s.add_argument("--best-of-words", type=int, default=None, metavar="W",
                   help="with --best-of: choose every W words (aligned form) rather than once per sentence, so "
                        "speech starts after W words' candidates (0: once per sentence)")
    form = s.add_mutually_exclusive_group()
    form.add_argument("--aligned", dest="aligned", action="store_true", default=None,
                      help="feed each word before its frames (the default of models trained with tts_aligned)")
    form.add_argument("--plain", dest="aligned", action="store_false", help="speak from the whole sentence only")
    s.add_argument("--batch", default=None, metavar="FILE",
                   help="speak every line of FILE (text, or name<TAB>text) into --out-dir, one model load; "
                        "resumable: rerun to finish an interrupted batch")
    s.add_argument("--out-dir", default=None, metavar="DIR",
                   help="with --batch: DIR/<name>.wav per line and DIR/manifest.jsonl")
    s.add_argument("--timings", default=None, metavar="FILE",
                   help="also write when each word is spoken: FILE.srt (subtitles) or JSON (any other name); "
                        "per sentence in the plain form")
    s.set_defaults(func=_tts)

    a = subparsers.add_parser("asr", help="speech -> text by the speech LM (one file, many, or long recordings)",
                              description="Transcribe audio files with a speech-LM dir. Recordings longer than "
                                          "--segment-seconds are split at their pauses and read piece by piece; "
                                          "several files load the model once (README 'Batch and long-form use').")
    a.add_argument("wav", nargs="*", help="audio file(s): wav/flac/ogg, anything else through ffmpeg")
    a.add_argument("--list", default=None, metavar="FILE",
                   help="more inputs: a text file with one audio path per line, or a .jsonl manifest (its 'path' "
                        "keys, relative to the manifest's folder, as `slm data` writes them)")
    a.add_argument("--out", default=None, metavar="FILE.jsonl",
                   help="write one JSON line per file (audio, seconds, text, timed segments) as each is done; "
                        "rerunning with the same --out skips the files already in it")
    a.add_argument("--srt", default=None, metavar="FILE.srt", help="subtitles of one input, one cue per segment")
    a.add_argument("--segment-seconds", type=float, default=8.0,
                   help="audio longer than this is split at pauses into segments of at most this (default 8 s)")
    a.add_argument("--skip-bad", action="store_true",
                   help="note unreadable, empty or too long inputs on stderr and go on (default: stop before the "
                        "model loads, naming the file)")
    a.add_argument("--model", default="default")
    add_int8_flag(a)
    aform = a.add_mutually_exclusive_group()
    aform.add_argument("--aligned", dest="aligned", action="store_true", default=None,
                       help="write each word right after its frames, printing words as they come (the default of "
                            "models trained with asr_aligned)")
    aform.add_argument("--plain", dest="aligned", action="store_false", help="the transcript after the whole audio")
    a.add_argument("--method", choices=ASR_METHODS, default=None,
                   help="fused: the model's CTC reader's beam search kept to a lexicon's words and scored by the "
                        "backbone's LM; joint: the LM's beam search scored by the reader; lm: the LM alone (--aligned "
                        "/ --plain); ctc: the reader alone (default: the model's asr_method, else lm)")
    a.add_argument("--lexicon", default=None, metavar="SPEC",
                   help="with --method fused: 'wordfreq:N' (the N most frequent English words) or a word list "
                        "(one word per line, optionally word<TAB>count), e.g. your domain's vocabulary")
    a.add_argument("--lm-weight", type=finite_float, default=None, help="with --method fused: the LM's weight")
    a.add_argument("--lm-dtype", choices=("auto", "float32", "bfloat16"), default=None,
                   help="with --method fused: the LM's weights (default auto: bfloat16 where the CPU or GPU has "
                        "bf16 units, ~2x faster here; float32 gives the exact float32 scores)")
    a.add_argument("--lm-lag", type=int, default=None, metavar="FRAMES",
                   help="with --method fused: frames a newly ended word may wait for its LM score, so that words "
                        "ending close together share one LM forward (default: the model's setting; 0: exact)")
    a.add_argument("--max-input-seconds", type=positive_seconds, default=MAX_ASR_SECONDS,
                   help=f"refuse input audio longer than this (default {MAX_ASR_SECONDS:g} s)")
    a.set_defaults(func=_asr)

    c = subparsers.add_parser("continue", help="continue the speech in a wav")
    c.add_argument("wav")
    c.add_argument("--model", default="default")
    c.add_argument("--seconds", type=float, default=3.0)
    c.add_argument("--out", required=True)
    _input_seconds_arg(c)
    _sampling_args(c)
    c.set_defaults(func=_continue)

    h = subparsers.add_parser("head-tokens", help="per utterance of a manifest: its semantic tokens with the acoustic "
                                                  "codes the model's head gives them (for a decoder fine-tune)")
    h.add_argument("model", help="a trained speech-LM dir ('default': the bundled model)")
    h.add_argument("--manifest", required=True)
    h.add_argument("--out", required=True, help="token dir to write (resumable)")
    h.add_argument("--split", default="train", help="manifest split ('all': every utterance)")
    h.add_argument("--limit", type=int, default=None, help="the first N utterances of the split")
    h.add_argument("--seed", type=seed_arg, default=0)
    h.set_defaults(func=_head_tokens)

    _head_fit_args(subparsers)

    r = subparsers.add_parser("ctc-reader", help="train the CTC reader of a token dir's semantic tokens (joint ASR)")
    rsub = r.add_subparsers(dest="reader_cmd", required=True)
    rt = rsub.add_parser("train", help="train on TOKENS' train split (valid split scored), resumable")
    rt.add_argument("--tokens", required=True, help="token dir (`slm codec tokenize`) of the model's codec")
    rt.add_argument("--out", required=True, help="work dir: state.pt (resume), train_log.json, reader/ (final)")
    rt.add_argument("--steps", type=int, default=3000)
    rt.add_argument("--batch-size", type=int, default=16)
    rt.add_argument("--lr", type=float, default=1.5e-3)
    rt.add_argument("--eval-every", type=int, default=500)
    rt.add_argument("--stop-after", type=int, default=None, help="leave after N steps (resume later)")
    for k, h in (("dim", "width (192)"), ("layers", "transformer layers (4)"), ("heads", "attention heads (4)"),
                 ("upsample", "CTC outputs per frame (2)")):
        rt.add_argument(f"--{k}", type=int, default=None, help=f"reader {h}")
    rt.add_argument("--acoustic", action="store_true",
                    help="read the acoustic codes too (beside each semantic frame's code)")
    rt.add_argument("--substitute", type=float, default=0.0,
                    help="training noise: each code replaced by a random one with this probability")
    rt.add_argument("--time-mask", type=float, default=0.0,
                    help="training noise: about this share of frames, in spans of 1-4, get random codes")
    rt.add_argument("--install", default=None, metavar="MODEL_DIR",
                    help="when done, copy the reader into MODEL_DIR/ctc_reader (its ASR then decodes jointly)")
    rt.add_argument("--ctc-weight", type=float, default=None, help="with --install: the model's joint ASR weight")
    rt.add_argument("--beam", type=int, default=None, help="with --install: the model's joint ASR beam")
    rt.add_argument("--pre-beam", type=int, default=None, help="with --install: LM candidates per beam CTC-scored")
    rt.add_argument("--lm-weight", type=float, default=None, help="with --install: the model's fused ASR LM weight")
    rt.add_argument("--word-bonus", type=float, default=None, help="with --install: the model's fused ASR word bonus")
    rt.add_argument("--fused-beam", type=int, default=None, help="with --install: the model's fused ASR beam")
    rt.add_argument("--lexicon", default=None, metavar="SPEC",
                    help="with --install: the model's fused ASR lexicon ('wordfreq:N' or a word-list file; a "
                         "relative path is read from the model dir)")
    rt.add_argument("--method", choices=ASR_METHODS, default=None,
                    help="with --install: the model's default ASR method (unset: the LM)")
    rt.set_defaults(func=_reader_train)


def _head_fit_args(subparsers) -> None:
    f = subparsers.add_parser("head-fit", help="train a model's acoustic head afresh on its frozen LM, from cached "
                                               "hidden states (e.g. a head with acoustic context); writes a new model dir")
    f.add_argument("model", help="a trained speech-LM dir ('default': the bundled model)")
    f.add_argument("--manifest", required=True, help="utterances to cache (train split to fit, valid to select)")
    f.add_argument("--work", required=True, help="work dir: cache/ (hidden states, resumable), fit/ (run, resumable)")
    f.add_argument("--out", required=True, help="the new model dir: a copy of MODEL with the fitted head")
    f.add_argument("--limit", type=int, default=None, help="cache the first N utterances of each split")
    f.add_argument("--cache", default=None, help="the hidden-state cache (default WORK/cache; runs of other head "
                                                 "shapes on the same model can share one)")
    f.add_argument("--context", type=int, default=2, help="previous frames of acoustic codes each frame sees (0: none)")
    f.add_argument("--context-dropout", type=float, default=0.0,
                   help="blank a frame's context in training with this probability")
    f.add_argument("--dim", type=int, default=None, help="head width (default: the model's head's)")
    f.add_argument("--layers", type=int, default=None, help="head layers (default: the model's head's)")
    f.add_argument("--heads", type=int, default=None, help="attention heads (default: the model's head's)")
    f.add_argument("--init", action="store_true",
                   help="start from the model's own head (its width and depth; --context adds new context "
                        "weights to it)")
    f.add_argument("--steps", type=int, default=4000)
    f.add_argument("--batch-frames", type=int, default=1024)
    f.add_argument("--lr", type=float, default=1e-3)
    f.add_argument("--eval-every", type=int, default=250)
    f.add_argument("--seed", type=seed_arg, default=0)
    f.set_defaults(func=_head_fit)


def _head_fit(args) -> int:
    import json
    from pathlib import Path

    from slm.head_fit import HeadFitConfig, cache_head_features, fit_head, write_model
    from slm.pipeline import model_dir

    src = model_dir(args.model)
    work = Path(args.work)
    cache = Path(args.cache) if args.cache else work / "cache"
    info = cache_head_features(src, args.manifest, cache, limit=args.limit)
    if args.init:
        if any(x is not None for x in (args.dim, args.layers, args.heads)):
            raise SystemExit("--init keeps the model's head width and depth: drop --dim/--layers/--heads")
        head = {"context": args.context, "context_dropout": args.context_dropout}
    else:
        base = json.loads((src / "acoustic_head.json").read_text())
        head = {"context": args.context, "context_dropout": args.context_dropout,
                "dim": args.dim or base["dim"], "n_layers": args.layers or base["n_layers"],
                "n_heads": args.heads or base["n_heads"]}
    cfg = HeadFitConfig(cache=str(cache), out=str(work / "fit"), head=head,
                        init_from=str(src) if args.init else None, steps=args.steps, batch_frames=args.batch_frames,
                        lr=args.lr, warmup=min(200, args.steps // 10), eval_every=args.eval_every, seed=args.seed)
    rec = fit_head(cfg)
    best = min((json.loads(x) for x in (work / "fit" / "log.jsonl").read_text().splitlines()),
               key=lambda r: r["valid_loss"])
    dest = write_model(src, work / "fit" / "best", args.out,
                       {"manifest": info["manifest"],
                        "data": json.loads((work / "fit" / "run.json").read_text())["data"], "steps": cfg.steps,
                        "batch_frames": cfg.batch_frames, "lr": cfg.lr, "best_step": best["step"],
                        "valid_loss": round(best["valid_loss"], 4), "valid_acc": round(best["valid_acc"], 4)})
    print(f"last: {rec}\nbest on valid: step {best['step']}, loss {best['valid_loss']:.4f} -> {dest}")
    return 0


def _head_tokens(args) -> int:
    from slm.head_tokens import head_token_dir

    n = head_token_dir(args.model, args.manifest, args.out, None if args.split == "all" else args.split,
                       args.limit, args.seed)
    print(f"{n} utterances -> {args.out}/index.jsonl")
    return 0


def _sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=seed_arg, default=None)
    add_int8_flag(p)
    p.add_argument("--semantic-only", action="store_true", default=None,
                   help="speak from the semantic tokens alone, without the acoustic head (codecs trained with "
                        "acoustic_dropout; README 'Speaking from the semantic stream')")


def _train(args) -> int:
    from codec.runtime import leave_rank, multi_process
    from slm.train import TrainConfig, deepspeed_launch, train

    cfg = TrainConfig.from_yaml(args.config, backbone=args.backbone, out_dir=args.out_dir, steps=args.steps,
                                codec=args.codec, tokens=args.tokens, init_from=args.init_from)
    final = train(cfg, stop_after=args.stop_after)
    if int(os.environ.get("RANK", "0")) == 0:  # one line for a multi-process run, from rank 0
        print(f"model dir: {final}" if final.exists() else f"stopped; resume with the same command ({cfg.out_dir})")
    if deepspeed_launch() or multi_process():
        leave_rank()
    return 0


# A longer continuation prompt is refused (before the model loads) rather than silently cut: the models are trained
# on sentences and the prompt is read whole. Trim it, or raise the bound on purpose.
MAX_INPUT_SECONDS = 60.0
# ASR splits long recordings at pauses, so it takes up to an hour by default (a bound all the same: a file of
# days is a mistake worth a message, not hours of work).
MAX_ASR_SECONDS = 3600.0


def positive_seconds(value: str) -> float:
    """argparse type: a finite number of seconds > 0."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {value!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {value}")
    return x


def finite_float(value: str) -> float:
    """argparse type: a finite number."""
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {value!r}") from None
    if not math.isfinite(x):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {value}")
    return x


def _check_sampling(args, **more) -> None:
    """The sampling options over the model dir's own settings (slm_config.json), checked before the (slow) model
    load: a bad top-k/top-p, or --best-of-words without candidates to choose from, fails at once."""
    import dataclasses

    from slm.pipeline import model_sampling

    given = {k: v for k, v in (("temperature", args.temperature), ("top_k", args.top_k), ("top_p", args.top_p),
                               *more.items()) if v is not None}
    s = dataclasses.replace(model_sampling(args.model), **given)
    if more.get("best_of_words") and s.best_of == 1:
        raise ValueError(f"--best-of-words {more['best_of_words']} chooses among candidates, and the model's best_of "
                         "is 1: give --best-of N (N > 1) as well")


def _check_asr_options(args) -> None:
    """Options that tune one ASR method are refused with another (they would be ignored), before the model loads;
    the lexicon and the fused settings are checked here too. ``--aligned`` / ``--plain`` without ``--method``
    choose the LM's own ASR (``args.method = "lm"``) whatever the model's default method."""
    from slm.pipeline import model_dir, read_model_config

    fused = {k: getattr(args, k) for k in ("lexicon", "lm_weight", "lm_dtype", "lm_lag") if getattr(args, k) is not None}
    if not fused and args.aligned is None:
        return
    d = model_dir(args.model)
    method = args.method or read_model_config(d).get("asr_method") or "lm"
    if args.aligned is not None and method != "lm":
        form = "--aligned" if args.aligned else "--plain"
        if args.method is not None:
            raise ValueError(f"{form} chooses the LM's form, and --method {method} reads with the CTC reader: "
                             "use --method lm")
        args.method = method = "lm"  # the form of the LM's own transcript asks for that method over the model's default
    if fused and method != "fused":
        flags = " ".join(f"--{k.replace('_', '-')}" for k in fused)
        raise ValueError(f"{flags} tune the fused ASR, and the method here is {method!r}: add --method fused")
    if fused:
        from slm.fused_asr import FusionConfig, Lexicon

        FusionConfig(**fused)
        if args.lexicon is not None:
            Lexicon.check_spec(args.lexicon, d)


def _input_seconds_arg(p) -> None:
    p.add_argument("--max-input-seconds", type=positive_seconds, default=MAX_INPUT_SECONDS,
                   help=f"refuse input audio longer than this (default {MAX_INPUT_SECONDS:g} s; split long recordings)")


def _read_input(args):
    """The input wav at the model's rate, checked before the (slow) model load: a missing, unreadable, empty,
    non-finite or too long file fails at once. Returns ``(wav [1, N], sample_rate)``."""
    from codec.audio import load_audio
    from slm.pipeline import model_sample_rate

    sr = model_sample_rate(args.model)
    wav = load_audio(args.wav, sr, max_seconds=args.max_input_seconds)
    if wav.abs().max() < 1e-4:
        print(f"slm {args.command}: note: {args.wav} is silent (peak below -80 dBFS)", file=sys.stderr)
    return wav, sr


def _pipe(model: str, int8: bool | None = None, semantic_only: bool | None = None):
    from slm.pipeline import SpeechPipeline

    return SpeechPipeline.from_pretrained(model, int8=int8, semantic_only=semantic_only)


def _list_voices(model: str) -> int:
    """Voice names and transcripts from ``<model>/voices/`` (no model is loaded)."""
    from slm.pipeline import model_dir, voice_files

    d = model_dir(model)
    voices = voice_files(d)
    if not voices:
        print(f"{d} has no bundled voices; pass a reference wav as --voice")
    for name, _, text in voices:
        print(f"{name}\t{text}")
    return 0


def _tts(args) -> int:
    from codec.audio import check_audio_out, save_audio

    if args.list_voices:
        return _list_voices(args.model)
    from slm.pipeline import check_text, foreign_letters, model_dir, voice_files

    if args.batch is not None:
        if args.text is not None or args.out is not None or args.timings is not None:
            raise ValueError("--batch takes its texts from the file and writes into --out-dir: "
                             "leave out the text, --out and --timings")
        if args.out_dir is None:
            raise ValueError("--batch needs --out-dir DIR")
        from slm.cli.batch import tts_lines

        items = tts_lines(args.batch)  # every line checked before the (slow) model load
    elif args.text is None or args.out is None:
        raise SystemExit("slm tts: give the text and --out FILE.wav (or --batch FILE --out-dir DIR, or --list-voices)")
    else:
        check_text(args.text)  # before the (slow) model load
        check_audio_out(args.out)
        if n := foreign_letters(args.text):
            print(f"slm tts: note: {n} letter(s) outside English's alphabet; the model speaks English and may "
                  "drop or mispronounce them", file=sys.stderr)
    if args.voice is not None and args.voice not in {v[0] for v in voice_files(model_dir(args.model))} \
            and not os.path.isfile(args.voice):
        raise ValueError(f"unknown voice {args.voice!r}: not a wav file nor one of the model's voices "
                         f"(see `slm tts --list-voices --model {args.model}`)")
    _check_sampling(args, best_of=args.best_of, best_of_words=args.best_of_words)
    pipe = _pipe(args.model, args.int8, args.semantic_only)
    if args.batch is not None:
        from slm.cli.batch import synthesize_lines

        kw = {"voice": args.voice, "temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p,
              "max_seconds": args.max_seconds, "aligned": args.aligned, "best_of": args.best_of,
              "best_of_words": args.best_of_words}
        made = synthesize_lines(pipe, items, args.out_dir, kw, args.seed)
        print(f"{args.out_dir}: {made} new utterances, manifest.jsonl lists {len(items)}")
        return 0
    times: list = []
    wav = pipe.tts(args.text, args.voice, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                   max_seconds=args.max_seconds, seed=args.seed, aligned=args.aligned, best_of=args.best_of,
                   best_of_words=args.best_of_words, timings=times)
    save_audio(args.out, wav, pipe.sample_rate)
    print(f"{args.out}: {wav.shape[-1] / pipe.sample_rate:.2f} s")
    if args.timings:
        from pathlib import Path

        from slm.pipeline import subtitles

        path = Path(args.timings)
        path.write_text(subtitles(times) if path.suffix.lower() == ".srt"
                        else json.dumps([{"text": w.text, "start": w.start, "end": w.end} for w in times], indent=1))
        aligned = pipe.tts_aligned if args.aligned is None else args.aligned
        print(f"{path}: {len(times)} timed {'words' if aligned else 'sentences'}")
    return 0


def _reader_train(args) -> int:
    import shutil
    from pathlib import Path

    from slm.ctc_reader import JointConfig, ReaderTrainConfig, train_reader
    from slm.fused_asr import FusionConfig
    from slm.layout import TokenLayout
    from slm.pipeline import model_dir

    target = None
    joint = {k: getattr(args, k) for k in ("ctc_weight", "beam", "pre_beam") if getattr(args, k) is not None}
    JointConfig(**joint)  # bad values fail before training, not after
    fused = {k: v for k, v in (("lm_weight", args.lm_weight), ("word_bonus", args.word_bonus),
                               ("beam", args.fused_beam), ("lexicon", args.lexicon)) if v is not None}
    FusionConfig(**fused)
    acoustic_size = {}
    if args.install:
        target = model_dir(args.install)
        n_sem = TokenLayout.load(target).n_semantic
        if args.acoustic:  # the codec's acoustic codebook size, not a guess from the codes seen
            from slm.pipeline import codec_dir

            ccfg = json.loads((codec_dir(target, json.loads((target / "slm_config.json").read_text()))
                               / "config.json").read_text())
            acoustic_size = {"acoustic_codes": int(ccfg["codec"]["acoustic_codebook_size"])}
    res = train_reader(ReaderTrainConfig(token_dir=args.tokens, out_dir=args.out, steps=args.steps,
                                         batch_size=args.batch_size, lr=args.lr, eval_every=args.eval_every,
                                         acoustic=args.acoustic, substitute=args.substitute,
                                         time_mask=args.time_mask,
                                         reader={**{k: getattr(args, k) for k in ("dim", "layers", "heads", "upsample")
                                                    if getattr(args, k) is not None},
                                                 # the codebook size, not the largest code seen
                                                 **({"n_codes": n_sem} if target is not None else {}),
                                                 **acoustic_size}),
                       stop_after=args.stop_after)
    if res["log"]:
        print(json.dumps(res["log"][-1]))
    if res["step"] < args.steps:
        print(f"stopped at step {res['step']} of {args.steps}; resume with the same command ({args.out})")
    final = Path(args.out) / "reader"
    if target is not None and res["step"] >= args.steps:
        from slm.ctc_reader import CTCReader

        n_codes = CTCReader.from_pretrained(final).cfg.n_codes
        if n_codes != n_sem:
            raise SystemExit(f"the reader reads {n_codes} codes, {target} has {n_sem}: tokens of another codec")
        shutil.rmtree(target / "ctc_reader", ignore_errors=True)
        shutil.copytree(final, target / "ctc_reader")
        if joint or fused or args.method:
            cfg_f = target / "slm_config.json"
            cfg = json.loads(cfg_f.read_text())
            if joint:
                cfg["asr_joint"] = {**cfg.get("asr_joint", {}), **joint}
            if fused:
                cfg["asr_fused"] = {**cfg.get("asr_fused", {}), **fused}
            if args.method:
                cfg["asr_method"] = args.method
            cfg_f.write_text(json.dumps(cfg, indent=2) + "\n")
        print(f"installed: {target / 'ctc_reader'}")
    return 0


def _asr(args) -> int:
    from slm.cli.batch import asr_inputs, check_inputs, read_done

    paths = asr_inputs(args.wav, args.list)
    if args.srt and len(paths) != 1:
        raise ValueError(f"--srt writes the subtitles of one input, got {len(paths)}; use --out FILE.jsonl for several")
    if not args.segment_seconds > 0:
        raise ValueError(f"--segment-seconds must be > 0, got {args.segment_seconds:g}")
    _check_asr_options(args)
    done = read_done(args.out) if args.out else set()
    todo = [p for p in paths if p not in done]
    if done:
        print(f"slm asr: {len(paths) - len(todo)} of {len(paths)} inputs already in {args.out}", file=sys.stderr)
    if not todo:
        return 0
    seconds = check_inputs(todo, args.max_input_seconds, skip_bad=args.skip_bad)  # before the (slow) model load
    if not seconds:
        return 1  # --skip-bad, and every input was bad (each named on stderr)
    if len(paths) == 1 and not (args.out or args.srt) and seconds[todo[0]] <= args.segment_seconds:
        args.wav = todo[0]  # one short clip: as it always was, words streamed as they come in the aligned form
        wav, sr = _read_input(args)
        return _asr_one(_asr_pipe(args), wav, sr, args)
    from slm.cli.batch import transcribe_files

    pipe = _asr_pipe(args)
    bad = transcribe_files(pipe, [p for p in todo if p in seconds], seconds, args,
                           method=args.method, aligned=args.aligned)
    return 1 if bad or len(seconds) < len(todo) else 0  # 1: --skip-bad left inputs out


def _asr_pipe(args):
    pipe = _pipe(args.model, args.int8)
    named = (("lexicon", args.lexicon), ("lm_weight", args.lm_weight), ("lm_dtype", args.lm_dtype),
             ("lm_lag", args.lm_lag))
    over = {k: v for k, v in named if v is not None}
    if over:
        import dataclasses

        pipe.fusion = dataclasses.replace(pipe.fusion, **over)
    return pipe


def _asr_one(pipe, wav, sr, args) -> int:
    if args.method in READER_ASR_METHODS or (args.method is None and pipe.asr_method != "lm"):
        return _print_transcript(pipe.asr(wav, sr, method=args.method))
    if args.aligned is False or (args.aligned is None and not pipe.asr_aligned):
        return _print_transcript(pipe.asr(wav, sr, aligned=False))
    shown = ""
    for text in pipe.asr_stream(wav, sr):  # words as they are written
        print(text[len(shown):] if text.startswith(shown) else "\n" + text, end="", flush=True)
        shown = text
    print()
    if not shown:
        print("slm asr: no words recognised", file=sys.stderr)
    return 0


def _print_transcript(text: str) -> int:
    print(text)
    if not text.strip():  # stdout keeps its one line per file; the note goes to stderr
        print("slm asr: no words recognised", file=sys.stderr)
    return 0


def _continue(args) -> int:
    from codec.audio import check_audio_out, save_audio

    if not args.seconds > 0:
        raise ValueError(f"--seconds must be > 0, got {args.seconds:g}")
    check_audio_out(args.out)
    _check_sampling(args)
    wav, sr = _read_input(args)
    pipe = _pipe(args.model, args.int8, args.semantic_only)
    wav = pipe.continue_(wav, sr, seconds=args.seconds,
                         temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    save_audio(args.out, wav, pipe.sample_rate)
    print(f"{args.out}: {wav.shape[-1] / pipe.sample_rate:.2f} s of continuation")
    return 0
