"""Fast kernel for tensor/cross_entropy.py's op; same math, blocks on both cores (threads.py).

Rows in cache-sized blocks: the softmax written in place into one preallocated (N, V)
array, the backward's scaling likewise; the derivation, and ignore_index's meaning (-100 by
default; every target ignored is the ValueError of rows_and_targets), are in
tensor/cross_entropy.py.
"""
from . import threads
from ..cross_entropy import rows_and_targets
from ..tensor import make


def cross_entropy(logits, targets, ignore_index=-100):
    """tensor.cross_entropy.cross_entropy, rows in blocks on both cores."""
    xp = logits.xp
    V = logits.shape[-1]
    x, t, keep, n_kept = rows_and_targets(logits, targets, ignore_index)  # (N, V), (N,) x2
    rows = xp.arange(x.shape[0])
    probs = xp.empty_like(x)                                      # (N, V) softmax, saved
    log_sum = xp.empty(x.shape[0], dtype=x.dtype)                 # (N,) log sum exp(shifted)
    picked = xp.empty(x.shape[0], dtype=x.dtype)                  # (N,) shifted[i, t_i]

    def forward_block(lo, hi):                                    # rows lo..hi-1
        xb, pb = x[lo:hi], probs[lo:hi]
        xp.subtract(xb, xb.max(axis=1, keepdims=True), out=pb)    # shifted: max 0 per row
        picked[lo:hi] = pb[rows[:hi - lo], t[lo:hi]]
        xp.exp(pb, out=pb)
        sum_exp = pb.sum(axis=1, keepdims=True)                   # (rows, 1)
        pb /= sum_exp                                             # softmax
        xp.log(sum_exp[:, 0], out=log_sum[lo:hi])
    threads.for_blocks(xp, x.shape[0], forward_block, threads.rows_per_block(V))
    nll = log_sum - picked                                        # (N,) = -log p[target]
    loss = xp.where(keep, nll, 0).sum() / n_kept                  # mean over kept rows

    def backward(dy):
        scale = (keep * (dy / n_kept)).astype(x.dtype)            # (N,) 0 on ignored rows
        dx = xp.empty_like(probs)                                 # (N, V)
        threads.for_blocks(xp, x.shape[0], lambda lo, hi: xp.multiply(
            probs[lo:hi], scale[lo:hi, None], out=dx[lo:hi]), threads.rows_per_block(V))
        dx[rows, t] -= scale                                      # probs * scale - onehot * scale
        return (dx.reshape(logits.shape),)
    # Only parent: the logits. When they need no gradient, make records no backward at all.
    return make(xp.asarray(loss, dtype=x.dtype), (logits,), "cross_entropy", backward)
