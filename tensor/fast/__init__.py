"""tensor.fast: the CPU speed machinery, in one place a reader can skip and a user can switch off.

The ops in tensor/ are the reference: whole-array NumPy/CuPy code, forward then backward,
as the math reads. This package holds what makes a training step fast on a 2-core CPU
without changing any result beyond float32 rounding (each kernel is tested against the
reference op it replaces, forward and backward):

    threads.py        for_blocks / run_pair: NumPy's one-core loops split over both cores,
                      OpenBLAS set to one thread meanwhile (through ctypes)
    gelu.py, layernorm.py, cross_entropy.py, attention.py
                      the same ops in cache-sized blocks on both cores; attention skips the
                      causal future in pieces of query rows
    embedding.py      the embedding's gradient as its rows, added into a tied weight's
                      .grad in place instead of as a (V, C) array of zeros
    optim.py          the AdamW update and the gradient-norm sum in blocks on both cores
    memory.py         glibc's malloc keeps freed memory (no page faults from step to step)

Nothing happens on import. `enable()` registers the kernels over their reference ops
(tensor/dispatch.py) and tunes malloc; `disable()` takes the kernels out again; the
training and sampling CLIs run inside `with tensor.fast.on():` (enable, then back to how it
was). TINYGRAD_GPT_FAST=0 makes enable() do nothing, so every op
runs its reference code. One more setting cannot be made from here: OpenBLAS reads
OPENBLAS_THREAD_TIMEOUT when NumPy is first imported, so the CLIs set it themselves, first
thing (see tinygrad_gpt/train.py).
"""
import os

from .. import dispatch

OPS = ("gelu", "layer_norm", "cross_entropy", "attention", "embedding", "adamw_update_all",
       "sum_of_squares", "scale_")


def enable(tune_malloc=True):
    """Register every fast kernel over its reference op (and, with tune_malloc, keep freed
    memory in malloc: memory.py). Returns False, changing nothing, when TINYGRAD_GPT_FAST=0."""
    if os.environ.get("TINYGRAD_GPT_FAST", "1") == "0":
        return False
    from . import attention, cross_entropy, embedding, gelu, layernorm, memory, optim
    if tune_malloc:
        memory.keep_freed_memory()
    kernels = {"gelu": gelu.gelu, "layer_norm": layernorm.layer_norm,
               "cross_entropy": cross_entropy.cross_entropy,
               "attention": attention.scaled_dot_product_attention,
               "embedding": embedding.embedding,
               "adamw_update_all": optim.adamw_update_all,
               "sum_of_squares": optim.sum_of_squares,
               "scale_": optim.scale_}
    for name in OPS:
        dispatch.register(name, kernels[name])
    return True


def disable():
    """Every op back to its reference code (malloc's settings stay for the process)."""
    for name in OPS:
        dispatch.unregister(name)


def enabled():
    """True while the fast kernels are registered."""
    return any(name in dispatch.registered() for name in OPS)


class on:
    """`with tensor.fast.on():` the fast kernels inside the block, then as before it."""

    def __enter__(self):
        self.was_enabled = enabled()
        enable()
        return self

    def __exit__(self, *exc):
        if not self.was_enabled:
            disable()
