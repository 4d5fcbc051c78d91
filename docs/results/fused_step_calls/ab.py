"""FusedStep's decoding loop before and after it called its matrices as plain functions, in one run.

Before (``--base``, a commit): each layer called its fused matrices as modules (``Int8Linear.forward``: a module
call, reshapes, the input cast to bf16 and the output cast back to fp32) and did the rotary in 7 ops. After (this
checkout): ``Int8Linear.rows_kernel`` on ``[rows, in]``, the bf16 output promoted by the fp32 operands it meets,
and the rotary in 4 ops. Both give bit-identical hidden states and audio; this checks that and times both, the
old loop swapped in as ``FusedStep.layers_forward`` (so everything else is the same code), alternating, best of
``--repeats``:

- one decoding step after a 172-token prompt, at 1 and 2 rows, fp32 / int8 weights / w8a8;
- whole TTS of ``--text`` with the bundle (int8 decoding, as the CLI and demo run it): best_of 1, and best_of 2
  chosen every 2 words.

    python docs/results/fused_step_calls/ab.py --base 37d8a7b --out docs/results/fused_step_calls/ab.json \\
        --md docs/results/fused_step_calls/ab.md
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)
from codec.runtime import omp_defaults  # before torch loads

omp_defaults()

from benchmarks.common import ab_parser, machine, write_json, write_markdown


def _old_loop(base: str):
    """``FusedStep.layers_forward`` as it was at commit ``base``."""
    src = subprocess.run(["git", "-C", ROOT, "show", f"{base}:slm/generate.py"], check=True, capture_output=True,
                         text=True).stdout
    path = os.path.join(tempfile.mkdtemp(), "generate_base.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("generate_base", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generate_base"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod.FusedStep.layers_forward


def main() -> None:
    ap = ab_parser(__doc__, os.path.join(ROOT, "checkpoints", "default"))
    ap.add_argument("--base", required=True, help="the commit whose loop is the baseline")
    ap.add_argument("--steps", type=int, default=60)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    import slm.generate as G
    from slm.pipeline import SpeechPipeline

    loops = {"before": _old_loop(args.base), "after": G.FusedStep.layers_forward}
    rows_out: list[dict] = []
    load = os.getloadavg()[0]

    pipe = SpeechPipeline.from_pretrained(args.model, int8=False, merge=True)
    lm = pipe.infer_lm
    prompt = torch.arange(100, 272)

    def steps(f, rows: int) -> tuple[float, torch.Tensor]:
        with torch.no_grad():
            cache = lm(input_ids=prompt[None], use_cache=True).past_key_values
            n = prompt.numel()
            st = f.start(cache, n, n + args.steps) if rows == 1 else f.start_batch(cache, n, n + args.steps, rows)
            t, hs = time.perf_counter(), []
            for s in range(args.steps):
                hs.append(st.step(5 + s) if rows == 1 else st.step([[5 + s]] * rows))
            return (time.perf_counter() - t) / args.steps, torch.stack(hs)

    def alternate(fn) -> tuple[dict, dict]:
        """``fn() -> (seconds, output)`` under each loop in turn, ``--repeats`` times: the best time and the
        last output of each."""
        best, out = {}, {}
        for _ in range(args.repeats):
            for name, loop in loops.items():
                G.FusedStep.layers_forward = loop
                sec, out[name] = fn()
                best[name] = min(best.get(name, 1e9), sec)
        G.FusedStep.layers_forward = loops["after"]
        return best, out

    for mode in (False, "weights", "w8a8"):
        f = G.FusedStep(lm, int8=mode)
        for rows in (1, 2):
            best, out = alternate(lambda f=f, rows=rows: steps(f, rows))
            rows_out.append({"what": f"decoding step, {mode or 'fp32'}, {rows} row{'s' * (rows > 1)}",
                             "unit": "ms", "before": best["before"] * 1e3, "after": best["after"] * 1e3,
                             "identical": bool(torch.equal(out["before"], out["after"]))})
            print(rows_out[-1], flush=True)

    pipe = SpeechPipeline.from_pretrained(args.model, int8=True)

    def tts(k: int, every: int) -> tuple[float, torch.Tensor]:
        t, chunks = time.perf_counter(), list(pipe.tts_stream(args.text, seed=0, best_of=k, best_of_words=every))
        wav = torch.cat(chunks, -1)
        return (time.perf_counter() - t) / (wav.shape[-1] / pipe.sample_rate), wav

    for k, every in ((1, 0), (2, 2)):
        tts(k, every)  # warm-up
        best, out = alternate(lambda k=k, every=every: tts(k, every))
        rows_out.append({"what": f"TTS, int8, best_of {k}" + (f" every {every} words" if every else ""),
                         "unit": "RTF", "before": best["before"], "after": best["after"],
                         "identical": out["before"].shape == out["after"].shape
                         and bool(torch.equal(out["before"], out["after"]))})
        print(rows_out[-1], flush=True)

    m = machine(args.threads, "float32 (int8 matmuls in the int8 rows)")
    res = {"base": args.base, "threads": args.threads, "repeats": args.repeats, "text": args.text,
           "machine": m, "load_avg_1min": [load, os.getloadavg()[0]], "rows": rows_out}
    if args.out:
        write_json(args.out, res)
    lines = [(f"FusedStep's loop before ({args.base}) and after, one run; {m['cpu']}, {args.threads} threads, "
             f"torch {m['torch']}, best of {args.repeats}; load average (1 min) {load:.1f} -> "
             f"{os.getloadavg()[0]:.1f}."), "", "| what | before | after | speed-up | bit-identical |",
             "|---|---|---|---|---|"]
    for r in rows_out:
        fmt = "{:.2f} ms" if r["unit"] == "ms" else "RTF {:.3f}"
        lines.append(f"| {r['what']} | {fmt.format(r['before'])} | {fmt.format(r['after'])} | "
                     f"{r['before'] / r['after']:.2f}x | {'yes' if r['identical'] else 'NO'} |")
    write_markdown(args.md, lines)


if __name__ == "__main__":
    main()
