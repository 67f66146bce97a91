"""Causal self-attention, and the key/value cache that makes generation one token per step.

Each position t makes a query q_t, a key k_t and a value v_t (per head). It attends to the
positions s <= t with weights softmax_s(q_t . k_s / sqrt(hs)) and returns the weighted sum
of their values. The causal mask (-inf above the diagonal) is what stops a position from
seeing the future, so training can predict every next token of a sequence in one pass.
"""
import math

import tensor.functional as F
from nn import Dropout, Linear, Module
from tensor import Tensor
from tensor.attention import future as causal_future


class KVCache:
    """Keys and values of the positions seen so far, for one attention layer.

    Generation feeds one new token per step; its query attends to every earlier key and
    value, which do not change, so they are kept here instead of being recomputed.
    """

    def __init__(self):
        self.k = self.v = None   # (B, nh, T_seen, hs) arrays, or None before the first call

    def __len__(self):
        return 0 if self.k is None else self.k.shape[2]

    def extend(self, k, v):
        """Append new keys/values (B, nh, T_new, hs); return all of them as Tensors."""
        xp = k.xp
        self.k = k.data if self.k is None else xp.concatenate([self.k, k.data], axis=2)
        self.v = v.data if self.v is None else xp.concatenate([self.v, v.data], axis=2)
        return (Tensor(self.k, dtype=self.k.dtype, device=k.device),
                Tensor(self.v, dtype=self.v.dtype, device=v.device))


class CausalSelfAttention(Module):
    """Multi-head masked self-attention: softmax(Q K^T / sqrt(hs) + causal mask) V.

    `fused=True` (the default) runs the attention core as one op,
    F.scaled_dot_product_attention, with its own hand-derived backward (tensor/attention.py);
    `fused=False` runs `attend_composed`, the same math as five engine ops, easier to step
    through. Tests check that both give the same outputs and gradients.
    """

    def __init__(self, config):
        C = config.n_embd
        self.n_head, self.head_size = config.n_head, config.head_size
        self.query = Linear(C, C, bias=config.bias)
        self.key = Linear(C, C, bias=config.bias)
        self.value = Linear(C, C, bias=config.bias)
        self.attn_out = Linear(C, C, bias=config.bias)    # mixes the heads back together
        self.attn_dropout = Dropout(config.dropout)
        self.resid_dropout = Dropout(config.dropout)
        self.fused = True

    def forward(self, x, cache=None):
        B, T, C = x.shape                                  # batch, time, channels
        nh, hs = self.n_head, self.head_size
        q = self.query(x).reshape(B, T, nh, hs).transpose(1, 2)   # (B, nh, T, hs)
        k = self.key(x).reshape(B, T, nh, hs).transpose(1, 2)     # (B, nh, T, hs)
        v = self.value(x).reshape(B, T, nh, hs).transpose(1, 2)   # (B, nh, T, hs)
        past = 0
        if cache is not None:                              # generation: prepend earlier k, v
            past = len(cache)
            k, v = cache.extend(k, v)                      # (B, nh, past + T, hs)
        if self.fused:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, offset=past,
                                               dropout_p=self.attn_dropout.p,
                                               training=self.training)  # (B, nh, T, hs)
        else:
            y = self.attend_composed(q, k, v, past)        # (B, nh, T, hs)
        y = y.transpose(1, 2).reshape(B, T, C)             # (B, T, nh, hs) -> (B, T, C)
        return self.resid_dropout(self.attn_out(y))

    def attend_composed(self, q, k, v, past=0):
        """The attention core from engine ops: q (B, nh, T, hs), k and v (B, nh, L, hs)."""
        T, hs, L = q.shape[2], q.shape[3], k.shape[2]      # L = past + T keys are visible
        # (B, nh, T, hs) @ (B, nh, hs, L) -> (B, nh, T, L): every query against every key
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        future = causal_future(T, L, past)                 # (T, L): key after the query
        if future.any():
            scores = scores.masked_fill(q.xp.asarray(future), -math.inf)
        weights = self.attn_dropout(F.softmax(scores, axis=-1))   # (B, nh, T, L)
        return weights @ v                                 # (B, nh, T, L) @ (B, nh, L, hs)
