"""How far each int8 decoding mode's next-frame distribution is from fp32's, on the bundle.

For a few sentences (none of them the calibration text), the fp32 pipeline speaks each (aligned TTS, seed 0);
its token sequence (the sentence's words, each followed by its share of the frames) is then fed through the
backbone's one-token decoding step (``FusedStep``) in fp32 and in each int8 mode, and at every position that
predicts a frame the semantic-token distributions are compared: mean KL(fp32 || mode) in nats, and how often the
most likely token is the same.

    python docs/results/int8_w8a8/divergence.py   # -> divergence.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[2]))

SENTENCES = ["She sells sea shells by the sea shore on sunny days.",
             "Please call Stella and ask her to bring these things with her from the store.",
             "Seven ships wait in the harbour for the morning tide.",
             "A cold wind blew across the northern field all night."]


def every_matrix(step, amax):
    """``step`` (a w8a8 FusedStep) with int8 activations on o and down too (smoothed by ``amax``, FusedStep's
    calibration maxima, if given): the first w8a8 form, which the mode left for its divergence."""
    from slm.generate import _MATRICES, Int8Linear

    step.layers = [tuple(Int8Linear(x.dense, activations=True, act_max=None if amax is None else amax[i][j])
                         if j in _MATRICES and x.packed is None else x for j, x in enumerate(layer))
                   for i, layer in enumerate(step.layers)]
    return step


def frame_sequence(pipe, text: str):
    """The fp32 pipeline's aligned TTS of ``text`` (seed 0) as one token sequence: ``(prompt, seq, at)``, the
    sentence's words each followed by its share of the frames, and the positions whose output predicts a frame."""
    lay = pipe.layout
    codes = pipe.tts_tokens(text, seed=0)[0].semantic.flatten().tolist()
    _, prompt, _, _, _, _, kw = next(pipe._tts_plan(text, None, None, None, None, 20.0, 0, True))
    words, seq, at, ci = kw["words"], [], [], 0
    per = max(1, len(codes) // len(words))
    for k, w in enumerate(words):
        seq += list(w)
        take = per if k < len(words) - 1 else len(codes) - ci
        for c in codes[ci: ci + take]:
            at.append(len(seq) - 1)  # the position whose output predicts this frame
            seq.append(lay.semantic_offset + c)
        ci += take
    return prompt, seq, at


def compare(pipe, ref_step, modes: dict, sentences=SENTENCES) -> tuple[int, dict]:
    """Each decoding step of ``modes`` against ``ref_step`` on ``sentences`` (:func:`frame_sequence`): the number
    of frame positions, and per mode the mean KL(ref || mode) in nats and how often the top token is the same."""
    import torch
    import torch.nn.functional as F

    m, lay = pipe.infer_lm, pipe.layout
    rows = pipe.lm.get_output_embeddings().weight.detach()[lay.semantic_offset: lay.semantic_offset + lay.n_semantic]

    def logits(step, prompt, seq):
        with torch.no_grad():
            out = m.get_decoder()(input_ids=prompt.view(1, -1), use_cache=True)
            st = step.start(out.past_key_values, prompt.numel(), prompt.numel() + len(seq) + 1)
            return torch.stack([st.step(int(t)) for t in seq]) @ rows.T

    stats = {k: {"agree": 0, "kl": 0.0} for k in modes}
    n = 0
    for text in sentences:
        prompt, seq, at = frame_sequence(pipe, text)
        ref = logits(ref_step, prompt, seq)[at].log_softmax(-1)
        n += len(at)
        for k, step in modes.items():
            q = logits(step, prompt, seq)[at].log_softmax(-1)
            stats[k]["agree"] += int((q.argmax(-1) == ref.argmax(-1)).sum())
            stats[k]["kl"] += float(F.kl_div(q, ref, log_target=True, reduction="sum"))
    return n, {k: {"top1_agreement": v["agree"] / n, "mean_kl_nats": v["kl"] / n} for k, v in stats.items()}


def main() -> dict:
    from benchmarks.common import machine
    from codec.runtime import set_threads
    from slm.generate import FusedStep
    from slm.pipeline import SpeechPipeline

    set_threads(2)
    pipe = SpeechPipeline.from_pretrained("default", int8=False)
    m = pipe.infer_lm
    cal = pipe._calibration_ids()
    amax = FusedStep(m, False)._input_max(cal)
    modes = {"int8 weights": FusedStep(m, "weights"),
             "w8a8 on every matrix, no smoothing": every_matrix(FusedStep(m, "w8a8"), None),
             "w8a8 on every matrix, calibrated smoothing": every_matrix(FusedStep(m, "w8a8", cal), amax),
             "w8a8 on qkv and gate_up, no smoothing": FusedStep(m, "w8a8"),
             "w8a8 on qkv and gate_up, calibrated smoothing (the shipped form)": FusedStep(m, "w8a8", cal)}
    n, stats = compare(pipe, FusedStep(m, False), modes)
    out = {"positions": n, "sentences": SENTENCES, "machine": machine(2), "modes": stats}
    (HERE / "divergence.json").write_text(json.dumps(out, indent=1) + "\n")
    print(f"{n} frame positions over {len(SENTENCES)} sentences")
    print("| mode | mean KL(fp32 \\|\\| mode), nats | same most likely token |\n|---|---|---|")
    for k, v in out["modes"].items():
        print(f"| {k} | {v['mean_kl_nats']:.4f} | {v['top1_agreement']:.3f} |")
    return out


if __name__ == "__main__":
    main()
