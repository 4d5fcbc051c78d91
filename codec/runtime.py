"""Process-wide runtime settings: thread counts and OpenMP waiting chosen on purpose (DESIGN.md §8)."""
from __future__ import annotations

import os

# How OpenMP threads wait between parallel regions, read once when torch loads libgomp. Measured on the
# 2-core Xeon (one SmolLM2-135M decoding step, 2 threads; docs/results/omp_wait.md):
#   policy                  idle box   other core busy
#   libgomp default          26 ms      370 ms   (spins ~300k rounds: fights the other process)
#   OMP_WAIT_POLICY=PASSIVE  42 ms       44 ms   (no spin: 2 threads no faster than 1 thread, 42 ms)
#   GOMP_SPINCOUNT=10000     26 ms       81 ms   (a bounded spin: the default's speed when idle)
# PASSIVE stays for OpenMP runtimes other than libgomp; libgomp's GOMP_SPINCOUNT overrides it.
OMP_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}


def omp_defaults(environ=None) -> dict:
    """Put :data:`OMP_DEFAULTS` into ``environ`` (default ``os.environ``) unless the user chose a waiting
    policy (either variable set): then theirs is left whole. Returns ``environ``. The package
    ``__init__`` files call it before anything imports torch; subprocess launchers pass it a copy."""
    env = os.environ if environ is None else environ
    if not any(k in env for k in OMP_DEFAULTS):
        env.update(OMP_DEFAULTS)
    return env


def set_threads(n: int | None = None) -> int:
    """Set torch intra-op threads to ``n`` (default: all cores) and return the value used.

    How the threads wait (:func:`omp_defaults`) is read only when torch is first imported, so the package
    ``__init__`` files of codec/adapters/slm/demos set it before anything imports torch. Setting it here
    only helps a process that imports torch after calling this.
    """
    omp_defaults()
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
    still whole. Registered once, by every training loop (a no-op at exit in a single process, or when the
    caller already destroyed the group).
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


def multi_process() -> bool:
    """Whether this process is one rank of several (torchrun, accelerate launch: ``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def check_ranks_agree(accelerator, groups: dict) -> None:
    """Data-parallel ranks must end training with the same weights: for each named group of tensors (the same
    sequence on every rank; an iterator is read one tensor at a time), one sum per tensor, gathered from all ranks
    and compared. A rank that
    skipped a step or synchronised no gradients fails here, naming the group, instead of exporting its own copy."""
    import torch

    for name, tensors in groups.items():
        v = torch.stack([t.detach().double().sum() for t in tensors]).to(accelerator.device)
        allv = accelerator.gather(v[None])
        if not bool((allv == allv[0]).all()):
            raise RuntimeError(f"data-parallel ranks ended with different {name} weights")


def leave_rank() -> None:
    """End a rank of a multi-process run (accelerate, torchrun, DeepSpeed) once its work is written: tear the
    process group down while Python is whole, then leave without the interpreter's teardown and C++ static
    destructors. There, a finished CPU run aborted at random (SIGABRT, "terminate called without an active
    exception", after the last step and checkpoint), so a successful run could exit non-zero: about once in a
    dozen DeepSpeed launches, and once in a CI run of the 2-process FSDP test, whose ranks went on to Python's
    own teardown (the atexit hook of :func:`destroy_process_group_at_exit` did not prevent it). The CLIs
    (``slm train``, ``slm codec train``) call it last; library callers keep their process."""
    import sys

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def file_mode() -> int:
    """The mode a new file gets here (0o666 less the umask). Read from /proc where it can be: setting the
    umask to read it back would leave, for a moment, other threads creating files with no umask at all."""
    try:
        with open("/proc/self/status") as f:
            mask = next(int(ln.split()[1], 8) for ln in f if ln.startswith("Umask:"))
    except (OSError, StopIteration, ValueError, IndexError):
        mask = os.umask(0o077)  # (no /proc: the strictest mask for the moment it takes)
        os.umask(mask)
    return 0o666 & ~mask


def save_safetensors(tensors: dict, path, metadata: dict | None = None) -> None:
    """``safetensors.torch.save_file`` with the file's mode set by the umask, like any other file written
    here (safetensors writes through a private temporary file and leaves it 0600: weights and token files
    that others sharing the machine or the group cannot read)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    os.chmod(path, file_mode())
