"""Layer normalization over the last axis, one fused op (the saved n and rstd are reused).

Forward, per row x of length C:
    mu = mean(x),  rstd = 1 / sqrt(var(x) + eps),  n = (x - mu) * rstd,  y = n * w + b

Backward (dn = dy * w; means are over the row):
    dx = rstd * (dn - mean(dn) - n * mean(dn * n))
    dw = sum over rows of dy * n,   db = sum over rows of dy
The dx line is the chain rule through n = (x - mu) * rstd: the two mean terms are what
flows back through mu and through rstd (see docs/backprop.md for the three-line derivation).
"""
from .tensor import make


def check_affine(x, weight, bias):
    """C, the last axis of x, after checking that weight and bias (or None) are (C,)."""
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ValueError(f"layer_norm {name} has shape {p.shape}, expected ({C},) to match "
                             f"the last axis of the input {x.shape}")
    return C


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """y = n * w + b, n = (x - mu) * rstd;   dx = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dy * w

    Normalizes over the last axis; weight (w) and bias (b) may be None.
    dw = sum(dy * n), db = sum(dy), summed over every axis but the last.
    """
    xp = x.xp
    check_affine(x, weight, bias)
    centered = x.data - x.data.mean(axis=-1, keepdims=True)           # (..., C)
    var = (centered * centered).mean(axis=-1, keepdims=True)          # (..., 1)
    rstd = 1 / xp.sqrt(var + eps)                                     # (..., 1), saved
    n = centered * rstd                                               # (..., C), saved
    y = n if weight is None else n * weight.data
    if bias is not None:
        y = y + bias.data
    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def backward(dy):                                                 # dy (..., C)
        # Each gradient only for a parent that requires one (a frozen weight or bias, or an
        # input computed from frozen layers only, gets None and costs nothing).
        dx = None
        if x.requires_grad:
            dn = dy if weight is None else dy * weight.data
            dx = rstd * (dn - dn.mean(axis=-1, keepdims=True)
                         - n * (dn * n).mean(axis=-1, keepdims=True))
        grads = [dx]
        lead_axes = tuple(range(x.ndim - 1))                          # every axis but C
        if weight is not None:                                        # (..., C) -> (C,)
            grads.append((dy * n).sum(axis=lead_axes) if weight.requires_grad else None)
        if bias is not None:
            grads.append(dy.sum(axis=lead_axes) if bias.requires_grad else None)
        return tuple(grads)
    return make(y, parents, "layer_norm", backward)
