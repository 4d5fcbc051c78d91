"""Attention inputs for packed rows: each example sees only itself (block-diagonal causal mask).

A packed row holds several unrelated examples (``slm.lm_data.pack``). With a plain causal mask the
later ones attend to the earlier ones and their positions keep counting across examples, which is
not what the model meets at inference (one example, positions from 0). ``collate`` records per token
the index of its example in the row (``Batch.segment_ids``, ``-1`` on padding); from it we build

* ``position_ids`` that restart at 0 for every example (RoPE sees the positions of the example alone);
* an attention mask ``[B, 1, T, T]`` that is causal *within* each example and empty across examples.

Why a dense 4D mask and not only ``position_ids``: transformers' ``create_causal_mask``
(``masking_utils._preprocess_mask_arguments``) returns a 4D mask as it is, and the Llama family hands it
to ``torch.nn.functional.scaled_dot_product_attention`` as ``attn_mask``: this works on CPU, through
peft (which passes the keyword on untouched), and in every transformers release that takes custom 4D
masks. Recent transformers also infers packed sequences from ``position_ids`` resets when no mask is
given, but that heuristic is newer, skipped as soon as a 2D mask is passed, and silently falls back to
cross-example attention in older releases. Flash-attention backends cannot take a dense mask at all;
for them (and flex attention) we pass ``position_ids`` alone with ``attention_mask=None``, which is
their supported packed format (varlen ``cu_seqlens`` derived from the position resets).

Padding (segment ``-1``) forms its own segment: padded queries attend to earlier padding, so no row of
the mask is empty (an all-masked row gives NaN in SDPA's math kernel); their labels are ignored anyway.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

# "block": examples packed, block-diagonal causal mask, positions restart per example (correct; default).
# "concat": examples packed, causal over the whole row, positions run on (the older HF `packing=True`
#           simplification; kept to compare with runs trained that way).
# "none": one example per row, padded (no packing; most padding, same attention as "block").
PACKING_MODES = ("block", "concat", "none")


def check_packing(mode: str) -> str:
    if mode not in PACKING_MODES:
        raise ValueError(f"packing must be one of {PACKING_MODES}, got {mode!r}")
    return mode


def _check_segments(segment_ids: Tensor) -> None:
    if segment_ids.dim() != 2:
        raise ValueError(f"segment_ids must be [B, T], got shape {tuple(segment_ids.shape)}")


def segment_starts(segment_ids: Tensor) -> Tensor:
    """``[B, T]`` bool: True at the first token of each segment (padding counts as one segment)."""
    _check_segments(segment_ids)
    change = torch.ones_like(segment_ids, dtype=torch.bool)
    change[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    return change


def position_ids(segment_ids: Tensor) -> Tensor:
    """``[B, T]`` positions counted from 0 at the start of every segment."""
    ar = torch.arange(segment_ids.shape[1], device=segment_ids.device).expand_as(segment_ids)
    start = torch.where(segment_starts(segment_ids), ar, torch.zeros_like(ar)).cummax(dim=-1).values
    return ar - start


def block_causal_mask(segment_ids: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """``[B, 1, T, T]`` mask: query ``q`` may attend key ``k`` iff ``k <= q`` and both lie in the same segment.

    ``dtype=None``: bool (True = attend; what SDPA takes). A float dtype: additive (0 / dtype min), what
    transformers' eager attention adds to its scores."""
    _check_segments(segment_ids)
    T = segment_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    allowed = (same & causal)[:, None]
    if dtype is None:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


def attn_implementation(lm) -> str:
    cfg = getattr(lm, "config", None)
    return str(getattr(cfg, "_attn_implementation", None) or "sdpa")


def lm_inputs(lm, input_ids: Tensor, attention_mask: Tensor, segment_ids: Tensor | None, mode: str) -> dict[str, Any]:
    """Keyword arguments for ``lm(...)`` (besides labels) for a collated batch under packing ``mode``."""
    check_packing(mode)
    if mode != "block" or segment_ids is None:
        return {"input_ids": input_ids, "attention_mask": attention_mask}
    pos = position_ids(segment_ids)
    impl = attn_implementation(lm)
    if impl == "sdpa":
        mask = block_causal_mask(segment_ids)
    elif impl == "eager":
        mask = block_causal_mask(segment_ids, lm.get_input_embeddings().weight.dtype)
    else:  # flash_attention_*, flex_attention, kernels: packed format = position resets, no dense mask
        mask = None
    return {"input_ids": input_ids, "attention_mask": mask, "position_ids": pos}
