"""Fast kernel for tensor/layernorm.py's op; same math, blocks on both cores (threads.py).

Rows in cache-sized blocks, each normalized in place into preallocated n and y (the
variance as an einsum, with no (rows, C) temporary); the derivation is in tensor/layernorm.py.
"""
from . import threads
from ..layernorm import check_affine
from ..layernorm import layer_norm as reference_layer_norm
from ..tensor import make


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """tensor.layernorm.layer_norm, rows in blocks on both cores."""
    xp = x.xp
    C = check_affine(x, weight, bias)
    if x.size == 0:                                               # no rows to put in blocks
        return reference_layer_norm(x, weight, bias, eps)
    x2 = x.data.reshape(-1, C)                                    # (rows, C)
    n, y = xp.empty_like(x2), xp.empty_like(x2)                   # n is saved for backward
    rstd = xp.empty((x2.shape[0], 1), dtype=x2.dtype)             # (rows, 1), saved

    def forward_block(lo, hi):                                    # rows lo..hi-1
        xb, nb, rb, yb = x2[lo:hi], n[lo:hi], rstd[lo:hi], y[lo:hi]
        xp.subtract(xb, xb.mean(axis=-1, keepdims=True), out=nb)  # centered x
        var = xp.einsum("rc,rc->r", nb, nb)[:, None] / C          # no (rows, C) temporary
        xp.sqrt(var + eps, out=rb)
        xp.divide(1.0, rb, out=rb)                                # rstd = 1 / sqrt(var + eps)
        nb *= rb                                                  # normalized
        if weight is not None:
            xp.multiply(nb, weight.data, out=yb)
        else:
            yb[...] = nb
        if bias is not None:
            yb += bias.data
    threads.for_blocks(xp, x2.shape[0], forward_block, threads.rows_per_block(C))
    parents = tuple(t for t in (x, weight, bias) if t is not None)

    def backward(dy):
        # Each gradient only for a parent that requires one, as in the reference: a frozen
        # weight or bias, or an input computed from frozen layers only, gets None.
        dy2 = xp.ascontiguousarray(dy).reshape(-1, C)             # (rows, C)
        dx = xp.empty_like(dy2) if x.requires_grad else None

        def backward_block(lo, hi):
            dn, nb = dx[lo:hi], n[lo:hi]                          # dn, turned into dx in place
            if weight is not None:
                xp.multiply(dy2[lo:hi], weight.data, out=dn)      # dn = dy * w
            else:
                dn[...] = dy2[lo:hi]
            mean_dn = dn.mean(axis=-1, keepdims=True)             # (rows, 1)
            mean_dn_n = xp.einsum("rc,rc->r", dn, nb)[:, None] / C    # (rows, 1)
            dn -= mean_dn
            dn -= nb * mean_dn_n
            dn *= rstd[lo:hi]                                     # dx
        if x.requires_grad:
            threads.for_blocks(xp, dy2.shape[0], backward_block, threads.rows_per_block(C))
        grads = [dx.reshape(x.shape) if x.requires_grad else None]
        if weight is not None:
            grads.append(xp.einsum("rc,rc->c", dy2, n) if weight.requires_grad else None)
        if bias is not None:
            grads.append(dy2.sum(axis=0) if bias.requires_grad else None)
        return tuple(grads)
    return make(y.reshape(x.shape), parents, "layer_norm", backward)
