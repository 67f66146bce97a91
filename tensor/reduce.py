"""Reductions: sum, mean, max, var over an axis (or several, or all), with their backwards.

(The functions are named after the methods they implement, so inside this file `sum` and
`max` are ours, not Python's builtins.)

A reduction collapses axes; its backward spreads dy back over them. `expand_back` puts the
collapsed axes back (as size 1) so that dy broadcasts against the input's shape.
"""
from .tensor import make


def normalize_axes(axis, ndim):
    """axis=None -> every axis; an int or tuple (negatives allowed) -> sorted tuple."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    for ax in axes:
        if not -ndim <= ax < ndim:
            raise ValueError(f"axis {ax} is out of range for a tensor with {ndim} dimensions")
    return tuple(sorted(ax % ndim for ax in axes))


def count(shape, axes):
    """N, the number of elements a reduction over `axes` combines into each output."""
    n = 1
    for ax in axes:
        n *= shape[ax]
    return n


def expand_back(dy, axes, keepdims):
    """Re-insert reduced axes as size 1 so dy broadcasts against the input."""
    if keepdims:
        return dy
    for ax in axes:
        dy = dy.reshape(dy.shape[:ax] + (1,) + dy.shape[ax:])
    return dy


def sum(a, axis=None, keepdims=False):
    """y = sum(a over axes);   da = dy broadcast back over the summed axes"""
    axes = normalize_axes(axis, a.ndim)

    def backward(dy):
        return (a.xp.broadcast_to(expand_back(dy, axes, keepdims), a.shape),)
    return make(a.data.sum(axis=axes, keepdims=keepdims), (a,), "sum", backward)


def mean(a, axis=None, keepdims=False):
    """y = sum(a over axes) / N;   da = dy / N broadcast back (N = number of elements averaged)"""
    axes = normalize_axes(axis, a.ndim)
    n = count(a.shape, axes)

    def backward(dy):
        return (a.xp.broadcast_to(expand_back(dy, axes, keepdims) / n, a.shape),)
    return make(a.data.mean(axis=axes, keepdims=keepdims), (a,), "mean", backward)


def max(a, axis=None, keepdims=False):
    """y = max(a over axes);   da = dy where a equals the max (shared equally between ties)"""
    axes = normalize_axes(axis, a.ndim)
    if count(a.shape, axes) == 0:
        raise ValueError(f"max over axes {axes} of a tensor of shape {a.shape}: they hold no "
                         "element, and an empty set has no maximum")
    y_kept = a.data.max(axis=axes, keepdims=True)

    def backward(dy):
        winners = (a.data == y_kept).astype(a.dtype)
        share = winners / winners.sum(axis=axes, keepdims=True)  # 1/k for k tied maxima
        return (expand_back(dy, axes, keepdims) * share,)
    y = y_kept if keepdims else y_kept.reshape([n for i, n in enumerate(a.shape) if i not in axes])
    return make(y, (a,), "max", backward)


def var(a, axis=None, keepdims=False, ddof=0):
    """y = sum((a - mean)^2) / (N - ddof);   da = dy * 2 (a - mean) / (N - ddof)

    ddof=0 (NumPy's default) is the population variance; ddof=1 is PyTorch's default.
    N - ddof must be positive, else a ValueError (one element with ddof=1, an empty axis):
    PyTorch returns inf or NaN there with a warning, but a variance divided by zero or by a
    negative count means nothing, and its gradient would be inf or NaN everywhere.
    """
    axes = normalize_axes(axis, a.ndim)
    n = count(a.shape, axes)
    if n - ddof <= 0:
        raise ValueError(f"var over axes {axes} of a tensor of shape {a.shape}: N = {n} "
                         f"elements and ddof={ddof} leave N - ddof = {n - ddof}, which must be "
                         "positive (reduce over more elements, or lower ddof)")
    centered = a.data - a.data.mean(axis=axes, keepdims=True)
    y = (centered * centered).sum(axis=axes, keepdims=keepdims) / (n - ddof)

    def backward(dy):
        return (expand_back(dy, axes, keepdims) * centered * (2.0 / (n - ddof)),)
    return make(y, (a,), "var", backward)
