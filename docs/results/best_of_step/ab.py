"""Best-of decoding through the C++ loop, two changes measured against the loop without them, all forms alternating
in one process so that they see the same machine state:

- ``shared``: the attention reads the positions every candidate holds alike (the prompt, and after each choice
  everything before it) once for all candidates (row 0's copy), instead of each row reading its own copy;
- ``int8 words``: passes of up to 32 rows (a word fed to every candidate at once) on the int8 matrices through the
  AMX kernel, instead of the bf16 copies above 4 rows (``SLM_NATIVE_INT8_ROWS``, read when the loop is set up).

Two measurements:

1. **one step** of 4 candidates, one token each, after a prompt of ``--span`` positions: the best of 5 medians of
   20 steps per form (shared on/off; the same bits either way, checked);
2. **TTS**: ``pipe.tts_stream`` on the benchmark's sentence, seed 0, best_of 2 and 4 chosen every 2 words; the best
   of ``--repeats`` runs per form; RTF per second of audio made.

    python docs/results/best_of_step/ab.py   # -> ab.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from codec.runtime import omp_defaults  # before torch loads

omp_defaults()

TTS_TEXT = "The quick brown fox jumps over the lazy dog, twice."  # benchmarks/tts_speed.py's --text
FORMS = {  # name -> (attention reads the shared positions once, native int8 row limit)
    "before": (False, "4"),
    "shared": (True, "4"),
    "int8 words": (False, "32"),
    "both": (True, "32"),
}


def main() -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--span", type=int, default=300)
    args = ap.parse_args()
    import torch

    from adapters.backbones import out_cache
    from benchmarks.common import machine
    from codec.runtime import set_threads
    from slm.generate import FusedStep
    from slm.native import int8_kernel
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    pipe = SpeechPipeline.from_pretrained("default", threads=2, int8=True)
    if int8_kernel() != "amx":
        raise SystemExit(f"this compares forms of the AMX loop; the int8 kernel here is {int8_kernel()}")
    lm = pipe.infer_lm
    f = lm.fused_step
    native_forward = FusedStep.native_forward
    state = {"shared": True}

    def forward(self, x, k, v, pos, cos, sin, mask, span, shared=0):
        return native_forward(self, x, k, v, pos, cos, sin, mask, span, shared if state["shared"] else 0)

    FusedStep.native_forward = forward

    def use(form: str) -> None:
        state["shared"], rows = FORMS[form]
        os.environ["SLM_NATIVE_INT8_ROWS"] = rows
        f.layers = f.layers  # the setter reads the row limit again

    out = {"machine": machine(2), "threads": 2, "dtype": "int8 weights (bundle), fp32 K/V", "text": TTS_TEXT,
           "repeats": args.repeats, "span": args.span, "forms": {k: {"shared": v[0], "int8_rows": int(v[1])}
                                                                 for k, v in FORMS.items()}}
    # 1. one 4-row step
    ids = torch.randint(100, 1000, (1, args.span))
    with torch.no_grad():
        cache = out_cache(lm(ids, use_cache=True))
    steps: dict[str, list[float]] = {"before": [], "shared": []}
    outs = {}
    for _ in range(5):
        for form, times_of in steps.items():
            use(form)
            b = f.start_batch(cache, args.span, args.span + 64, 4)
            b.step([[5], [6], [7], [8]])
            b.adopt(2)
            times, y = [], None
            for i in range(20):
                t = time.perf_counter()
                y = b.step([[11 + i], [12 + i], [13 + i], [14 + i]])
                times.append(time.perf_counter() - t)
            outs[form] = y
            times_of.append(statistics.median(times))
    assert torch.equal(outs["before"], outs["shared"]), "the shared read changed the bits"
    out["step_ms"] = {k: 1e3 * min(v) for k, v in steps.items()}
    out["step_speedup"] = min(steps["before"]) / min(steps["shared"])
    print(f"one 4-row step at {args.span} positions: {out['step_ms']['before']:.2f} ms -> "
          f"{out['step_ms']['shared']:.2f} ms shared ({out['step_speedup']:.3f}x), same bits", flush=True)

    # 2. TTS
    def run(k: int) -> tuple[float, float]:
        t, samples = time.perf_counter(), 0
        for chunk in pipe.tts_stream(TTS_TEXT, seed=0, best_of=k, best_of_words=2):
            samples += chunk.shape[-1]
        return time.perf_counter() - t, samples / pipe.sample_rate

    out["tts"] = {}
    for k in (2, 4):
        run(k)  # warm-up
        best, audio = {form: float("inf") for form in FORMS}, {}
        for _ in range(args.repeats):
            for form in FORMS:
                use(form)
                sec, audio[form] = run(k)
                best[form] = min(best[form], sec)
        row = {form: {"seconds": best[form], "audio_s": audio[form], "rtf": best[form] / audio[form],
                      "speedup": best["before"] / best[form] * audio[form] / audio["before"]} for form in FORMS}
        out["tts"][f"best_of_{k}_every_2_words"] = row
        print(f"best_of {k} every 2 words, RTF: " + ", ".join(f"{form} {row[form]['rtf']:.3f}" for form in FORMS),
              flush=True)
    os.environ.pop("SLM_NATIVE_INT8_ROWS", None)
    FusedStep.native_forward = native_forward
    (HERE / "ab.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
