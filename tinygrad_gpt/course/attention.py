"""Checks and worked answers for docs/notebooks/03_attention.ipynb.

    1. check_causal_mask(fn):        fn(T) -> (T, T) bool, True where key u is in query t's
                                     future (u > t): the scores attention masks out
    2. check_attention_backward(fn): fn(q, k, v, dy) -> (dq, dk, dv), causal attention's
                                     backward in NumPy, q, k, v, dy (B, nh, T, hs)
    3. check_score_std(value):       the standard deviation of q . k for q, k of hs = 64
                                     independent N(0, 1) entries (why scores are scaled)

Each check prints "Exercise N: not answered yet (hint)" and returns False for the
placeholder (None, or a function that returns None), raises AssertionError naming what is
wrong, or prints "Exercise N: correct" and returns True. The references are the project's
own: tensor/attention.py's `future` and the fused op's hand-derived backward.
"""
import math

import numpy as np

from tensor import Tensor
from tensor.attention import future, scaled_dot_product_attention

from . import correct, not_answered

HS = 64       # the head size of exercise 3


# Exercise 1: the causal mask

def answer_causal_mask(T):
    """True above the diagonal: key u comes after query t (u > t), so t must not see it."""
    return np.triu(np.ones((T, T), dtype=bool), k=1)


def wrong_mask_past(T):
    return np.tril(np.ones((T, T), dtype=bool), k=-1)      # hides the past instead


def wrong_mask_self(T):
    return np.triu(np.ones((T, T), dtype=bool), k=0)       # hides the token itself too


def check_causal_mask(fn):
    hint = "True where u > t, e.g. with np.triu; a query always sees itself"
    if fn is None:
        return not_answered(1, hint)
    for T in (1, 4, 7):
        mask = fn(T)
        if mask is None:
            return not_answered(1, hint)
        mask = np.asarray(mask)
        assert mask.shape == (T, T), \
            f"Exercise 1: my_causal_mask({T}) has shape {mask.shape}, expected ({T}, {T})"
        assert mask.dtype == bool, \
            f"Exercise 1: my_causal_mask({T}) has dtype {mask.dtype}, expected bool"
        expected = future(T, T)
        if not np.array_equal(mask, expected):
            t, u = np.argwhere(mask != expected)[0]
            rule = f"must not see key {u} (its future)" if expected[t, u] else f"sees key {u}"
            raise AssertionError(f"Exercise 1: my_causal_mask({T})[{t}, {u}] is "
                                 f"{bool(mask[t, u])}: query {t} {rule}")
    return correct(1)


# Exercise 2: the attention op's backward

def answer_attention_backward(q, k, v, dy):
    """S = s q k^T + mask, P = softmax(S), y = P v, s = 1 / sqrt(hs); every array
    (B, nh, T, hs) but S, P, dP, dS (B, nh, T, T)."""
    s = 1.0 / math.sqrt(q.shape[-1])
    S = s * q @ k.swapaxes(-1, -2)                          # (B, nh, T, T)
    S = np.where(future(q.shape[-2], k.shape[-2]), -np.inf, S)
    P = np.exp(S - S.max(axis=-1, keepdims=True))
    P /= P.sum(axis=-1, keepdims=True)                      # rows sum to 1
    dv = P.swapaxes(-1, -2) @ dy                            # P^T dy
    dP = dy @ v.swapaxes(-1, -2)                            # dy v^T
    dS = P * (dP - (dP * P).sum(axis=-1, keepdims=True))    # softmax's Jacobian, row by row
    dq = s * dS @ k
    dk = s * dS.swapaxes(-1, -2) @ q
    return dq, dk, dv


def wrong_backward_no_scale(q, k, v, dy):
    dq, dk, dv = answer_attention_backward(q, k, v, dy)
    s = 1.0 / math.sqrt(q.shape[-1])
    return dq / s, dk / s, dv                               # forgets the 1 / sqrt(hs)


