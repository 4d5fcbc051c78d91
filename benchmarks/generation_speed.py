"""Generation speed: our decoding loop (``slm.generate``: KV cache, per-span vocabulary mask, sampling)
vs plain ``model.generate`` on the same backbone, same prompt, same number of greedy tokens, same threads.

The loop pays for what ``generate`` does not do (a mask per step, hidden states for the acoustic head)
and saves what its one-token step (``slm.generate.FusedStep`` on Llama backbones) saves; this says
what that nets. Full TTS (head + codec streaming) is in ``benchmarks/tts_speed.py``.

    python benchmarks/generation_speed.py --threads 1                         # tiny Llama config
    python benchmarks/generation_speed.py --backbone smollm2-135m --tokens 64 --out docs/results/generation_speed.json
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from codec.runtime import omp_defaults  # before torch loads: how OpenMP threads wait

omp_defaults()

from benchmarks.common import machine, peak_rss_mb, print_table, time_it, write_json


def _backbone(spec: str):
    import torch

    if spec == "tiny":  # a small Llama (random weights): the loop's overhead shows most on small models
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        cfg = LlamaConfig(vocab_size=49152, hidden_size=192, intermediate_size=512, num_hidden_layers=4,
                          num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
        return LlamaForCausalLM(cfg).eval()
    from adapters.backbones import load_backbone

    return load_backbone(spec).model


def main() -> int:
    import torch

    from slm.generate import Sampling, generate_text, inference_copy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="tiny", help="'tiny' (Llama config), 'smollm2-135m', a hub id or dir")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per run (greedy, no early stop)")
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = _backbone(args.backbone)
    vocab = model.get_input_embeddings().weight.shape[0]
    prompt = torch.randint(0, vocab, (args.prompt_tokens,), generator=torch.Generator().manual_seed(0))
    allowed = torch.ones(vocab, dtype=torch.bool)
    greedy = Sampling(temperature=0.0, top_k=0, top_p=1.0)

    fast = inference_copy(model)  # what the pipeline generates with (Llama: one-token FusedStep)

    def ours():
        return generate_text(fast, prompt, allowed, set(), args.tokens, greedy)

    def ours_hf_step():
        return generate_text(model, prompt, allowed, set(), args.tokens, greedy)

    def plain():
        with torch.no_grad():
            return model.generate(prompt[None], attention_mask=torch.ones(1, prompt.numel(),
                                  dtype=torch.long), max_new_tokens=args.tokens, min_new_tokens=args.tokens,
                                  do_sample=False, pad_token_id=0)

    same = ours() == plain()[0, prompt.numel():].tolist()
    rows = []
    for name, fn in (("slm.generate loop", ours), ("model.generate", plain),
                     ("slm.generate loop, transformers forward per step", ours_hf_step)):
        t = time_it(fn, args.repeats)
        rows.append({"name": name, **t, "tokens_per_s": args.tokens / t["seconds_median"]})
    ratio = rows[1]["seconds_median"] / rows[0]["seconds_median"]
    result = {"benchmark": "greedy generation", "backbone": args.backbone, "tokens": args.tokens,
              "prompt_tokens": args.prompt_tokens, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
              "same_tokens": same, "machine": machine(args.threads), "peak_rss_mb": peak_rss_mb(), "rows": rows,
              "ours_speed_vs_generate": ratio}
    print_table(rows, [("name", "loop", ""), ("tokens_per_s", "tokens/s", ".1f"), ("seconds_median", "s", ".3f")])
    m = result["machine"]
    print(f"ours / generate speed: {ratio:.2f}x; identical greedy tokens: {same}; backbone {args.backbone} "
          f"({result['params_m']:.0f}M); {m['cpu']}, {m['threads']} threads, {m['dtype']}, torch {m['torch']}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
