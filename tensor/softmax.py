"""softmax and log_softmax along one axis, each a single fused op with a hand-derived backward.

softmax: y_i = exp(x_i - m) / sum_j exp(x_j - m), with m = max_j x_j for stability (the
shift cancels). Its Jacobian is dy_i/dx_k = y_i ([i = k] - y_k), so

    dx = y * (dy - sum(dy * y))            (the sum runs along the softmax axis)

log_softmax: y_i = x_i - logsumexp(x). dy_i/dx_k = [i = k] - softmax(x)_k, so

    dx = dy - softmax(x) * sum(dy)

An empty x (an axis of size 0) has no maximum: stable_shift is 0 there (any shift cancels),
and the result is empty, as in PyTorch.
"""
from .tensor import make


def stable_shift(x, axis):
    """max(x) along axis (kept as size 1), or 0 for an empty x, which has no max."""
    return x.max(axis=axis, keepdims=True) if x.size else 0


def softmax(x, axis=-1):
    """y = exp(x) / sum(exp(x));   dx = y * (dy - sum(dy * y))"""
    xp = x.xp
    e = xp.exp(x.data - stable_shift(x.data, axis))
    y = e / e.sum(axis=axis, keepdims=True)

    def backward(dy):
        return (y * (dy - (dy * y).sum(axis=axis, keepdims=True)),)
    return make(y, (x,), "softmax", backward)


def log_softmax(x, axis=-1):
    """y = x - logsumexp(x);   dx = dy - softmax(x) * sum(dy)"""
    xp = x.xp
    shifted = x.data - stable_shift(x.data, axis)
    y = shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))

    def backward(dy):
        return (dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True),)
    return make(y, (x,), "log_softmax", backward)
