"""Both CPU cores for the elementwise work of the big fused ops (the fast kernels only).

A matmul already runs on every core: NumPy hands it to its BLAS (OpenBLAS), which splits it
over its own threads. A NumPy ufunc (exp, tanh, *, +=...) runs on ONE core. PyTorch splits
such loops over its threads; we do the same, by hand, for the few big loops of a training
step (GELU, the attention softmax, layer norm, cross-entropy, AdamW):

    for_blocks(xp, n, body)      # body(lo, hi) for consecutive pieces [lo, hi) of range(n)

cuts range(n) into blocks; this thread runs the first half of the blocks and one helper
thread the second half. NumPy releases Python's GIL inside every ufunc on a large array,
so the two halves really run at the same time. Each block is computed exactly the same
way wherever it runs, so results never depend on the thread count.

run_pair(first, second) is the coarse version: two whole calls at once, one per core (the
two halves of a batch, nn/parallel.py).

Attention's blocks also multiply matrices (one head's small products each): for those,
`for_blocks(..., matmuls=True)` sets OpenBLAS to one thread while the two threads run, so
the cores are not shared four ways (`_blas_switch`, through ctypes; without it the blocks
run in order here).

On a GPU (xp is CuPy) there is one block, body(0, n): the GPU is parallel already. The
blocks run here, in order, when there are fewer than two of them, when called from inside
another for_blocks, or with TINYGRAD_GPT_THREADS=1 (or `set_threads(1)`). The default is
2 on a machine with 2+ cores.
"""
import os
import queue
import threading

BLOCK = 1 << 16   # elements per block: a block's temporaries stay in the core's L2 cache


def _default_threads():
    setting = os.environ.get("TINYGRAD_GPT_THREADS", "")
    if setting.isdigit() and int(setting) > 0:
        return min(int(setting), 2)
    return 2 if (os.cpu_count() or 1) >= 2 else 1


THREADS = _default_threads()


def set_threads(n):
    """1: every block on the calling thread; 2: split over this thread and one helper."""
    global THREADS
    if n not in (1, 2):
        raise ValueError(f"set_threads({n!r}): use 1 or 2")
    THREADS = n


class _Helper:
    """One daemon thread that runs the work it is handed and reports back (or its error)."""

    def __init__(self):
        self.todo, self.done = queue.SimpleQueue(), queue.SimpleQueue()
        threading.Thread(target=self._serve, name="tinygrad_gpt-helper", daemon=True).start()

    def _serve(self):
        while True:
            work = self.todo.get()
            try:
                work()
                self.done.put(None)
            except BaseException as error:      # handed back to the caller, raised there
                self.done.put(error)


_helper = None
_in_use = threading.Lock()     # held while the helper has work: nested calls run serially


def _forget_helper_after_fork():
    """A forked child has no helper thread (fork copies only the calling thread): start a
    fresh one on first use instead of waiting forever on the parent's."""
    global _helper, _in_use
    _helper, _in_use = None, threading.Lock()


_fork_hook = False   # registered with the first helper thread, not on import


def _start_helper():
    """Start the helper thread (the first time two cores are asked for)."""
    global _helper, _fork_hook
    if not _fork_hook and hasattr(os, "register_at_fork"):
        os.register_at_fork(after_in_child=_forget_helper_after_fork)
        _fork_hook = True
    _helper = _Helper()


