"""TTS speed on CPU: our streaming loop (backbone + acoustic head + codec) vs plain ``model.generate``.

Same backbone, same prompt, same number of semantic tokens, same threads, side by side in one run.
Without ``--model`` the backbone is the embedded SmolLM2-135M with a fresh (zero-effect) LoRA and an
untrained head/codec: speed does not depend on the weights' values.

    python benchmarks/tts_speed.py --threads 2 --frames 50
    python benchmarks/tts_speed.py --model checkpoints/slm/smollm2_synth/final --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _build(args):
    import torch

    from adapters.backbones import extend_vocabulary, load_backbone
    from adapters.lora import LoraSettings, apply_lora
    from codec.config import CodecConfig
    from codec.model import DualStreamCodec
    from slm.acoustic_head import AcousticHead, AcousticHeadConfig
    from slm.layout import TokenLayout
    from slm.pipeline import SpeechPipeline

    if args.model:
        return SpeechPipeline.from_pretrained(args.model)
    torch.manual_seed(0)
    codec = DualStreamCodec(CodecConfig.default(args.variant)).eval()
    bb = load_backbone(args.backbone)
    layout = TokenLayout.for_tokenizer(bb.tokenizer, codec.semantic_codebook_size)
    extend_vocabulary(bb.model, bb.tokenizer, layout)
    lm = apply_lora(bb.model, LoraSettings(), layout.new_ids())
    head = None
    if codec.n_acoustic_codebooks:
        head = AcousticHead(AcousticHeadConfig(bb.model.config.hidden_size, codec.semantic_codebook_size,
                                               codec.acoustic_codebook_size, codec.n_acoustic_codebooks,
                                               round(codec.acoustic_rate / codec.semantic_rate)))
    return SpeechPipeline(lm, bb.tokenizer, layout, codec, head)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="a trained speech-LM dir (default: untrained SmolLM2 stack)")
    ap.add_argument("--backbone", default="smollm2-135m")
    ap.add_argument("--variant", default="sacodec", help="codec variant for the untrained stack")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=50, help="semantic tokens to generate")
    ap.add_argument("--text", default="The quick brown fox jumps over the lazy dog, twice.")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()

    import torch

    from codec.runtime import set_threads
    from slm.generate import Sampling, generate_frames
    from slm.templates import tts_prompt

    set_threads(args.threads)
    pipe = _build(args)
    prompt = tts_prompt(pipe.tokenizer, pipe.layout, args.text)
    n = args.frames
    s = Sampling(temperature=0.8, top_k=50, top_p=0.95)
    audio_s = n / pipe.codec.semantic_rate
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores", "threads": args.threads,
           "dtype": "float32", "frames": n, "semantic_rate": pipe.codec.semantic_rate, "audio_seconds": audio_s,
           "prompt_tokens": int(prompt.numel())}
    # warm-up (first-call allocations, lazy inits)
    list(generate_frames(pipe.lm, pipe.layout, prompt, pipe.head, s, 3, None, torch.Generator().manual_seed(0), 3))

    # 1. plain transformers generate, same number of new tokens, KV cache, greedy, no head, no codec
    model = pipe.lm
    t = time.perf_counter()
    with torch.no_grad():
        model.generate(input_ids=prompt[None], attention_mask=torch.ones(1, prompt.numel(), dtype=torch.long),
                       max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pipe.tokenizer.eos_token_id)
    dt = time.perf_counter() - t
    res["hf_generate"] = {"seconds": dt, "tokens_per_s": n / dt, "rtf_lm_only": dt / audio_s}

    # 2. our loop, semantic tokens only (no head): constrained vocab + sampling + cache
    t = time.perf_counter()
    list(generate_frames(pipe.lm, pipe.layout, prompt, None, s, n, None, torch.Generator().manual_seed(0), n))
    dt = time.perf_counter() - t
    res["our_loop_lm_only"] = {"seconds": dt, "tokens_per_s": n / dt, "rtf_lm_only": dt / audio_s}

    # 3. full streaming TTS: LM + acoustic head per frame + codec decode per chunk
    t = time.perf_counter()
    first, samples = None, 0
    gen = torch.Generator().manual_seed(0)
    for chunk in pipe._stream_frames(prompt, s, n, None, gen, min_frames=n):
        first = first if first is not None else time.perf_counter() - t
        samples += chunk.shape[-1]
    dt = time.perf_counter() - t
    res["streaming_tts"] = {"seconds": dt, "tokens_per_s": n / dt, "rtf": dt / (samples / pipe.sample_rate),
                            "time_to_first_audio_s": first, "chunk_frames": pipe.chunk_frames,
                            "first_chunk_frames": pipe.first_chunk_frames,
                            "audio_seconds": samples / pipe.sample_rate}
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
