"""Checks and worked answers of docs/notebooks/02_bigram_and_softmax.ipynb.

Each check prints "not answered yet" for the placeholder and returns False, raises
AssertionError naming what is wrong, or prints "correct" and returns True:

1. check_softmax(fn): softmax made with `make`, its backward y * (dy - sum(dy * y)), on the
   random cases of `python -m tinygrad_gpt.gradcheck --op softmax --function ...`.
2. check_cross_entropy_grad(fn): fn(logits (N, V), targets (N,)) -> d loss / d logits of
   the mean cross-entropy, (softmax - onehot) / N, against tensor/cross_entropy.py.
3. check_smoothed_probs(fn): fn(ids, V, alpha) -> the (V, V) table p(b | a) of add-alpha
   smoothed bigram counts, whose loss stays finite on text with unseen pairs.
"""
import numpy as np

import tensor.functional as F
from tensor import Tensor
from tensor.tensor import make

from ..gradcheck import check_learner
from . import correct, not_answered


# ----- exercise 1: softmax's backward ----------------------------------------------------------


def answer_softmax(x, axis=-1):
    """y = exp(x) / sum(exp(x));   dx = y * (dy - sum(dy * y))"""
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)

    def backward(dy):
        return (y * (dy - (dy * y).sum(axis=axis, keepdims=True)),)
    return make(y, (x,), "softmax", backward)


def _wrong_softmax_diagonal(x, axis=-1):
    """dx = dy * y * (1 - y)   (WRONG: only the diagonal of the Jacobian)"""
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    return make(y, (x,), "softmax", lambda dy: (dy * y * (1 - y),))


def _wrong_softmax_axis(x, axis=-1):
    """dx = y * (dy - sum(dy * y)) with the sum over every axis   (WRONG: one row at a time)"""
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)
    return make(y, (x,), "softmax", lambda dy: (y * (dy - (dy * y).sum()),))


def check_softmax(fn, examples=10):
    """fn(x, axis=-1) -> Tensor; checked as `gradcheck --op softmax --function` checks it."""
    if fn is None:
        return not_answered(1, "dx_k = sum_i dy_i y_i ([i = k] - y_k)")
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3)), requires_grad=True,
               dtype=np.float64)
    out = fn(x)
    assert isinstance(out, Tensor) and out._backward is not None, \
        "Exercise 1: return the Tensor made by make(y, (x,), 'softmax', backward)"
    grads = out._backward(np.ones_like(out.data))
    if grads is None:
        return not_answered(1, "dx_k = sum_i dy_i y_i ([i = k] - y_k)")
    assert isinstance(grads, (tuple, list)) and len(grads) == 1, \
        "Exercise 1: backward returns one gradient per input, as a tuple: (dx,)"
    checks, abs_err, _, ok, note = check_learner("softmax", fn, examples, 0, "cpu")
    assert ok, f"Exercise 1: case {checks} failed: {note}"
    return correct(1, f"{checks} random cases, max abs err {abs_err:.1e}")


# ----- exercise 2: cross-entropy's gradient -------------------------------------------------


def answer_cross_entropy_grad(logits, targets):
    """d mean_i(-log softmax(logits_i)[t_i]) / d logits = (softmax(logits) - onehot) / N"""
    N = logits.shape[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    dlogits = e / e.sum(axis=1, keepdims=True)               # (N, V) softmax
    dlogits[np.arange(N), targets] -= 1                       # - onehot
    return dlogits / N                                        # the mean over N rows


def _wrong_ce_no_mean(logits, targets):
    """(softmax - onehot)   (WRONG: the loss is a mean over N rows)"""
    return answer_cross_entropy_grad(logits, targets) * logits.shape[0]


def _wrong_ce_no_onehot(logits, targets):
    """softmax / N   (WRONG: the target's -1 is missing)"""
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True) / logits.shape[0]


def engine_cross_entropy_grad(logits, targets):
    """d loss / d logits from tensor/cross_entropy.py's backward (float64)."""
    x = Tensor(logits, requires_grad=True, dtype=np.float64)
    F.cross_entropy(x, np.asarray(targets)).backward()
    return x.grad


