"""Training checkpoints: accelerate's ``save_state`` per step dir, a completion marker, retention.

A checkpoint is ``<out>/checkpoints/step_00001234/`` holding what ``Accelerator.save_state`` writes
(models, optimisers, schedulers, registered objects such as the EMA and the data cursor, and every
process's RNG states) plus ``trainer_state.json`` written *last*: a directory without it is an
interrupted write and is ignored on resume. Using accelerate's own state format keeps FSDP and
DeepSpeed sharded states loadable by the same code.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

STATE_FILE = "trainer_state.json"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def step_dir(out_dir: str | Path, step: int) -> Path:
    return checkpoint_root(out_dir) / f"step_{step:08d}"


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = checkpoint_root(out_dir)
    if not root.exists():
        return []
    return sorted(p for p in root.glob("step_*") if (p / STATE_FILE).exists())


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def save_checkpoint(accelerator, out_dir: str | Path, step: int, state: dict, keep_last: int) -> Path:
    """Save everything accelerate tracks, then the marker, then prune to ``keep_last`` checkpoints."""
    d = step_dir(out_dir, step)
    if d.exists() and accelerator.is_main_process:
        shutil.rmtree(d)  # a stale, incomplete write of the same step
    accelerator.wait_for_everyone()
    accelerator.save_state(str(d))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (d / STATE_FILE).write_text(json.dumps({**state, "step": step}, indent=2))
        prune_checkpoints(out_dir, keep_last)
    accelerator.wait_for_everyone()
    return d


def prune_checkpoints(out_dir: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` complete checkpoints (and stale partial ones older
    than the newest complete one). Returns what was removed."""
    complete = list_checkpoints(out_dir)
    removed: list[Path] = []
    if keep_last > 0 and len(complete) > keep_last:
        for p in complete[:-keep_last]:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    if complete:
        newest = complete[-1].name
        for p in checkpoint_root(out_dir).glob("step_*"):
            if not (p / STATE_FILE).exists() and p.name < newest:
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def load_checkpoint(accelerator, path: str | Path) -> dict:
    """Restore everything ``save_checkpoint`` saved; returns the trainer state (with ``step``)."""
    path = Path(path)
    if not (path / STATE_FILE).exists():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {STATE_FILE})")
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())
