"""Scaled dot-product attention as ONE fused op: y = softmax(q k^T * s + causal mask) v.

The same computation can be written with five engine ops (matmul, mul, masked_fill,
softmax, matmul; gpt/attention.py keeps that readable version and a test checks the two
agree). Fused, it is one graph node that saves only the attention weights P, and its
backward is four matrix products and a softmax backward:

    S = q k^T s  (+ -inf above the diagonal)      P = softmax(S)       y = P v
    dv = P^T dy          dP = dy v^T              dS = P * (dP - sum(dP * P))
    dq = s dS k          dk = s dS^T q            (sums run along the key axis)

With dropout on the weights (training), y = (P * m) v with m the scaled keep-mask, so
dv = (P m)^T dy and dP = (dy v^T) * m before the softmax backward.

The work runs head by head in blocks (threads.py), half of them on a second core, each
block from its scores to its output while its (T, L) weights are still in cache.
"""
import math

from . import backend, threads
from .tensor import make

_masks = {}   # (T, L, offset, device) -> additive causal mask of 0 / -inf, built once


def causal_mask(xp, T, L, offset, device):
    """(T, L) array: 0 where key s <= query t + offset may be seen, -inf in the future."""
    key = (T, L, offset, device)
    if key not in _masks:
        t = xp.arange(T)[:, None] + offset                   # query positions
        s = xp.arange(L)[None, :]                            # key positions
        _masks[key] = xp.where(s > t, -math.inf, 0.0).astype(xp.float32)
    return _masks[key]


def scaled_dot_product_attention(q, k, v, is_causal=True, offset=0, dropout_p=0.0,
                                 training=False):
    """y = softmax(q k^T / sqrt(hs) + mask) v;   dq = s dS k, dk = s dS^T q, dv = P^T dy

    q (B, nh, T, hs), k and v (B, nh, L, hs) -> y (B, nh, T, hs). offset: position of the
    first query among the keys (L - T when earlier keys come from a KV cache).
    """
    xp = q.xp
    T, hs, L = q.shape[-2], q.shape[-1], k.shape[-2]
    scale = 1.0 / math.sqrt(hs)
    lead = q.shape[:-2]                                      # (B, nh)
    qs = xp.empty(q.shape, dtype=q.dtype)                    # C order, whatever q's strides
    xp.multiply(q.data, scale, out=qs)                       # scale q (T x hs), not S (T x L)
    qs = qs.reshape(-1, T, hs)                               # (B*nh, T, hs)
    k3 = xp.ascontiguousarray(k.data).reshape(-1, L, hs)     # (B*nh, L, hs)
    v3 = xp.ascontiguousarray(v.data).reshape(-1, L, hs)
    mask = causal_mask(xp, T, L, offset, q.device).astype(qs.dtype, copy=False) \
        if is_causal else None
    keep = None
    if training and dropout_p > 0:
        rng = backend.generator(q.device)
        keep = (rng.random((qs.shape[0], T, L), dtype=qs.dtype) >= dropout_p) \
            / qs.dtype.type(1 - dropout_p)                   # scaled keep-mask m
    P = xp.empty((qs.shape[0], T, L), dtype=qs.dtype)        # (B*nh, T, L) weights, saved
    y = xp.empty_like(qs)                                    # (B*nh, T, hs)

    def forward_block(lo, hi):                               # heads lo..hi-1, start to end
        Ph = xp.matmul(qs[lo:hi], k3[lo:hi].swapaxes(-1, -2), out=P[lo:hi])   # scores
        if mask is not None:
            Ph += mask
        Ph -= Ph.max(axis=-1, keepdims=True)
        xp.exp(Ph, out=Ph)
        Ph /= Ph.sum(axis=-1, keepdims=True)                 # softmax: rows sum to 1
        xp.matmul(Ph if keep is None else Ph * keep[lo:hi], v3[lo:hi], out=y[lo:hi])
    threads.for_blocks(xp, qs.shape[0], forward_block, threads.rows_per_block(T * L),
                       matmuls=True)

    def backward(dy):                                        # dy (B, nh, T, hs)
        dy3 = xp.ascontiguousarray(dy).reshape(-1, T, hs)
        dq, dk, dv = xp.empty_like(qs), xp.empty_like(k3), xp.empty_like(v3)

        def backward_block(lo, hi):
            Ph, d = P[lo:hi], dy3[lo:hi]
            P_used = Ph if keep is None else Ph * keep[lo:hi]
            xp.matmul(P_used.swapaxes(-1, -2), d, out=dv[lo:hi])        # dv = P^T dy
            dP = d @ v3[lo:hi].swapaxes(-1, -2)                          # dP = dy v^T
            if keep is not None:
                dP *= keep[lo:hi]
            dP -= xp.einsum("hij,hij->hi", dP, Ph)[..., None]  # sum(dP * P) over keys
            dP *= Ph                                         # dS, the scores' gradient
            xp.matmul(dP, k3[lo:hi], out=dq[lo:hi])
            dq[lo:hi] *= scale                               # dq = s dS k
            xp.matmul(dP.swapaxes(-1, -2), qs[lo:hi], out=dk[lo:hi])     # dk = s dS^T q
        threads.for_blocks(xp, qs.shape[0], backward_block, threads.rows_per_block(T * L),
                           matmuls=True)
        return (dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape))
    y = y.reshape(lead + (T, hs))
    return make(y, (q, k, v), "attention", backward)
