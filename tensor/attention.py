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
    qs = q.data * scale                                      # scale q (T x hs), not S (T x L)
    P = qs @ k.data.swapaxes(-1, -2)                         # (B, nh, T, L) scores
    mask = causal_mask(xp, T, L, offset, q.device).astype(P.dtype, copy=False) \
        if is_causal else None
    heads = P.reshape(-1, T, L)                              # (B * nh, T, L), a view of P

    def softmax_block(lo, hi):                               # heads lo..hi-1, in place
        Ph = heads[lo:hi]
        if mask is not None:
            Ph += mask
        Ph -= Ph.max(axis=-1, keepdims=True)
        xp.exp(Ph, out=Ph)
        Ph /= Ph.sum(axis=-1, keepdims=True)                 # softmax: rows sum to 1
    threads.for_blocks(xp, heads.shape[0], softmax_block, threads.rows_per_block(T * L))
    keep = None
    if training and dropout_p > 0:
        rng = backend.generator(q.device)
        keep = (rng.random(P.shape, dtype=P.dtype) >= dropout_p) / P.dtype.type(1 - dropout_p)
    y = (P if keep is None else P * keep) @ v.data           # (B, nh, T, L) @ (B, nh, L, hs)

    def backward(dy):                                        # dy (B, nh, T, hs)
        P_used = P if keep is None else P * keep
        dv = P_used.swapaxes(-1, -2) @ dy                    # (B, nh, L, hs)
        dP = dy @ v.data.swapaxes(-1, -2)                    # (B, nh, T, L)
        dP_heads = dP.reshape(-1, T, L)
        keep_heads = None if keep is None else keep.reshape(-1, T, L)

        def dscores_block(lo, hi):                           # dP -> dS for heads lo..hi-1
            dPh, Ph = dP_heads[lo:hi], heads[lo:hi]
            if keep_heads is not None:
                dPh *= keep_heads[lo:hi]
            dPh -= xp.einsum("hij,hij->hi", dPh, Ph)[..., None]   # sum(dP * P) over keys
            dPh *= Ph                                        # dS, the scores' gradient
        threads.for_blocks(xp, dP_heads.shape[0], dscores_block, threads.rows_per_block(T * L))
        dq = dP @ k.data                                     # (B, nh, T, hs)
        dq *= scale                                          # S = (s q) k^T
        dk = dP.swapaxes(-1, -2) @ qs                        # (B, nh, L, hs)
        return dq, dk, dv
    return make(y, (q, k, v), "attention", backward)
