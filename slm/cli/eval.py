"""`slm eval ...`: the evaluation suite (EVAL.md). Every figure the project reports comes from here."""
from __future__ import annotations

import argparse
from pathlib import Path

from slm.cli import seed_arg


def _common(p: argparse.ArgumentParser, default_out: str) -> None:
    p.add_argument("--manifest", required=True, help="JSONL manifest (id, path, text, speaker, split, phones)")
    p.add_argument("--split", default="test", help="which split to score (default: test; 'all' for every item)")
    p.add_argument("--limit", type=int, default=None, help="at most N items, spread over synthesizers")
    p.add_argument("--out", default=default_out, help=f"output directory (default: {default_out})")
    p.add_argument("--teacher", default=None, help="teacher spec for codecs that encode with one (sac); "
                   "default: the checkpoint's training.json, else whisper-base-ct2")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("eval", help="evaluate codecs and speech LMs (tables, JSON, plots)")
    sub = p.add_subparsers(dest="eval_command", metavar="EVAL_COMMAND")

    c = sub.add_parser("codec", help="reconstruction table: PESQ, STOI, mel distance, WER, DNSMOS, speaker sim")
    c.add_argument("checkpoints", nargs="*", help="codec dirs (save_pretrained); none: ground truth only "
                   "(Whisper's WER floor and DNSMOS of the data)")
    _common(c, "eval_out/codec")
    c.add_argument("--metrics", default="fidelity,asr,dnsmos,speaker",
                   help="comma list of judges to run (fidelity, asr, dnsmos, speaker)")
    c.add_argument("--whisper", default=None, help="faster-whisper model id or dir for the ASR judge "
                   "(default: the embedded Whisper-base)")
    c.add_argument("--beam", type=int, default=1, help="Whisper beam size (1 = greedy, fast; 5 = paper setting)")
    c.set_defaults(func=_codec)

    s = sub.add_parser("semantic", help="phone purity, cluster purity, PNMI, a frame phone probe and a CTC "
                       "probe per token stream")
    s.add_argument("checkpoints", nargs="+", help="codec dirs (save_pretrained)")
    _common(s, "eval_out/semantic")
    s.add_argument("--train-limit", type=int, default=400, help="train utterances for the probes")
    s.add_argument("--probe-steps", type=int, default=400, help="CTC probe training steps (0: no CTC probe)")
    s.add_argument("--frame-probe-steps", type=int, default=300, help="frame phone probe full-batch steps "
                   "(each sees every train frame; 0: no frame probe)")
    s.set_defaults(func=_semantic)

    for task, helptext in (("tts", ("TTS: Whisper WER per voice, speaker similarity to the prompt, DNSMOS, RTF, "
                                   "time to first audio")),
                           ("asr", "ASR-by-token: WER next to Whisper's WER on the same audio"),
                           ("continue", ("continuation of a 3 s prompt: DNSMOS, speaker similarity, transcript "
                                        "perplexity under the backbone")),
                           ("conditioning", ("does the LM use its input? TTS/ASR target loss with each item's own "
                                            "text/audio vs another item's")),
                           ("head", ("where TTS loses intelligibility: Whisper WER of the corpus audio, of its codec "
                                     "reconstruction, and of its true semantic tokens voiced by the acoustic head"))):
        t = sub.add_parser(task, help=helptext)
        t.add_argument("model", help="speech-LM dir (SpeechPipeline.from_pretrained), or 'default'")
        _common(t, f"eval_out/{task}")
        t.add_argument("--seed", type=seed_arg, default=0, help="sampling seed (tts, continue)")
        t.add_argument("--temperature", type=float, default=None)
        t.add_argument("--seconds", type=float, default=3.0, help="continuation length (continue)")
        if task in ("tts", "asr"):
            t.add_argument("--form", choices=("default", "aligned", "plain"), default="default",
                           help="the aligned or plain form (README 'Aligned TTS' / 'Aligned ASR'); default: the model's")
        t.set_defaults(func=_lm_task, task=task)


def _split(args: argparse.Namespace) -> str | None:
    return None if args.split == "all" else args.split


def _codec(args: argparse.Namespace) -> int:
    from slm.eval.codec_eval import Judges, evaluate_codecs, write_codec_report
    from slm.eval.data import load_items

    items = load_items(args.manifest, _split(args), args.limit)
    judges = Judges(metrics=tuple(m.strip() for m in args.metrics.split(",") if m.strip()),
                    whisper=args.whisper, beam_size=args.beam)
    result = evaluate_codecs(args.checkpoints, items, judges, teacher=args.teacher)
    result["manifest"], result["split"] = str(args.manifest), args.split
    md = write_codec_report(result, args.out)
    print(Path(md).read_text())
    plot = ", codec_eval.png" if (Path(args.out) / "codec_eval.png").exists() and args.checkpoints else ""
    print(f"wrote {md}, codec_eval.json{plot} in {args.out}")
    return 0


