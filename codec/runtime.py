"""Process-wide runtime settings: thread counts chosen on purpose (DESIGN.md §8)."""
from __future__ import annotations

import os


def set_threads(n: int | None = None) -> int:
    """Set torch intra-op threads to ``n`` (default: all cores) and return the value used.

    On busy 2-core machines OpenMP spin-waiting can make two threads ~10x slower than one;
    ``OMP_WAIT_POLICY=PASSIVE`` avoids it, but libgomp reads it only when torch is first imported, so
    the package ``__init__`` files of codec/adapters/slm/demos set it before anything imports torch.
    Setting it here only helps a process that imports torch after calling this.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    n = n or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def cache_dir() -> str:
    """Where derived artefacts (assembled model dirs, feature caches, judge caches) live."""
    d = os.environ.get("DUALSTREAM_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dualstream-slm")
    os.makedirs(d, exist_ok=True)
    return d


def destroy_process_group_at_exit() -> None:
    """Tear down the torch.distributed process group (when one is up) at interpreter exit.

    A gloo group left alive at exit keeps C++ worker threads that may still hold tensors; finalising
    them while the interpreter is being torn down aborts the process (SIGABRT, "terminate called without an
    active exception") at random, after training succeeded. An ``atexit`` handler runs while Python is
    still whole. Registered once; a no-op when the caller already destroyed the group.
    """
    import atexit

    global _EXIT_HOOK
    if _EXIT_HOOK:
        return
    _EXIT_HOOK = True

    def _destroy():
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

    atexit.register(_destroy)


_EXIT_HOOK = False
