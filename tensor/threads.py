"""Both CPU cores for the elementwise work of the big fused ops.

A matmul already runs on every core: NumPy hands it to its BLAS (OpenBLAS), which splits it
over its own threads. A NumPy ufunc (exp, tanh, *, +=...) runs on ONE core. PyTorch splits
such loops over its threads; we do the same, by hand, for the few big loops of a training
step (GELU, the attention softmax, layer norm, cross-entropy, AdamW):

    for_blocks(xp, n, body)      # body(lo, hi) for consecutive pieces [lo, hi) of range(n)

cuts range(n) into blocks; this thread runs the first half of the blocks and one helper
thread the second half. NumPy releases Python's GIL inside every ufunc on a large array,
so the two halves really run at the same time. Each block is computed exactly the same
way wherever it runs, so results never depend on the thread count.

On a GPU (xp is CuPy) there is one block, body(0, n): the GPU is parallel already. The
blocks run here, in order, when there are fewer than two of them, when called from inside another for_blocks, or with TINYGRAD_GPT_THREADS=1 (or
`set_threads(1)`). The default is 2 on a machine with 2+ cores.
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


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helper_after_fork)


def rows_per_block(row_length):
    """How many rows of `row_length` elements make one block of about BLOCK elements."""
    return max(1, BLOCK // max(row_length, 1))


def for_blocks(xp, n, body, block=BLOCK):
    """Call body(lo, hi) for [0, block), [block, 2 block), ... up to n, on both cores."""
    if xp.__name__ == "cupy":
        block = n
    bounds = [(lo, min(lo + block, n)) for lo in range(0, n, max(block, 1))]
    if THREADS < 2 or len(bounds) < 2 or not _in_use.acquire(blocking=False):
        for lo, hi in bounds:
            body(lo, hi)
        return
    global _helper
    try:
        if _helper is None:
            _helper = _Helper()
        half = len(bounds) // 2
        mine, theirs = bounds[:len(bounds) - half], bounds[len(bounds) - half:]
        _helper.todo.put(lambda: [body(lo, hi) for lo, hi in theirs])
        try:
            for lo, hi in mine:
                body(lo, hi)
        finally:
            error = _helper.done.get()          # always wait: the helper may use our arrays
        if error is not None:
            raise error
    finally:
        _in_use.release()
