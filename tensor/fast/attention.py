"""Fast kernel for tensor/attention.py's op; same math, blocks on both cores (threads.py).

The derivation (S, P, y and dv, dP, dS, dq, dk) is in tensor/attention.py. What is added
here is only where the work goes:

Causal attention never needs the scores above the diagonal, so the work goes in pieces of
QUERY_CHUNK query rows: rows t0..t1-1 are multiplied with keys 0..e-1 only (the keys they
may see), which skips about 3/8 of the square at T = 256. The backward takes the key-side
products (dk, dv) in matching pieces of keys, each with only the query rows that see them.
Every (query, key) pair that is read was computed; the rest of P is never touched.

q is scaled once (s q, T x hs) instead of the scores (T x L); dk = dS^T (s q) reuses it.
The heads run in blocks, half of them on a second core, each block from its scores to its
output while a piece's (rows x keys) weights are still in the L2 cache. An input with an
empty axis (no queries, no keys) has no blocks: the reference op runs it.
"""
import math

from .. import backend
from . import threads
from ..attention import causal_mask
from ..attention import scaled_dot_product_attention as reference_attention
from ..tensor import make

QUERY_CHUNK = 64       # query rows per piece: a causal piece skips the keys in its future
PIECE = 1 << 18        # floats in one piece's weights at most (1 MB): they stay in L2 cache


def query_chunks(T, L, offset, is_causal):
    """[(t0, t1, e)]: pieces of QUERY_CHUNK query rows; rows t0..t1-1 see keys 0..e-1 only
    (causal: query t sees key u when u <= offset + t, tensor.attention.future), so keys
    e..L-1 are never computed."""
    if not is_causal:
        return [(0, T, L)]
    return [(t0, min(t0 + QUERY_CHUNK, T), min(L, offset + t0 + QUERY_CHUNK))
            for t0 in range(0, T, QUERY_CHUNK)]


def key_chunks(rows):
    """[(s0, s1, t)]: the keys s0..s1-1 that query rows t..T-1 see and earlier rows do not,
    one piece per piece of rows. Each (row, key) pair read from these pieces was computed."""
    cols, s0 = [], 0
    for t0, _, e in rows:
        if e > s0:
            cols.append((s0, e, t0))
            s0 = e
    return cols


def scaled_dot_product_attention(q, k, v, is_causal=True, offset=0, dropout_p=0.0,
                                 training=False):
    """tensor.attention.scaled_dot_product_attention, heads in blocks on both cores and
    causal rows in pieces that skip their future keys."""
    if 0 in q.shape or 0 in k.shape:                        # nothing to split into blocks:
        return reference_attention(q, k, v, is_causal, offset, dropout_p, training)
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
    rows = query_chunks(T, L, offset, is_causal)             # [(t0, t1, e)]: rows, keys < e
    cols = key_chunks(rows)                                  # [(s0, s1, t)]: keys, rows >= t
    n = qs.shape[0]                                          # B*nh heads, in blocks
    heads_per_block = max(1, PIECE // (min(T, QUERY_CHUNK) * L))
    if n * T * L > threads.BLOCK:                            # enough work for two cores:
        heads_per_block = min(heads_per_block, -(-n // 2))   # at least two blocks

    def forward_block(lo, hi):                               # heads lo..hi-1, start to end
        for t0, t1, e in rows:                               # queries t0..t1-1 see keys < e
            Ph = P[lo:hi, t0:t1, :e]                         # (heads, t1 - t0, e) view
            xp.matmul(qs[lo:hi, t0:t1], k3[lo:hi, :e].swapaxes(-1, -2), out=Ph)  # scores
            if mask is not None:
                Ph += mask[t0:t1, :e]
            Ph -= Ph.max(axis=-1, keepdims=True)
            xp.exp(Ph, out=Ph)
            Ph /= Ph.sum(axis=-1, keepdims=True)             # softmax: rows sum to 1
            P_used = Ph if keep is None else Ph * keep[lo:hi, t0:t1, :e]
            xp.matmul(P_used, v3[lo:hi, :e], out=y[lo:hi, t0:t1])
    threads.for_blocks(xp, n, forward_block, heads_per_block, matmuls=True)

    def backward(dy):                                        # dy (B, nh, T, hs)
        dy3 = xp.ascontiguousarray(dy).reshape(-1, T, hs)
        dq, dk, dv = xp.empty_like(qs), xp.empty_like(k3), xp.empty_like(v3)

        def backward_block(lo, hi):
            dS = xp.empty((hi - lo, T, L), dtype=qs.dtype)   # (heads, T, L) scores' grad
            for t0, t1, e in rows:                           # by query rows, as forward
                Ph, d = P[lo:hi, t0:t1, :e], dy3[lo:hi, t0:t1]
                dSh = xp.matmul(d, v3[lo:hi, :e].swapaxes(-1, -2), out=dS[:, t0:t1, :e])
                if keep is not None:                         # dP = dy v^T (dropout: * m)
                    dSh *= keep[lo:hi, t0:t1, :e]
                dSh -= xp.einsum("hij,hij->hi", dSh, Ph)[..., None]  # sum(dP * P), keys
                dSh *= Ph                                    # dS = P (dP - sum(dP * P))
                xp.matmul(dSh, k3[lo:hi, :e], out=dq[lo:hi, t0:t1])
                dq[lo:hi, t0:t1] *= scale                    # dq = s dS k
            for s0, s1, t in cols:                           # by keys: rows >= t see them
                xp.matmul(dS[:, t:, s0:s1].swapaxes(-1, -2), qs[lo:hi, t:],
                          out=dk[lo:hi, s0:s1])              # dk = s dS^T q (s is in qs)
                P_used = P[lo:hi, t:, s0:s1]
                if keep is not None:
                    P_used = P_used * keep[lo:hi, t:, s0:s1]
                xp.matmul(P_used.swapaxes(-1, -2), dy3[lo:hi, t:],
                          out=dv[lo:hi, s0:s1])              # dv = P^T dy
            seen = cols[-1][1]                               # keys that no query sees
            dk[lo:hi, seen:], dv[lo:hi, seen:] = 0, 0        # (only with a short T): 0
        threads.for_blocks(xp, n, backward_block, heads_per_block, matmuls=True)
        return (dq.reshape(q.shape), dk.reshape(k.shape), dv.reshape(v.shape))
    y = y.reshape(lead + (T, hs))
    return make(y, (q, k, v), "attention", backward)
