"""Native (C++) kernels, built on first use with torch's extension builder and cached.

:func:`fused_layers` is the layer loop of :class:`slm.generate.FusedStep` for int8 weight-only matrices on CPU
(``fused_layers.cpp``): the same arithmetic as the Python loop, without its ~30 small torch calls per layer,
and on CPUs with AVX512-VNNI with its own int8 matmul (:func:`int8_mm`; on AMX tiles where the CPU has
them, docs/results/amx_step) and attention (docs/results/vnni_step).
It is built once per torch version and source (~15-30 s with g++ and ninja, both installed by ``make setup``)
into ``<cache>/native/``; ``make setup`` builds it ahead of time. Where it cannot be built (no compiler, a
failed build) or ``SLM_NATIVE=0`` is set, callers keep the Python loop: the same results to float rounding
(docs/results/native_step), slower. The build's
failure is reported once, with the log's last lines.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable

_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fused_layers.cpp")
_lock = threading.Lock()
_state: dict[str, object] = {}


def enabled() -> bool:
    """False where ``SLM_NATIVE`` is 0/false/no/off (the Python loop is used everywhere)."""
    return os.environ.get("SLM_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")


def build_dir() -> str:
    """Where the library is built: one dir per torch version and source digest, so an upgrade or an edit
    rebuilds instead of loading a stale library."""
    import torch

    from codec.runtime import cache_dir

    with open(_SRC, "rb") as f:
        tag = hashlib.sha256(f.read() + torch.__version__.encode()).hexdigest()[:16]
    return os.path.join(cache_dir(), "native", f"fused_layers-{tag}")


def _build(verbose: bool) -> Callable | None:
    import torch

    d = build_dir()
    lib = os.path.join(d, "slm_native_fused_layers.so")
    if os.path.exists(lib):
        try:
            torch.ops.load_library(lib)
            return torch.ops.slm_native.fused_layers
        except OSError:  # half written by a build running in another process: build (it waits for that one)
            pass
    os.makedirs(d, exist_ok=True)
    import logging

    log = logging.getLogger("torch.utils.cpp_extension")  # "No CUDA runtime is found": beside the point here
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        log.setLevel(level)
    # ninja is a pip package: its binary sits beside the interpreter, which may not be on PATH
    bindir = os.path.dirname(sys.executable)
    if bindir not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")
    print("[slm] building the native decoding step (once per torch version, ~30 s)...", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # the build dir's lock file makes a second process wait for this build instead of racing it
        cpp_extension.load(name="slm_native_fused_layers", sources=[_SRC], build_directory=d, extra_cflags=["-O3", "-fopenmp"],
                           extra_ldflags=["-fopenmp"], is_python_module=False, verbose=verbose)
    return torch.ops.slm_native.fused_layers


def fused_layers(verbose: bool = False) -> Callable | None:
    """``torch.ops.slm_native.fused_layers``, building it on first use; None where disabled or unbuildable
    (reported once, then the caller's Python path)."""
    if not enabled():
        return None
    with _lock:
        if "op" not in _state:
            try:
                _state["op"] = _build(verbose)
            except (RuntimeError, OSError, ImportError, subprocess.SubprocessError) as e:  # no compiler or ninja,
                # a failed compile: the Python loop still works
                lines = [ln for ln in str(e).strip().splitlines() if ln.strip()][-6:]
                warnings.warn("the native decoding step could not be built, so decoding uses the (slower) Python "
                              "loop; set SLM_NATIVE=0 to skip trying. " + " | ".join(lines), RuntimeWarning,
                              stacklevel=2)
                _state["op"] = None
        return _state["op"]  # type: ignore[return-value]


def int8_kernel() -> str | None:
    """Which int8 matmul the native loop runs: ``"amx"`` (its own kernel on AMX tiles for passes of 2+ rows, on
    AVX512-VNNI for one row; ``SLM_NATIVE_AMX=0``: VNNI throughout; docs/results/amx_step), ``"avx512-vnni"`` (its
    own kernel, on CPUs with AVX512-VNNI), ``"torch"`` (``torch._weight_int8pack_mm``), or None where the library
    is not available."""
    op = fused_layers()
    if op is None:
        return None
    import torch

    return torch.ops.slm_native.int8_kernel()


def int8_mm(x, w, scale, wsum):
    """``x [rows, K]`` bf16 times int8 ``w [N, K]`` (per-row bf16 ``scale``, ``wsum`` = ``w.sum(1)`` as int32)
    -> bf16 ``[rows, N]``: what ``torch._weight_int8pack_mm(x, w, scale)`` computes, through the native kernel
    (:func:`int8_kernel`); None where the library is not available."""
    if fused_layers() is None:
        return None
    import torch

    return torch.ops.slm_native.int8_mm(x, w, scale, wsum)


def main() -> int:
    """``python -m slm.native``: build (or find) the library and say where it is."""
    op = fused_layers(verbose="-v" in sys.argv)
    if op is None:
        print("native decoding step: not available (see the warning above)", file=sys.stderr)
        return 1
    print(f"native decoding step: {build_dir()} (int8 kernel: {int8_kernel()})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