def wrong_backward_no_row_sum(q, k, v, dy):
    s = 1.0 / math.sqrt(q.shape[-1])
    S = np.where(future(q.shape[-2], k.shape[-2]), -np.inf, s * q @ k.swapaxes(-1, -2))
    P = np.exp(S - S.max(axis=-1, keepdims=True))
    P /= P.sum(axis=-1, keepdims=True)
    dS = P * (dy @ v.swapaxes(-1, -2))                      # softmax's backward taken as exp's
    return s * dS @ k, s * dS.swapaxes(-1, -2) @ q, P.swapaxes(-1, -2) @ dy


def wrong_backward_untransposed(q, k, v, dy):
    dq, dk, _ = answer_attention_backward(q, k, v, dy)
    s = 1.0 / math.sqrt(q.shape[-1])
    S = np.where(future(q.shape[-2], k.shape[-2]), -np.inf, s * q @ k.swapaxes(-1, -2))
    P = np.exp(S - S.max(axis=-1, keepdims=True))
    P /= P.sum(axis=-1, keepdims=True)
    return dq, dk, P @ dy                                   # P dy instead of P^T dy


def engine_attention_grads(q, k, v, dy):
    """(dq, dk, dv) from the fused op's own backward, in float64."""
    tensors = [Tensor(a, requires_grad=True, dtype=np.float64) for a in (q, k, v)]
    scaled_dot_product_attention(*tensors, is_causal=True).backward(dy)
    return [t.grad for t in tensors]


def check_attention_backward(fn):
    hint = "dv = P^T dy, dP = dy v^T, dS = P * (dP - rowsum(dP * P)), dq = s dS k, dk = s dS^T q"
    if fn is None:
        return not_answered(2, hint)
    rng = np.random.default_rng(3)
    q, k, v, dy = (rng.standard_normal((2, 3, 5, 4)) for _ in range(4))  # (B, nh, T, hs)
    got = fn(q.copy(), k.copy(), v.copy(), dy.copy())
    if got is None:
        return not_answered(2, hint)
    assert len(got) == 3, f"Exercise 2: return (dq, dk, dv), got {len(got)} values"
    for name, mine, ref in zip(("dq", "dk", "dv"), got, engine_attention_grads(q, k, v, dy)):
        mine = np.asarray(mine, dtype=np.float64)
        assert mine.shape == ref.shape, \
            f"Exercise 2: {name} has shape {mine.shape}, expected {ref.shape} (B, nh, T, hs)"
        err = float(np.abs(mine - ref).max())
        assert err < 1e-9, f"Exercise 2: {name} is off by up to {err:.3g} from the fused " \
                           f"op's backward (tensor/attention.py)"
    return correct(2)


# Exercise 3: why the scores are divided by sqrt(hs)

def answer_score_std():
    """q . k = sum of hs products of independent N(0, 1) numbers, each of variance 1: the
    variance is hs, the standard deviation sqrt(hs) = 8. Dividing by sqrt(hs) brings the
    scores back to unit scale, so softmax does not saturate into a one-hot row."""
    return math.sqrt(HS)


def check_score_std(value):
    hint = "the variance of a sum of independent terms is the sum of their variances"
    if value is None:
        return not_answered(3, hint)
    assert isinstance(value, (int, float, np.floating, np.integer)), \
        f"Exercise 3: give one number, got {type(value).__name__}"
    value = float(value)
    assert abs(value - math.sqrt(HS)) <= 0.05 * math.sqrt(HS), \
        f"Exercise 3: {value:g} is not the standard deviation of q . k for hs = {HS} " \
        f"(is it the variance? a scaled score?)"
    return correct(3)


CHECKS = [
    (check_causal_mask, answer_causal_mask, [wrong_mask_past, wrong_mask_self]),
    (check_attention_backward, answer_attention_backward,
     [wrong_backward_no_scale, wrong_backward_no_row_sum, wrong_backward_untransposed]),
    (check_score_std, answer_score_std(), [float(HS), 1.0]),
]
