"""Codec speed: encode+decode real-time factor of our codec(s) vs transformers' Mimi, DAC and EnCodec.

Same 5 s clip (resampled to each model's rate), same thread count, one run; every model in its own
child process so peak memory is its own. Peers are built from their default configs (random weights:
speed does not depend on the weights). The semantic teacher's cost (Whisper-base CT2 encoder, needed
at encode time by the sac variant) is reported as its own row.

    python benchmarks/codec_speed.py --threads 1 --variant sac --variant rvq --out docs/results/codec_speed.json
    python benchmarks/codec_speed.py --codec checkpoints/codec/sac   # a trained checkpoint dir
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.common import machine, peak_rss_mb, print_table, run_worker, speech_clip, time_it, write_json

PEERS = ("mimi", "dac", "encodec")


def _build(spec: dict):
    """-> (encode_decode callable taking wav [1,1,N] tensor, sample_rate, params, extra info)."""
    import torch

    kind = spec["kind"]
    if kind == "ours":
        from codec.config import CodecConfig
        from codec.model import DualStreamCodec
        from codec.modules.teacher import TeacherBatch

        if spec.get("path"):
            model = DualStreamCodec.from_pretrained(spec["path"]).eval()
        else:
            model = DualStreamCodec(CodecConfig(variant=spec["variant"])).eval()

        def run(x):
            teacher = None
            if model.needs_teacher_at_encode:  # teacher units (their cost is the separate teacher row)
                ts = -(-x.shape[-1] // model.semantic_hop)
                teacher = TeacherBatch(units=torch.randint(0, model.semantic_codebook_size, (1, ts)))
            return model.decode(model.encode(x, teacher=teacher))

        return run, model.sample_rate, model, {"variant": model.config.variant, "bitrate": model.bitrate}
    if kind == "teacher":
        from adapters.teachers import load_teacher

        t = load_teacher(spec.get("teacher", "whisper-base-ct2"))
        return (lambda x: t.features(x)), t.sample_rate, None, {"teacher": t.name}
    from transformers import DacConfig, DacModel, EncodecConfig, EncodecModel, MimiConfig, MimiModel

    cls, cfg = {"mimi": (MimiModel, MimiConfig), "dac": (DacModel, DacConfig),
                "encodec": (EncodecModel, EncodecConfig)}[kind]
    model = cls(cfg()).eval()
    if kind == "mimi":
        def run(x):
            return model.decode(model.encode(x).audio_codes).audio_values
    elif kind == "dac":
        def run(x):
            return model.decode(audio_codes=model.encode(x).audio_codes).audio_values
    else:
        def run(x):
            enc = model.encode(x)
            return model.decode(enc.audio_codes, enc.audio_scales).audio_values
    return run, model.config.sampling_rate, model, {}


def worker(spec: dict) -> None:
    import torch
    import torchaudio.functional as AF

    torch.set_num_threads(spec["threads"])
    base = peak_rss_mb()
    run, sr, model, info = _build(spec)
    clip = torch.from_numpy(speech_clip(spec["seconds"], 16000))
    x = (clip if sr == 16000 else AF.resample(clip, 16000, sr)).view(1, 1, -1)
    with torch.inference_mode():
        t = time_it(lambda: run(x), spec["repeats"])
    params = sum(p.numel() for p in model.parameters()) if model is not None else None
    rtf = t["seconds_median"] / spec["seconds"]
    t["cpu_rtf"] = t["cpu_seconds_median"] / spec["seconds"]
    print(json.dumps({"name": spec["name"], "kind": spec["kind"], "sample_rate": sr, "params_m": params / 1e6
                      if params else None, **t, "rtf": rtf, "x_real_time": 1.0 / rtf,
                      "peak_rss_mb": peak_rss_mb(), "model_rss_mb": peak_rss_mb() - base, **info}))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--codec", action="append", default=[], help="our codec checkpoint dir (repeatable)")
    ap.add_argument("--variant", action="append", default=[], help="our codec variant at its default config, "
                    "random weights (repeatable; default: sac if no --codec)")
    ap.add_argument("--peers", default=",".join(PEERS), help="comma list of mimi,dac,encodec ('' for none)")
    ap.add_argument("--no-teacher", action="store_true", help="skip the teacher-cost row")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None, help="write the JSON result here")
    args = ap.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    common = {"seconds": args.seconds, "repeats": args.repeats}
    specs = [{"name": os.path.basename(os.path.normpath(p)), "kind": "ours", "path": p, **common} for p in args.codec]
    variants = args.variant or ([] if args.codec else ["sac"])
    specs += [{"name": f"ours-{v} (default config)", "kind": "ours", "variant": v, **common} for v in variants]
    specs += [{"name": p, "kind": p, **common} for p in args.peers.split(",") if p]
    if not args.no_teacher:
        specs.append({"name": "teacher whisper-base-ct2 (encoder)", "kind": "teacher", **common})
    rows = []
    for s in specs:
        print(f"... {s['name']}", file=sys.stderr, flush=True)
        rows.append(run_worker(os.path.abspath(__file__), s, args.threads))
    ours = [r for r in rows if r.get("kind") == "ours" and "error" not in r]
    peers = [r for r in rows if r.get("kind") in PEERS and "error" not in r]
    ratios = {f"{o['name']} vs {p['name']}": p["seconds_median"] / o["seconds_median"] for o in ours for p in peers}
    cpu_ratios = {f"{o['name']} vs {p['name']}": p["cpu_seconds_median"] / o["cpu_seconds_median"]
                  for o in ours for p in peers}
    result = {"benchmark": "codec encode+decode", "clip_seconds": args.seconds, "machine": machine(args.threads),
              "rows": rows, "speedup_vs_peer": ratios,
              "cpu_speedup_vs_peer": cpu_ratios}
    print_table(rows, [("name", "model", ""), ("params_m", "params (M)", ".1f"), ("seconds_median", "s per clip", ".3f"),
                       ("rtf", "RTF", ".4f"), ("x_real_time", "x real time", ".1f"),
                       ("cpu_seconds_median", "CPU s", ".3f"), ("model_rss_mb", "RSS (MB)", ".0f")])
    for k, v in ratios.items():
        print(f"{k}: {v:.1f}x faster (wall), {cpu_ratios[k]:.1f}x (CPU time)")
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, {m['threads']} threads, {m['dtype']}, torch {m['torch']}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