def check_cross_entropy_grad(fn):
    """fn(logits (N, V) ndarray, targets (N,) ints) -> (N, V) ndarray."""
    rng = np.random.default_rng(0)
    if fn is None or fn(rng.standard_normal((2, 3)), np.array([0, 2])) is None:
        return not_answered(2, "d/dz_k of logsumexp(z) - z_t, then the mean over rows")
    for N, V in [(1, 2), (3, 5), (8, 11)]:
        logits, targets = 2 * rng.standard_normal((N, V)), rng.integers(0, V, N)
        mine = np.asarray(fn(logits.copy(), targets.copy()), dtype=np.float64)
        assert mine.shape == (N, V), f"Exercise 2: give an (N, V) = {(N, V)} array, got " \
            f"shape {mine.shape}"
        engine = engine_cross_entropy_grad(logits, targets)
        if not np.allclose(mine, engine, rtol=1e-6, atol=1e-10):
            rows = mine.sum(axis=1)
            hint = "each row should sum to 0 (softmax sums to 1, onehot too)" \
                if not np.allclose(rows, 0) else "the loss is the MEAN over N rows"
            assert False, f"Exercise 2: wrong for N={N}, V={V} (max gap " \
                f"{np.abs(mine - engine).max():.3e}): {hint}"
    return correct(2, "matches tensor/cross_entropy.py's backward")


# ----- exercise 3: add-alpha smoothing ------------------------------------------------------


def answer_smoothed_probs(ids, V, alpha):
    """p(b | a) = (count(a b) + alpha) / (count(a) + alpha V): no pair has probability 0."""
    ids = np.asarray(ids)
    counts = np.zeros((V, V))
    np.add.at(counts, (ids[:-1], ids[1:]), 1)                 # row: current, column: next
    return (counts + alpha) / (counts.sum(axis=1, keepdims=True) + alpha * V)


def _wrong_smoothed_denominator(ids, V, alpha):
    """(count + alpha) / count(a)   (WRONG: rows do not sum to 1)"""
    ids = np.asarray(ids)
    counts = np.zeros((V, V))
    np.add.at(counts, (ids[:-1], ids[1:]), 1)
    return (counts + alpha) / np.maximum(counts.sum(axis=1, keepdims=True), 1)


def _wrong_smoothed_transposed(ids, V, alpha):
    """counts indexed (next, current)   (WRONG: row a must be the distribution after a)"""
    ids = np.asarray(ids)
    return answer_smoothed_probs(ids[::-1], V, alpha)


def check_smoothed_probs(fn):
    """fn(ids, V, alpha) -> (V, V) ndarray, row a = p(next | a)."""
    ids = np.array([0, 1, 2, 0, 1, 1, 0, 2, 2, 1, 0, 1, 2])    # V = 4: id 3 never appears
    if fn is None or fn(ids.copy(), 4, 1.0) is None:
        return not_answered(3, "(count(a b) + alpha) / (count(a) + alpha V)")
    for alpha in (1.0, 0.1):
        mine = np.asarray(fn(ids.copy(), 4, alpha), dtype=np.float64)
        assert mine.shape == (4, 4), f"Exercise 3: give a (V, V) = (4, 4) table, got " \
            f"{mine.shape}"
        assert np.allclose(mine.sum(axis=1), 1), "Exercise 3: each row p(. | a) must sum " \
            f"to 1, got row sums {np.round(mine.sum(axis=1), 4)}"
        assert np.allclose(mine, answer_smoothed_probs(ids, 4, alpha)), "Exercise 3: rows " \
            "sum to 1 but the values differ: row a is the current token, column b the next"
    return correct(3, "rows sum to 1, unseen pairs get alpha / (count(a) + alpha V)")


CHECKS = [
    (check_softmax, answer_softmax, [_wrong_softmax_diagonal, _wrong_softmax_axis]),
    (check_cross_entropy_grad, answer_cross_entropy_grad,
     [_wrong_ce_no_mean, _wrong_ce_no_onehot]),
    (check_smoothed_probs, answer_smoothed_probs,
     [_wrong_smoothed_denominator, _wrong_smoothed_transposed]),
]
