"""Cross-entropy loss from logits, fused with log_softmax and the mean over positions.

Forward, for each kept row i (target t_i != ignore_index) of N_kept rows:
    loss = mean_i ( logsumexp(x_i) - x_i[t_i] ) = mean_i ( -log softmax(x_i)[t_i] )

Backward: d loss / d x_i = (softmax(x_i) - onehot(t_i)) / N_kept, and 0 for ignored rows.
Fusing the three steps avoids ever forming log-probabilities for the whole vocabulary twice,
and the backward is one subtraction on the saved probabilities.

Loss masking, as PyTorch's ignore_index (default -100): a target equal to ignore_index
(padding, or a prompt token in instruction tuning) counts for nothing, the mean is over
the N_kept counted targets only, and an ignored row's logits get exactly zero gradient.
With every target ignored (N_kept = 0) there is nothing to average: that is a ValueError
(raised in rows_and_targets, for the reference op and the fast kernel alike), not a NaN.
"""
from .tensor import Tensor, make


def rows_and_targets(logits, targets, ignore_index):
    """The logits as rows x (N, V), the targets t (N,) with ignored ones set to 0, keep
    (N,), True where a target counts, and N_kept = sum(keep) > 0; a clear error for
    targets that do not fit, and for a batch where no target counts."""
    xp = logits.xp
    V = logits.shape[-1]
    targets = targets.data if isinstance(targets, Tensor) else xp.asarray(targets)
    if targets.shape != logits.shape[:-1]:
        raise ValueError(f"cross_entropy: targets of shape {targets.shape} do not match "
                         f"logits of shape {logits.shape} (expected {logits.shape[:-1]})")
    x = logits.data.reshape(targets.size, V)                      # (N, V) (V may be 0)
    t = targets.reshape(-1)                                       # (N,)
    keep = t != ignore_index                                      # (N,)
    t = xp.where(keep, t, 0)
    if t.size and (int(t.min()) < 0 or int(t.max()) >= V):
        raise IndexError(f"cross_entropy: targets must be in [0, {V}) or ignore_index "
                         f"({ignore_index}), got values from {int(t.min())} to {int(t.max())}")
    n_kept = int(keep.sum())
    if t.size == 0:
        raise ValueError(f"cross_entropy: no targets (logits of shape {logits.shape}): "
                         "nothing to average; pass at least one position")
    if n_kept == 0:
        raise ValueError(f"cross_entropy: every target equals ignore_index ({ignore_index}): "
                         f"nothing to average; keep at least one target in each batch "
                         f"(items of only padding or prompt tokens have none)")
    return x, t, keep, n_kept


def cross_entropy(logits, targets, ignore_index=-100):
    """loss = mean_kept(-log softmax(logits)[target]);   dlogits = (probs - onehot) * dy / N_kept

    Kept rows are those whose target != ignore_index; an ignored row's dlogits is 0.
    """
    xp = logits.xp
    x, t, keep, n_kept = rows_and_targets(logits, targets, ignore_index)  # (N, V), (N,) x2
    rows = xp.arange(x.shape[0])
    shifted = x - x.max(axis=1, keepdims=True)                    # (N, V), max 0 per row
    exp = xp.exp(shifted)
    sum_exp = exp.sum(axis=1)                                     # (N,)
    probs = exp / sum_exp[:, None]                                # (N, V) softmax, saved
    nll = xp.log(sum_exp) - shifted[rows, t]                      # (N,) = -log p[target]
    loss = xp.where(keep, nll, 0).sum() / n_kept                  # mean over kept rows

    def backward(dy):
        scale = (keep * (dy / n_kept)).astype(x.dtype)            # (N,) 0 on ignored rows
        dx = probs * scale[:, None]                               # (N, V)
        dx[rows, t] -= scale                                      # (probs - onehot) * scale
        return (dx.reshape(logits.shape),)
    # Only parent: the logits. When they need no gradient, make records no backward at all.
    return make(xp.asarray(loss, dtype=x.dtype), (logits,), "cross_entropy", backward)
