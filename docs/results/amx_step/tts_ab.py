"""TTS through the C++ loop with its int8 matmul on AMX tiles against the same loop on AVX512-VNNI, alternating
run by run in one process (``SLM_NATIVE_AMX`` is read at every call), so both see the same machine state.

Rows: best_of 1 (one-row steps: both run the VNNI kernel, so their difference is the measurement's noise),
best_of 2 and best_of 4 chosen every 2 words (2- and 4-row steps on the tiles; passes of more than 4 rows on the
bf16 copies in both). Each: the best of ``--repeats`` runs of ``pipe.tts_stream`` on the benchmark's sentence,
seed 0; RTF per second of audio made. The two kernels give the same bits, so both make the same audio.

    python docs/results/amx_step/tts_ab.py   # -> tts_ab.json
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))
from codec.runtime import omp_defaults  # before torch loads

omp_defaults()

TTS_TEXT = "The quick brown fox jumps over the lazy dog, twice."  # benchmarks/tts_speed.py's --text


def main(repeats: int = 6) -> dict:
    from benchmarks.common import machine
    from codec.runtime import set_threads
    from slm.native import int8_kernel
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    pipe = SpeechPipeline.from_pretrained("default", threads=2, int8=True)
    assert int8_kernel() == "amx", f"no AMX here (int8 kernel: {int8_kernel()})"

    def run(k: int) -> tuple[float, float]:
        t, samples = time.perf_counter(), 0
        for chunk in pipe.tts_stream(TTS_TEXT, seed=0, best_of=k, best_of_words=2 if k > 1 else 0):
            samples += chunk.shape[-1]
        return time.perf_counter() - t, samples / pipe.sample_rate

    out = {"machine": machine(2), "threads": 2, "text": TTS_TEXT, "repeats": repeats, "rows": {}}
    for k in (1, 2, 4):
        run(k)  # warm-up
        best, audio = {"amx": float("inf"), "vnni": float("inf")}, 0.0
        for _ in range(repeats):
            for name, env in (("amx", "1"), ("vnni", "0")):
                os.environ["SLM_NATIVE_AMX"] = env
                sec, audio = run(k)
                best[name] = min(best[name], sec)
        os.environ.pop("SLM_NATIVE_AMX", None)
        row = {"audio_s": audio, "amx_s": best["amx"], "vnni_s": best["vnni"], "amx_rtf": best["amx"] / audio,
               "vnni_rtf": best["vnni"] / audio, "speedup": best["vnni"] / best["amx"]}
        out["rows"][f"best_of_{k}" + ("_every_2_words" if k > 1 else "")] = row
        print(f"best_of {k}: AMX RTF {row['amx_rtf']:.3f}, VNNI RTF {row['vnni_rtf']:.3f} "
              f"({row['speedup']:.3f}x), {audio:.2f} s of audio", flush=True)
    (HERE / "tts_ab.json").write_text(json.dumps(out, indent=1) + "\n")
    return out


if __name__ == "__main__":
    main()