def rows_per_block(row_length):
    """How many rows of `row_length` elements make one block of about BLOCK elements."""
    return max(1, BLOCK // max(row_length, 1))


def for_blocks(xp, n, body, block=BLOCK, matmuls=False):
    """Call body(lo, hi) for consecutive pieces [lo, hi) covering range(n), on both cores.

    The pieces have at most `block` elements, sizes within one of each other, and an even
    count when there is more than one (so the two threads get equal shares); they do not
    depend on the thread count.

    matmuls=True: the body also multiplies matrices (attention's per-head products). Two
    threads each calling a BLAS that itself runs two threads would fight over the cores
    (2-3x slower), so while the blocks run, OpenBLAS is set to one thread (_blas_switch
    below); where that switch is not available, the blocks run here, in order.
    """
    if xp.__name__ == "cupy":
        block = n
    count = -(-n // max(block, 1))                # pieces of at most `block` elements,
    if count % 2:                                 # an even number of them (if n allows)
        count = min(count + 1, n) if count > 1 else count
    bounds = [(i * n // count, (i + 1) * n // count) for i in range(count)]  # sizes within 1
    switch = _blas_switch() if matmuls and len(bounds) > 1 else None
    if THREADS < 2 or len(bounds) < 2 or (matmuls and switch is None) or \
            not _in_use.acquire(blocking=False):
        for lo, hi in bounds:
            body(lo, hi)
        return
    try:
        half = len(bounds) // 2
        mine, theirs = bounds[:len(bounds) - half], bounds[len(bounds) - half:]
        _on_both(lambda: [body(lo, hi) for lo, hi in mine],
                 lambda: [body(lo, hi) for lo, hi in theirs], switch)
    finally:
        _in_use.release()


def can_run_pair():
    """True when run_pair really runs its two calls at once (two threads and the switch)."""
    return THREADS >= 2 and _blas_switch() is not None


def run_pair(first, second):
    """Call first() on this thread and second() on the helper thread at the same time, and
    return (first(), second()). nn/parallel.py runs the two halves of a batch this way.

    Each call gets one core: OpenBLAS is set to one thread while they run, and for_blocks
    called from inside either of them runs its blocks in order. Without two threads or
    the OpenBLAS switch (or when called from inside for_blocks/run_pair), the two run one
    after the other here, with the same results.
    """
    if not can_run_pair() or not _in_use.acquire(blocking=False):
        return first(), second()
    try:
        return _on_both(first, second, _blas_switch())
    finally:
        _in_use.release()


def _on_both(first, second, switch):
    """first() here and second() on the helper at the same time (the caller holds _in_use);
    OpenBLAS at one thread meanwhile when a switch is given. Returns both results."""
    if _helper is None:
        _start_helper()
    results = [None, None]

    def theirs():
        results[1] = second()
    blas_before = switch.set(1) if switch else None
    try:
        _helper.todo.put(theirs)
        try:
            results[0] = first()
        finally:
            error = _helper.done.get()      # always wait: the helper may use our arrays
    finally:
        if switch:
            switch.set(blas_before)
    if error is not None:
        raise error
    return results[0], results[1]


class _BlasSwitch:
    """OpenBLAS's process-wide thread count, read and set through ctypes."""

    def __init__(self, get, set_):
        self._get, self._set = get, set_

    def set(self, n):
        """Set the thread count; returns the previous one."""
        before = self._get()
        self._set(n)
        return before


_switch = False     # not looked up yet


def _blas_switch():
    """NumPy's bundled OpenBLAS (Linux wheels: numpy.libs/libscipy_openblas*.so), or None
    (another BLAS, another platform, or TINYGRAD_GPT_BLAS_SWITCH=0)."""
    global _switch
    if _switch is False:
        _switch = None
        if os.environ.get("TINYGRAD_GPT_BLAS_SWITCH", "1") != "0":
            _switch = _find_openblas()
    return _switch


def _find_openblas():
    import ctypes
    import glob

    import numpy
    libs = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "lib*openblas*.so*"))):
        try:
            lib = ctypes.CDLL(path)        # the copy NumPy already loaded: same state
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas", "64_"), ("scipy_openblas", ""),
                               ("openblas", "64_"), ("openblas", "")):
            get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype, get.argtypes = ctypes.c_int, []
                set_.restype, set_.argtypes = None, [ctypes.c_int]
                return _BlasSwitch(get, set_)
    return None
