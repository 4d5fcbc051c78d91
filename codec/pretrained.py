"""Versioned on-disk format of a codec: ``config.json`` + ``model.safetensors`` (+ the text
tokenizer of secousticodec). The teacher k-means codebook is a buffer, so it travels in the weights."""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from codec.config import CodecConfig

if TYPE_CHECKING:
    from codec.model import DualStreamCodec

FORMAT_VERSION = 1
CONFIG_NAME, WEIGHTS_NAME, TOKENIZER_NAME = "config.json", "model.safetensors", "text_tokenizer.model"


def save_pretrained(model: DualStreamCodec, directory: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` to ``directory``; ``dtype=torch.float16`` halves the file (loads back to fp32)."""
    from codec.runtime import save_safetensors

    if dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, got {dtype}")
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in model.state_dict().items()}
    save_safetensors(state, str(d / WEIGHTS_NAME), metadata={"format_version": str(FORMAT_VERSION)})
    meta = {"format_version": FORMAT_VERSION, "variant": model.config.variant, "dtype": str(dtype).split(".")[-1],
            "codec": model.config.to_dict()}
    (d / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
    tok = getattr(model.bottleneck, "tokenizer", None)
    if tok is not None:
        (d / TOKENIZER_NAME).write_bytes(tok.proto)
    return d


def load_pretrained(cls: type[DualStreamCodec], directory: str | Path, map_location: str = "cpu",
                    variant: str | None = None) -> DualStreamCodec:
    """Rebuild a codec from ``directory``; clear errors on a version, variant or shape mismatch."""
    from safetensors.torch import load_file

    d = Path(directory)
    if not (d / CONFIG_NAME).is_file() or not (d / WEIGHTS_NAME).is_file():
        raise FileNotFoundError(f"{d} is not a codec directory: expected {CONFIG_NAME} and {WEIGHTS_NAME}")
    meta = json.loads((d / CONFIG_NAME).read_text())
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{d}: codec format_version {version!r}, this code reads version {FORMAT_VERSION}")
    cfg = CodecConfig.from_dict(meta["codec"])
    if meta.get("variant") != cfg.variant:
        raise ValueError(f"{d}: config.json says variant {meta.get('variant')!r} but its codec config is {cfg.variant!r}")
    if variant is not None and variant != cfg.variant:
        raise ValueError(f"{d} holds a {cfg.variant!r} codec, expected {variant!r}")
    model = cls(cfg)
    state = load_file(str(d / WEIGHTS_NAME), device=map_location)
    if cfg.variant == "stacodec" and any(k.startswith("bottleneck.spd.blocks.") for k in state):
        raise ValueError(f"{d}: this stacodec checkpoint has the former convolutional SPD head; the SPD head is "
                         "now a transformer (spd_layers, spd_dim, spd_heads), so these weights cannot be "
                         "loaded: retrain the codec (slm codec train --config configs/codec_train/stacodec.yaml)")
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    bad = [f"{k}: saved {list(state[k].shape)} vs model {list(own[k].shape)}"
           for k in own.keys() & state.keys() if state[k].shape != own[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"{d}: weights do not fit the {cfg.variant!r} config: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}, shape mismatches {bad[:5]}")
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()})
    if (d / TOKENIZER_NAME).is_file():
        model.set_text_tokenizer((d / TOKENIZER_NAME).read_bytes())
    return model.to(map_location).eval()
