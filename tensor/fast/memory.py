"""Memory for speed (switched on by tensor.fast.enable): glibc's malloc keeps freed memory.

Nothing here runs on import; enable() calls keep_freed_memory() once.
"""
import ctypes
import os
import sys


def keep_freed_memory():
    """Memory for speed: ask glibc's malloc to keep all freed memory for reuse.

    A training step allocates its activations in forward, frees them in backward, and the
    next step allocates the same arrays again. By default glibc hands big blocks back to
    the OS (a block over the mmap threshold, at most 32 MB, is unmapped when freed; free
    space at the top of the heap is trimmed), and the next step takes them back with fresh
    page faults, each page zeroed by the kernel. So here every block comes from malloc's
    heap (M_MMAP_MAX = 0: no block of its own, however big; where the heap cannot grow,
    glibc still falls back to mmap) and the heap is never trimmed (M_TRIM_THRESHOLD = -1).
    Measured: with glibc's defaults, tens of thousands of faults per step at nanoGPT's CPU
    size and at 6/6/384, 10-30% of the step; with a 32 MB mmap threshold and a 1 GiB trim
    threshold (this function's first version), GPT-2 small still took ~1,400 faults of 2 MB
    per step, ~200 ms of system time (its 100 MB logits are over any mmap threshold, and
    over 1 GiB of its activations was trimmed); now ~1 and ~15 ms.
    Peak memory is the same; RSS stays near its peak between steps instead of breathing.
    Linux/glibc only; a no-op elsewhere. Set TINYGRAD_GPT_MALLOC=default to skip it. It lasts
    for the life of the process (tensor.fast.disable() does not undo it).
    """
    if sys.platform != "linux" or os.environ.get("TINYGRAD_GPT_MALLOC") == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_MAX = -1, -2, -4              # glibc's mallopt keys
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return all(mallopt(key, value) == 1 for key, value in
               ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, -1), (M_TOP_PAD, 64 << 20)))
