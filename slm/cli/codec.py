"""`slm codec ...`: train codecs, encode/decode files, tokenise manifests, build teacher caches."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("codec", help="train and run dual-stream speech codecs")
    sub = p.add_subparsers(dest="codec_command", metavar="CODEC_COMMAND")

    t = sub.add_parser("train", help="train a codec (accelerate; resumable GAN training)")
    t.add_argument("--config", required=True, help="training YAML (see configs/codec_train/)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in out_dir")
    t.add_argument("--out-dir", default=None, help="override the config's out_dir")
    t.add_argument("--steps", type=int, default=None, help="override the config's steps")
    t.add_argument("--max-minutes", type=float, default=None, help="stop (checkpoint + export) after this long")
    t.set_defaults(func=_train)

    e = sub.add_parser("encode", help="audio file -> token file (.safetensors)")
    e.add_argument("checkpoint", help="codec dir (save_pretrained)")
    e.add_argument("audio")
    e.add_argument("out", help="output .tokens.safetensors")
    e.add_argument("--teacher", default=None, help="teacher spec for codecs that encode with one (sac)")
    e.set_defaults(func=_encode)

    d = sub.add_parser("decode", help="token file -> wav")
    d.add_argument("checkpoint")
    d.add_argument("tokens")
    d.add_argument("out", help="output .wav")
    d.set_defaults(func=_decode)

    k = sub.add_parser("tokenize", help="tokenise every utterance of a manifest (resumable, parallel)")
    k.add_argument("checkpoint")
    k.add_argument("--manifest", required=True)
    k.add_argument("--out", required=True, help="dir: items/<id>.safetensors + index.jsonl")
    k.add_argument("--workers", type=int, default=1, help="worker processes (one torch thread each)")
    k.add_argument("--teacher", default=None, help="teacher spec for codecs that encode with one (sac)")
    k.set_defaults(func=_tokenize)

    c = sub.add_parser("teacher-cache", help="cache teacher features of a manifest (resumable)")
    c.add_argument("--manifest", required=True)
    c.add_argument("--teacher", default="whisper-base-ct2",
                   help="whisper-base-ct2 | whisper-ct2:DIR | HUB_ID_OR_DIR:LAYER (default: %(default)s)")
    c.add_argument("--out", required=True)
    c.add_argument("--splits", default=None, help="comma-separated splits (default: all)")
    c.set_defaults(func=_teacher_cache)

    m = sub.add_parser("kmeans", help="fit k-means units on cached teacher features; cache the units")
    m.add_argument("--features", required=True, help="teacher feature cache dir")
    m.add_argument("--k", type=int, required=True)
    m.add_argument("--rate", type=float, required=True, help="unit frame rate in Hz (features are pooled)")
    m.add_argument("--out", required=True, help="centroids file (.safetensors + .json)")
    m.add_argument("--units-out", default=None, help="units cache dir (default: <out>.units)")
    m.add_argument("--splits", default="train", help="splits to fit on (default: %(default)s)")
    m.add_argument("--max-frames", type=int, default=200_000)
    m.set_defaults(func=_kmeans)

    s = sub.add_parser("set-decoder", help="put a decoder fine-tune of a speech-LM model's codec into the model "
                                           "(checked to give the same tokens)")
    s.add_argument("model", help="speech-LM model dir (slm_config.json)")
    s.add_argument("codec", help="codec dir from `slm codec train` with train_only (its final/)")
    s.set_defaults(func=_set_decoder)
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])


def _set_decoder(args: argparse.Namespace) -> int:
    from slm.pipeline import set_decoder

    print(f"{args.model}: codec now {set_decoder(args.model, args.codec)} (from {args.codec}); same tokens")
    return 0


def _train(args: argparse.Namespace) -> int:
    from codec.runtime import leave_rank, multi_process
    from codec.train import CodecTrainConfig, train
    from codec.train.checkpointing import latest_checkpoint

    cfg = CodecTrainConfig.from_yaml(args.config)
    for key in ("out_dir", "steps", "max_minutes"):
        if getattr(args, key) is not None:
            setattr(cfg, key, getattr(args, key))
    if not args.resume and latest_checkpoint(cfg.out_dir) is not None:
        raise SystemExit(f"{cfg.out_dir} already has checkpoints: pass --resume to continue, or --out-dir NEW")
    r = train(cfg, resume=args.resume)
    if int(os.environ.get("RANK", "0")) == 0:  # one summary for a multi-process run, from rank 0
        print(json.dumps({"step": r.step, "seconds": round(r.seconds, 1), "export": str(r.export_dir),
                          "losses": r.losses}, indent=2))
    if multi_process():
        leave_rank()
    return 0


def _load_codec(path: str):
    from codec.model import DualStreamCodec

    return DualStreamCodec.from_pretrained(path).eval()


def _default_teacher_spec(ckpt: str) -> str:
    info = Path(ckpt) / "training.json"
    if info.exists():
        return json.loads(info.read_text()).get("teacher_spec") or "whisper-base-ct2"
    return "whisper-base-ct2"


def _encode(args: argparse.Namespace) -> int:
    from adapters.kmeans import teacher_batch_for
    from adapters.teachers import load_teacher
    from codec.audio import load_audio
    from codec.contracts import token_metadata

    model = _load_codec(args.checkpoint)
    teacher = load_teacher(args.teacher or _default_teacher_spec(args.checkpoint)) \
        if model.needs_teacher_at_encode else None
    wav = load_audio(args.audio, model.sample_rate)[None]
    tokens = model.encode(wav, teacher=teacher_batch_for(model, teacher, wav))
    tokens.save(args.out, metadata=token_metadata(model, args.checkpoint))
    print(f"{args.out}: semantic {list(tokens.semantic.shape)} acoustic {list(tokens.acoustic.shape)} "
          f"({model.bitrate:.0f} bps)")
    return 0


def _decode(args: argparse.Namespace) -> int:
    from codec.audio import check_audio_out, save_audio
    from codec.contracts import CodecTokens, check_token_metadata

    check_audio_out(args.out)
    tokens, meta = CodecTokens.load_with_metadata(args.tokens)
    model = _load_codec(args.checkpoint)
    check_token_metadata(args.tokens, meta, model)
    wav = model.decode(tokens)
    save_audio(args.out, wav[0], model.sample_rate)
    print(f"{args.out}: {wav.shape[-1] / model.sample_rate:.2f} s")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    spec = args.teacher or _default_teacher_spec(args.checkpoint)
    n = tokenize_manifest(args.checkpoint, args.manifest, args.out, workers=args.workers, teacher_spec=spec)
    print(f"{n} utterances tokenised -> {Path(args.out) / 'index.jsonl'}")
    return 0


def _teacher_cache(args: argparse.Namespace) -> int:
    from adapters.teachers import cache_teacher_features, load_teacher

    splits = tuple(args.splits.split(",")) if args.splits else None
    out = cache_teacher_features(load_teacher(args.teacher), args.manifest, args.out, splits=splits)
    print(f"teacher features -> {out}")
    return 0


def _kmeans(args: argparse.Namespace) -> int:
    from adapters.kmeans import cache_units, fit_kmeans

    splits = tuple(args.splits.split(",")) if args.splits else None
    km = fit_kmeans(args.features, args.k, args.rate, splits=splits, max_frames=args.max_frames)
    path = km.save(args.out)
    units_dir = args.units_out or str(path)[: -len(".safetensors")] + ".units"
    units = cache_units(km, args.features, units_dir)
    print(json.dumps({"centroids": str(path), "units": str(units), **km.meta}, indent=2))
    return 0


# --- batch tokenisation (the LM's input) -----------------------------------------------------------

_W: dict = {}


def _worker_init(ckpt: str, teacher_spec: str, out: str) -> None:
    import torch

    torch.set_num_threads(1)  # one thread per process: N workers use N cores without oversubscription
    from adapters.teachers import load_teacher
    from codec.contracts import token_metadata

    _W["model"] = model = _load_codec(ckpt)
    _W["teacher"] = load_teacher(teacher_spec) if model.needs_teacher_at_encode else None
    _W["meta"] = token_metadata(model, ckpt)
    _W["out"] = Path(out)


def _worker_encode(row: dict) -> dict:
    from adapters.kmeans import teacher_batch_for
    from codec.audio import load_audio
    from codec.train.teacher_cache import item_file

    model, out = _W["model"], _W["out"]
    path = item_file(out, row["id"])  # items/<id>.safetensors, ids made file-safe
    if path.exists():  # resumed: kept only if this codec made it
        from codec.contracts import CodecTokens, check_token_metadata

        try:
            check_token_metadata(path, CodecTokens.load_with_metadata(path)[1], model, have=_W["meta"])
        except ValueError as e:
            raise ValueError(f"{e}. {out} holds another codec's tokens: tokenise into a new --out, or delete it") from None
    else:
        wav = load_audio(row["path"], model.sample_rate)[None]
        tokens = model.encode(wav, teacher=teacher_batch_for(model, _W["teacher"], wav))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tokens.save(tmp, metadata=_W["meta"])
        tmp.replace(path)
    return {"id": row["id"], "tokens": str(path.relative_to(out))}


def tokenize_manifest(ckpt: str, manifest: str, out_dir: str, workers: int = 1,
                      teacher_spec: str = "whisper-base-ct2") -> int:
    """Encode every utterance of ``manifest`` to ``out_dir/items/<id>.safetensors`` and write
    ``out_dir/index.jsonl`` (id, token file, text, speaker, split, duration, frame counts).

    Resumable: existing token files are kept. ``workers`` processes each hold a copy of the codec.
    """
    import multiprocessing as mp

    from safetensors import safe_open
    from tqdm import tqdm

    from codec.train.batches import read_rows

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = read_rows(manifest, None)
    done: dict[str, str] = {}
    args = (ckpt, teacher_spec, str(out))
    if workers <= 1:
        _worker_init(*args)
        it = map(_worker_encode, rows)
        for r in tqdm(it, total=len(rows), desc="tokenize", unit="utt"):
            done[r["id"]] = r["tokens"]
    else:
        with mp.get_context("spawn").Pool(workers, initializer=_worker_init, initargs=args) as pool:
            for r in tqdm(pool.imap_unordered(_worker_encode, rows, chunksize=4), total=len(rows),
                          desc=f"tokenize x{workers}", unit="utt"):
                done[r["id"]] = r["tokens"]
    with open(out / "index.jsonl.tmp", "w") as f:
        for row in rows:
            with safe_open(str(out / done[row["id"]]), "pt") as st:
                ts, ta = st.get_slice("semantic").get_shape()[-1], st.get_slice("acoustic").get_shape()[-1]
            rec = {"id": row["id"], "tokens": done[row["id"]], "n_semantic": ts, "n_acoustic": ta,
                   **{k: row[k] for k in ("text", "speaker", "split", "duration", "words", "phones") if k in row}}
            f.write(json.dumps(rec) + "\n")
    (out / "index.jsonl.tmp").replace(out / "index.jsonl")
    return len(rows)
