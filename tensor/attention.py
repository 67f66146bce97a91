"""Scaled dot-product attention as ONE op: y = softmax(q k^T s + causal mask) v, s = 1/sqrt(hs).

q (B, nh, T, hs) holds T queries, k and v (B, nh, L, hs) hold L keys and values (L = T,
or more when earlier keys come from a KV cache); hs is the head size. The same math can be
written with five engine ops (gpt/attention.py's attend_composed, checked against this
one); as one op it is one graph node that saves only the attention weights P:

    S = q k^T s + mask       P = softmax(S)        y = P v
    dv = P^T dy              dP = dy v^T           dS = P * (dP - sum(dP * P))
    dq = s dS k              dk = s dS^T q         (the sums run along the key axis)

dk: S[t, u] = s q[t] . k[u], so dS[t, u] sends s dS[t, u] q[t] to k[u]: dk = s dS^T q.
With dropout on the weights (training), y = (P * m) v with m the scaled keep-mask, so
dv = (P * m)^T dy and dP = (dy v^T) * m before the softmax backward.

The causal mask: query t is position offset + t among the keys (offset = L - T with a KV
cache, else 0) and sees key u when u <= offset + t. `future` is that rule, written once;
this op, the fast kernel (tensor/fast/attention.py) and gpt/attention.py all use it.
"""
import math

import numpy as np

from . import backend
from .softmax import stable_shift
from .tensor import make

_masks = {}   # (T, L, offset, device) -> additive causal mask of 0 / -inf, built once


def future(T, L, offset=0):
    """(T, L) NumPy bool array: True where key u comes after query t (u > offset + t),
    the scores a causal attention masks out."""
    return np.arange(L)[None, :] > np.arange(T)[:, None] + offset


def causal_mask(xp, T, L, offset, device):
    """(T, L) float32 array on `device`: 0 where query t may see key u, -inf in its future."""
    key = (T, L, offset, device)
    if key not in _masks:
        _masks[key] = xp.where(xp.asarray(future(T, L, offset)), -math.inf, 0.0
                               ).astype(xp.float32)
    return _masks[key]


def check_head_size(q):
    """A clear error for a head size hs (the last axis of q) of 0: the scale 1 / sqrt(hs)."""
    if q.shape[-1] == 0:
        raise ValueError(f"attention: q of shape {q.shape} has head size 0 (its last axis): "
                         "the scale 1 / sqrt(hs) needs hs >= 1")


def scaled_dot_product_attention(q, k, v, is_causal=True, offset=0, dropout_p=0.0,
                                 training=False):
    """y = softmax(q k^T s + mask) v;   dq = s dS k, dk = s dS^T q, dv = P^T dy

    q (B, nh, T, hs), k and v (B, nh, L, hs) -> y (B, nh, T, hs). offset: position of the
    first query among the keys (L - T when earlier keys come from a KV cache). With no keys
    (L = 0) y is 0 (an empty sum), as in PyTorch; a head size of 0 is a ValueError.
    """
    xp = q.xp
    check_head_size(q)
    T, hs, L = q.shape[-2], q.shape[-1], k.shape[-2]
    s = 1.0 / math.sqrt(hs)
    S = (q.data @ k.data.swapaxes(-1, -2)) * s               # (B, nh, T, L) scores
    if is_causal:
        S = S + causal_mask(xp, T, L, offset, q.device).astype(S.dtype, copy=False)
    P = xp.exp(S - stable_shift(S, -1))                      # softmax over the keys
    P /= P.sum(axis=-1, keepdims=True)                       # (B, nh, T, L), rows sum to 1
    keep = None
    if training and dropout_p > 0:                           # scaled keep-mask m
        draw = backend.generator(q.device).random(P.shape, dtype=P.dtype)
        keep = (draw >= dropout_p) / P.dtype.type(1 - dropout_p)
    W = P if keep is None else P * keep                      # the weights y is made with
    y = W @ v.data                                           # (B, nh, T, L) @ (B, nh, L, hs)

    def backward(dy):                                        # dy (B, nh, T, hs)
        dv = W.swapaxes(-1, -2) @ dy                         # (B, nh, L, T) @ (B, nh, T, hs)
        dP = dy @ v.data.swapaxes(-1, -2)                    # (B, nh, T, hs) @ (B, nh, hs, L)
        if keep is not None:
            dP = dP * keep
        dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))     # (B, nh, T, L)
        dq = (dS @ k.data) * s                               # (B, nh, T, L) @ (B, nh, L, hs)
        dk = (dS.swapaxes(-1, -2) @ q.data) * s              # (B, nh, L, T) @ (B, nh, T, hs)
        return dq, dk, dv
    return make(y, (q, k, v), "attention", backward)