def _semantic(args: argparse.Namespace) -> int:
    from slm.eval.data import load_items
    from slm.eval.probe import FrameProbeConfig, ProbeConfig
    from slm.eval.semantic_eval import evaluate_semantic, write_semantic_report

    test = load_items(args.manifest, _split(args), args.limit)
    any_probe = args.probe_steps > 0 or args.frame_probe_steps > 0
    train = load_items(args.manifest, "train", args.train_limit) if any_probe else []
    probe = ProbeConfig(steps=max(0, args.probe_steps))
    frame_probe = FrameProbeConfig(steps=max(0, args.frame_probe_steps))
    results = [evaluate_semantic(c, train, test, probe=probe, teacher=args.teacher, frame_probe=frame_probe)
               for c in args.checkpoints]
    md = write_semantic_report(results, args.out)
    print(Path(md).read_text())
    print(f"wrote {md} and semantic_eval.json in {args.out}")
    return 0


def _lm_task(args: argparse.Namespace) -> int:
    from slm.eval.codec_eval import Judges
    from slm.eval.data import load_items
    from slm.eval.lm_eval import eval_asr, eval_continue, eval_tts
    from slm.eval.report import machine_info, markdown_table, write_json
    from slm.pipeline import SpeechPipeline

    pipe = SpeechPipeline.from_pretrained(args.model)
    items = load_items(args.manifest, _split(args), args.limit, sample_rate=16000)
    judges = (None if args.task == "conditioning" else Judges(metrics=("asr",)) if args.task == "head"  # forward passes only / Whisper only
              else Judges())
    sampling = {"seed": args.seed} | ({} if args.temperature is None else {"temperature": args.temperature})
    aligned = {"default": None, "aligned": True, "plain": False}[getattr(args, "form", "default")]
    if args.task == "tts" and aligned is not None:
        sampling["aligned"] = aligned
    if args.task == "tts":
        r = eval_tts(pipe, items, judges, **sampling)
        rows = [{"voice": "all", **r}] + [{"voice": v, **x} for v, x in r["per_voice"].items()]
        cols = [("voice", "voice", 0), ("wer", "WER", 3), ("spk_sim", "spk sim", 3), ("dnsmos_ovrl", "DNSMOS", 2),
                ("rtf", "RTF", 3), ("first_audio_s", "first audio (s)", 2), ("n", "n", 0)]
    elif args.task == "asr":
        r = eval_asr(pipe, items, judges, aligned=aligned)
        rows = [r]
        cols = [("form", "form", 0), ("wer", "WER", 3), ("cer", "CER", 3), ("whisper_wer", "Whisper-base WER", 3), ("rtf", "RTF", 3),
                ("n", "n", 0)]
    elif args.task == "conditioning":
        from slm.eval.conditioning import conditioning_gain

        c = conditioning_gain(pipe, items)
        tasks = [t for t in ("tts", "asr", "tts_aligned", "asr_aligned") if t in c]  # aligned: items with word times
        r = {"n": c["n"], **{f"{t}_{k}": c[t][k] for t in tasks for k in ("real", "shuffled", "gain")}}
        rows = [{"task": t.upper().replace("_", " "), **c[t], "n": c[t].get("n", c["n"])} for t in tasks]
        cols = [("task", "task", 0), ("real", "loss, own input", 3), ("shuffled", "loss, another item's input", 3),
                ("gain", "gain (nats/token)", 3), ("n", "n", 0)]
    elif args.task == "head":
        from slm.eval.lm_eval import eval_head

        r = eval_head(pipe, items, judges, seed=args.seed)
        names = {"floor": "the corpus audio", "codec": "its codec tokens, decoded",
                 "head": "its true semantic tokens, acoustic codes from the head"}
        rows = [{"audio": names[k], **r[k]} for k in names]
        cols = [("audio", "audio Whisper transcribes", 0), ("wer", "WER", 3), ("cer", "CER", 3)]
    else:
        r = eval_continue(pipe, items, judges, seconds=args.seconds, **sampling)
        rows = [r]
        cols = [("dnsmos_ovrl", "DNSMOS", 2), ("spk_sim", "spk sim", 3), ("ppl", "transcript ppl", 1), ("n", "n", 0)]
    r.update(model=str(args.model), manifest=str(args.manifest), split=args.split, machine=machine_info())
    out = Path(args.out)
    write_json(out / f"{args.task}_eval.json", r)
    md = f"# Speech LM: {args.task}\n\nmodel {args.model}, {len(items)} items of {args.manifest} ({args.split})\n\n"
    md += markdown_table(rows, cols) + "\n"
    (out / f"{args.task}_eval.md").write_text(md)
    print(md)
    print(f"wrote {out / (args.task + '_eval.md')} and {args.task}_eval.json")
    return 0
