"""LoRA on a backbone through peft (DESIGN.md §6).

The new vocabulary rows (semantic tokens + specials) are trained with peft's
``trainable_token_indices``: only those rows get a delta, the (possibly tied) embedding matrix stays
shared with the LM head, and ``save_embedding_layers=False`` keeps the adapter to a few MB instead of
saving the whole resized embedding. The base rows of the new tokens are re-created deterministically
by ``adapters.backbones.extend_vocabulary`` before the adapter is loaded.
"""
from __future__ import annotations

import contextlib
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoraSettings:
    """LoRA hyper-parameters. Defaults follow common speech-LM recipes (Orpheus r=32/all projections,
    Llasa r=8/q,v; fish-speech r=8, alpha=16): all projections because the backbone must learn a new
    "language" of semantic tokens, not only a style."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0  # 0 keeps training exactly reproducible without extra RNG bookkeeping
    target_modules: tuple[str, ...] = ALL_LINEAR
    train_new_tokens: bool = True  # trainable_token_indices on the new rows
    extra: dict = field(default_factory=dict)  # passed through to peft.LoraConfig

    def __post_init__(self) -> None:
        if self.r <= 0 or self.alpha <= 0:
            raise ValueError(f"LoRA r and alpha must be > 0, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        self.target_modules = tuple(self.target_modules)

    def to_peft(self, new_token_ids: list[int] | None = None):
        from peft import LoraConfig

        kw = dict(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                  target_modules=list(self.target_modules), task_type="CAUSAL_LM", **self.extra)
        if self.train_new_tokens and new_token_ids:
            kw["trainable_token_indices"] = list(new_token_ids)
        return LoraConfig(**kw)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_modules"] = list(self.target_modules)
        return d


def apply_lora(model: torch.nn.Module, settings: LoraSettings, new_token_ids: list[int] | None = None):
    """Wrap ``model`` in a peft model with a fresh LoRA adapter; returns the ``PeftModel``."""
    from peft import get_peft_model

    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [m for m in settings.target_modules if m not in present]
    if missing:
        raise ValueError(f"LoRA target modules {missing} not in this backbone (it has e.g. "
                         f"{sorted(m for m in present if 'proj' in m)[:10]}); set lora.target_modules")
    with _peft_quiet():
        return get_peft_model(model, settings.to_peft(new_token_ids))


@contextlib.contextmanager
def _peft_quiet():
    """peft asks transformers a deprecated question on every wrap/load; its FutureWarning is for peft's
    authors, not for our users, so it is silenced here (and only here)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning)
        yield


def save_adapter(peft_model, directory: str | Path) -> Path:
    """Adapter weights + config only (no base embedding matrix)."""
    from codec.runtime import file_mode

    directory = Path(directory)
    peft_model.save_pretrained(str(directory), save_embedding_layers=False)
    for f in directory.glob("adapter_model.*"):  # written 0600 by safetensors: the umask's mode, as for any file
        f.chmod(file_mode())
    return directory


def load_adapter(model: torch.nn.Module, directory: str | Path, trainable: bool = False):
    """Re-apply a saved adapter to a base model (already vocabulary-extended)."""
    from peft import PeftModel

    directory = Path(directory)
    if not (directory / "adapter_config.json").exists():
        raise FileNotFoundError(f"no LoRA adapter at {directory} (adapter_config.json missing)")
    with _peft_quiet():
        return PeftModel.from_pretrained(model, str(directory), is_trainable=trainable)


def merge(peft_model) -> torch.nn.Module:
    """Fold LoRA (and the trained token rows) into the base weights; returns the plain model."""
    return peft_model.merge_and_unload()


def trainable_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return train, total
