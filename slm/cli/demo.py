"""`slm demo`: serve the Gradio demo (localhost by default)."""
from __future__ import annotations

import argparse

from slm.cli import add_int8_flag


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="serve the Gradio demo (TTS, ASR, continuation, codec lab, dialogue)",
        description="Serve the Gradio demo. Binds 127.0.0.1 unless --host/--share say otherwise; "
                    "browsers only allow the microphone on localhost or https.")
    p.add_argument("--model", default="default",
                   help="speech pipeline dir (save_pretrained) or 'default' for the bundled model")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860; 0 = first free one)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1; 0.0.0.0 opens it to the network)")
    p.add_argument("--share", action="store_true", help="also open a public https gradio.live link")
    p.add_argument("--ssl-certfile", default=None, help="serve https (needed for the microphone off-localhost)")
    p.add_argument("--ssl-keyfile", default=None)
    p.add_argument("--codec-dir", action="append", default=None,
                   help="folder searched for codec checkpoints for the codec lab (repeatable; "
                        "default checkpoints/codec; the speech pipeline's own codec is always listed)")
    p.add_argument("--codec-only", action="store_true", help="serve the codec lab alone (no speech LM)")
    add_int8_flag(p)
    p.add_argument("--max-audio-seconds", type=float, default=None, help="longest accepted input clip")
    p.add_argument("--max-text-chars", type=int, default=None, help="longest accepted TTS text")
    p.add_argument("--max-upload-mb", type=float, default=None, help="largest accepted upload")
    p.add_argument("--concurrency", type=int, default=None, help="requests computed at once (default 1)")
    p.add_argument("--queue-size", type=int, default=None, help="waiting requests before new ones are refused")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from demos.app import DEFAULT_CODEC_DIRS, build_app, launch
    from demos.limits import DemoLimits

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    # everything the user gave is checked before the (slow) model load and the server start
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be in 0..65535 (0: the first free one), got {args.port}")
    for opt in ("ssl_certfile", "ssl_keyfile"):
        path = getattr(args, opt)
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"--{opt.replace('_', '-')} {path}: no such file")
    if args.ssl_keyfile and not args.ssl_certfile:
        raise ValueError("--ssl-keyfile needs --ssl-certfile")
    limits = DemoLimits()
    for name in ("max_audio_seconds", "max_text_chars", "max_upload_mb", "concurrency", "queue_size"):
        value = getattr(args, name)
        if value is not None:
            if not value > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {value}")
            setattr(limits, name, value)
    if args.model != "default" and not os.path.isdir(args.model):
        raise NotADirectoryError(f"--model expects a pipeline directory or 'default', got {args.model!r} "
                                 "(not a directory)")
    if args.model == "default" and not args.codec_only:
        from slm.pipeline import default_model_dir

        try:
            default_model_dir()
        except FileNotFoundError as e:  # fresh checkout: still useful, the codec lab needs no speech LM
            print(f"slm demo: {e}\nslm demo: serving the codec lab only.")
            args.codec_only = True

    def factory():
        import torch

        from slm.pipeline import SpeechPipeline

        return SpeechPipeline.from_pretrained(args.model, device="cpu", threads=torch.get_num_threads(), int8=args.int8)

    sampling = None
    if not args.codec_only:
        from slm.pipeline import model_sampling

        sampling = model_sampling(args.model)
    app = build_app(None if args.codec_only else factory, codec_dirs=args.codec_dir or list(DEFAULT_CODEC_DIRS),
                    limits=limits, sampling=sampling)
    launch(app, host=args.host, port=args.port or None, share=args.share, limits=limits,
           ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile)
    return 0
