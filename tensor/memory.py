"""Keep freed memory for reuse, so each training step does not pay page faults again.

A training step allocates its activations in forward and frees them in backward; the next
step allocates the same arrays again. By default glibc's malloc gives big blocks back to
the operating system when they are freed (a block over its mmap threshold is unmapped, and
free space at the top of its heap is trimmed), so the next step gets fresh pages, and the
kernel faults in and zeroes every one of them. For GPT-2 small (the L benchmark shape) that
is about 1,400 page faults of 2 MB (2.8 GB) and 180-250 ms of system time per step.

keep_freed_memory() asks malloc, through mallopt, to take every block from its heap
(M_MMAP_MAX = 0) and never to trim the heap (M_TRIM_THRESHOLD = -1): a freed activation's
memory is reused by the next step as it is, no faults. The process's peak memory stays the
same (measured: 2,853 vs 2,864 MiB at L); between steps its resident memory stays at that
peak instead of dropping. Measured in benchmarks/README.md.

`import tensor` calls it on Linux with glibc; elsewhere (macOS, musl) it does nothing, and
TINYGRAD_GPT_KEEP_MEMORY=0 turns it off.
"""
import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1   # mallopt parameters, from glibc's <malloc.h>
M_MMAP_MAX = -4


def keep_freed_memory():
    """Tell glibc's malloc to keep freed memory for reuse. Returns True if it was told."""
    if os.environ.get("TINYGRAD_GPT_KEEP_MEMORY", "1") == "0" \
            or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt                 # glibc only: musl has no mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success: every block from the heap, and the heap never trimmed
    return mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
