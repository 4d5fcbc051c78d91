"""Tables a person reads: markdown + JSON side by side, and a quality-vs-bitrate plot."""
from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any


def fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def markdown_table(rows: list[dict], columns: list[tuple[str, str, int]]) -> str:
    """``columns``: (key, header, digits). Missing values print as an en dash."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(fmt(r.get(k), d) for k, _, d in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


def machine_info(threads: int | None = None) -> dict:
    import os

    import torch

    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": threads or torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "dtype": "float32"}


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float) + "\n")


def plot_quality_vs_bitrate(rows: list[dict], path: Path, metrics: list[tuple[str, str]],
                            reference: dict | None = None) -> Path:
    """One panel per metric, systems as labelled points at their bitrate; ground truth as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.4))
    axes = [axes] if len(metrics) == 1 else list(axes)
    for ax, (key, label) in zip(axes, metrics):
        for r in rows:
            v = r.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            ax.scatter(r["bitrate"], v)
            ax.annotate(r["system"], (r["bitrate"], v), fontsize=7, xytext=(3, 3), textcoords="offset points")
        ref = None if reference is None else reference.get(key)
        if ref is not None and not (isinstance(ref, float) and math.isnan(ref)):
            ax.axhline(ref, color="gray", ls="--", lw=1, label="ground truth")
            ax.legend(fontsize=7)
        ax.set_xlabel("bitrate (bps)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
