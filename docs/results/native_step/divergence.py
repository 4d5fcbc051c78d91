"""Whether the C++ layer loop (``slm.native``) decodes as well as the Python loop it replaces, on the bundle.

The two loops run the same int8 matrices and agree to float rounding, not bit for bit (the norm's sum of squares:
double in C++, float in torch's own order), and the 30 layers amplify a rounding flip now and then. So this
measures both against fp32 with the teacher-forced sequences of ``docs/results/int8_w8a8/divergence.py`` (the fp32
pipeline's aligned TTS of four sentences, fed one token at a time): mean KL(fp32 || loop) over the semantic tokens
at every frame position, and how often the most likely token is fp32's. Then the native loop against the Python
loop directly.

    python docs/results/native_step/divergence.py [OUT]  # -> divergence.json here, or OUT
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))


def main() -> dict:
    spec = importlib.util.spec_from_file_location("divergence_w8a8", HERE.parent / "int8_w8a8" / "divergence.py")
    base = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(base)

    from benchmarks.common import machine
    from codec.runtime import set_threads
    from slm.generate import FusedStep
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    pipe = SpeechPipeline.from_pretrained("default", int8=False)
    m = pipe.infer_lm
    native = FusedStep(m, "weights")
    if native._native is None:
        raise SystemExit("the native loop is not available here (see the warning above)")
    python = FusedStep(m, "weights")
    python._native = None
    n, vs_fp32 = base.compare(pipe, FusedStep(m, False), {"int8, Python loop": python, "int8, C++ loop": native})
    _, vs_python = base.compare(pipe, python, {"C++ loop against the Python loop": native})
    out = {"positions": n, "sentences": base.SENTENCES, "machine": machine(2), "against_fp32": vs_fp32,
           "against_python_loop": vs_python}
    Path(sys.argv[1] if len(sys.argv) > 1 else HERE / "divergence.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{n} frame positions over {len(base.SENTENCES)} sentences")
    print("| loop | reference | mean KL(reference \\|\\| loop), nats | same most likely token |\n|---|---|---|---|")
    for ref, rows in (("fp32", vs_fp32), ("int8, Python loop", vs_python)):
        for k, v in rows.items():
            print(f"| {k} | {ref} | {v['mean_kl_nats']:.5f} | {v['top1_agreement']:.3f} |")
    return out


if __name__ == "__main__":
    main()
