"""Tiny offline building blocks for the speech-LM tests: a saved tiny Llama + tokenizer, a tiny codec,
token dirs. Nothing is downloaded."""
from __future__ import annotations

import json
import tempfile
from functools import cache
from pathlib import Path

import torch

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
TEXTS = ["the cat sat on the mat.", "a quick brown fox jumps over the lazy dog.", "hello world, how are you?",
         "speech models read and write tokens.", "one two three four five six seven.", "good morning to you all."]


@cache
def tiny_backbone_dir() -> str:
    """A 2-layer Llama with tied embeddings and a byte-level BPE tokenizer, saved like a hub model."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = Path(tempfile.mkdtemp(prefix="tiny_llama_"))
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(TEXTS * 4, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>", pad_token="<|im_end|>")
    tok.chat_template = CHATML
    tok.save_pretrained(d)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(d)
    return str(d)


@cache
def tiny_codec_dir(variant: str = "sacodec") -> str:
    """A tiny random codec, causal so that streaming decode is exact."""
    from codec.config import CodecConfig
    from codec.model import DualStreamCodec

    torch.manual_seed(0)
    d = Path(tempfile.mkdtemp(prefix=f"tiny_codec_{variant}_"))
    cfg = CodecConfig(**{**CodecConfig.tiny(variant).to_dict(), "causal": True})
    DualStreamCodec(cfg).eval().save_pretrained(d)
    return str(d)


def tiny_codec(variant: str = "sacodec"):
    from codec.model import DualStreamCodec

    return DualStreamCodec.from_pretrained(tiny_codec_dir(variant)).eval()


@cache
def tiny_token_dir(variant: str = "sacodec", n: int = 6) -> str:
    """Random-audio utterances encoded by the tiny codec, written as a token dir (index.jsonl)."""
    codec = tiny_codec(variant)
    d = Path(tempfile.mkdtemp(prefix=f"tiny_tokens_{variant}_"))
    g = torch.Generator().manual_seed(1)
    rows = []
    for i in range(n):
        secs = 0.6 + 0.1 * (i % 3)
        wav = (torch.randn(1, 1, int(secs * codec.sample_rate), generator=g) * 0.1).clamp(-1, 1)
        codec.encode(wav).save(d / f"u{i}.safetensors")
        rows.append({"id": f"u{i}", "tokens": f"u{i}.safetensors", "text": TEXTS[i % len(TEXTS)],
                     "speaker": f"spk{i % 2}", "split": "train" if i < n - 1 else "valid"})
    (d / "index.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(d)


def tiny_train_config(tmp: Path, variant: str = "sacodec", **kw):
    from slm.train import TrainConfig

    base = {"codec": tiny_codec_dir(variant), "tokens": tiny_token_dir(variant), "out_dir": str(tmp / "run"),
            "backbone": tiny_backbone_dir(), "lora": {"r": 4, "alpha": 8},
            "head": {"dim": 32, "n_layers": 1, "n_heads": 2}, "max_len": 128, "batch_size": 2, "steps": 4,
            "warmup": 1, "lr": 3e-3, "head_lr": 3e-3, "eval_every": 0, "save_every": 2, "log_every": 1,
            "mixed_precision": "no", "eval_samples": 0}
    base.update(kw)
    return TrainConfig(**base)
