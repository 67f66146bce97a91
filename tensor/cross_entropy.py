"""Cross-entropy loss from logits, fused with log_softmax and the mean over positions.

Forward, for each kept row i (target t_i != ignore_index) of N_kept rows:
    loss = mean_i ( logsumexp(x_i) - x_i[t_i] ) = mean_i ( -log softmax(x_i)[t_i] )

Backward: d loss / d x_i = (softmax(x_i) - onehot(t_i)) / N_kept, and 0 for ignored rows.
Fusing the three steps avoids ever forming log-probabilities for the whole vocabulary twice,
and the backward is one subtraction on the saved probabilities. With every row ignored
(N_kept = 0) the loss is NaN (a mean over nothing) and the gradient is zero.
"""
from .tensor import Tensor, make


def rows_and_targets(logits, targets, ignore_index):
    """The logits as rows x (N, V), the targets t (N,) with ignored ones set to 0, and keep
    (N,), True where a target counts; a clear error for targets that do not fit."""
    xp = logits.xp
    V = logits.shape[-1]
    targets = targets.data if isinstance(targets, Tensor) else xp.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match "
                         f"logits of shape {logits.shape} (expected {logits.shape[:-1]})")
    x = logits.data.reshape(-1, V)                                # (N, V)
    t = targets.reshape(-1)                                       # (N,)
    keep = t != ignore_index                                      # (N,)
    t = xp.where(keep, t, 0)
    if t.size and (int(t.min()) < 0 or int(t.max()) >= V):
        raise IndexError(f"cross_entropy: targets must be in [0, {V}) or ignore_index "
                         f"({ignore_index}), got values from {int(t.min())} to {int(t.max())}")
    return x, t, keep


def cross_entropy(logits, targets, ignore_index=-1):
    """loss = mean(-log softmax(logits)[target]);   dlogits = (probs - onehot) * dy / N_kept"""
    xp = logits.xp
    x, t, keep = rows_and_targets(logits, targets, ignore_index)  # (N, V), (N,), (N,)
    rows = xp.arange(x.shape[0])
    shifted = x - x.max(axis=1, keepdims=True)                    # (N, V), max 0 per row
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1)                                     # (N,)
    probs = exp / sum_exp[:, None]                                # (N, V) softmax, saved
    nll = xp.log(sum_exp) - shifted[rows, t]                      # (N,) = -log p[target]
    n_kept = int(keep.sum())
    loss = (nll * keep).sum() / n_kept if n_kept else xp.asarray(xp.nan, dtype=x.dtype)

    def backward(dy):
        scale = (keep * (dy / max(n_kept, 1))).astype(x.dtype)    # (N,) 0 on ignored rows
        dx = probs * scale[:, None]                               # (N, V)
        dx[rows, t] -= scale                                      # (probs - onehot) * scale
        return (dx.reshape(logits.shape),)
    return make(xp.asarray(loss, dtype=x.dtype), (logits,), "cross_entropy", backward)
