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


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """y = n * w + b, n = (x - mean) * rstd;   dx = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dy * w

    Normalizes over the last axis; weight (w) and bias (b) may be None. dw = sum(dy * n),
    db = sum(dy), summed over every axis but the last.
    """
    xp = x.xp
    C = x.shape[-1]
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and p.shape != (C,):
            raise ValueError(f"layer_norm {name} has shape {p.shape}, expected ({C},) to match "
                             f"the last axis of the input {x.shape}")
    mu = x.data.mean(axis=-1, keepdims=True)                      # (..., 1)
    n = x.data - mu                                               # (..., C) centered x
    var = xp.einsum("...c,...c->...", n, n)[..., None] / C        # (..., 1) no (..., C) temp
    rstd = 1.0 / xp.sqrt(var + eps)                               # (..., 1)
    n *= rstd                                                     # (..., C) normalized, saved
    if weight is not None:
        y = n * weight.data                                       # a new array, so the bias
        if bias is not None:                                      # can be added in place
            y += bias.data
    else:
        y = n if bias is None else n + bias.data
    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def backward(dy):
        dn = dy * weight.data if weight is not None else dy.copy()   # (..., C), reused as dx
        mean_dn = dn.mean(axis=-1, keepdims=True)                 # (..., 1)
        mean_dn_n = xp.einsum("...c,...c->...", dn, n)[..., None] / C   # (..., 1)
        dn -= mean_dn
        dn -= n * mean_dn_n
        dn *= rstd                                                # dx, built in place
        grads = [dn]
        rows_dy, rows_n = dy.reshape(-1, C), n.reshape(-1, C)     # (rows, C)
        if weight is not None:
            grads.append(xp.einsum("rc,rc->c", rows_dy, rows_n) if weight.requires_grad
                         else None)
        if bias is not None:
            grads.append(rows_dy.sum(axis=0) if bias.requires_grad else None)
        return tuple(grads)
    return make(y, parents, "layer_norm", backward)
