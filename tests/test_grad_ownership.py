"""Only the engine writes gradients, and a .grad never aliases another array.

tensor/tensor.py keeps a gradient that a backward made fresh as the leaf's .grad without a
copy (is_fresh) and copies everything else: the incoming dy passed on unchanged (add gives
the same dy to both inputs), a view of it (reshape, broadcast), or one array given to two
parents. Each case is checked by accumulating twice: an aliased .grad would show the other
leaf's second gradient, or be written through.
"""
import numpy as np
import pytest

import tensor.functional as F
from tensor import Tensor
from tensor.tensor import is_fresh


def leaf(shape, seed):
    return Tensor(np.random.default_rng(seed).standard_normal(shape), requires_grad=True,
                  dtype="float64")


def test_add_gives_each_input_its_own_gradient():
    a, b = leaf((3, 4), 0), leaf((3, 4), 1)
    upstream = np.random.default_rng(2).standard_normal((3, 4))
    (a + b).backward(upstream)
    assert a.grad is not b.grad and not np.shares_memory(a.grad, b.grad)
    assert not np.shares_memory(a.grad, upstream)
    (a * 2.0).backward(upstream)                       # only a gets more
    np.testing.assert_allclose(a.grad, 3 * upstream)
    np.testing.assert_allclose(b.grad, upstream)       # b untouched by a's accumulation


def test_views_of_dy_are_copied_and_fresh_arrays_are_kept():
    x = leaf((2, 6), 3)
    y = x.reshape(3, 4)                                # backward returns a view of dy
    upstream = np.ones((3, 4))
    y.backward(upstream)
    assert not np.shares_memory(x.grad, upstream)
    upstream[...] = 5.0                                # the caller's array changes later
    np.testing.assert_array_equal(x.grad, np.ones((2, 6)))
    w = leaf((5, 6), 4)
    h = leaf((4, 6), 5)
    out = F.linear(h, w)                               # dW = dy^T @ x: a new array
    kept = []
    original = out._backward

    def spy(dy):
        grads = original(dy)
        kept.append(grads[1])
        return grads
    out._backward = spy
    out.backward(np.ones((4, 5)))
    assert w.grad is kept[0]                           # kept as it is: no copy was made


@pytest.mark.parametrize("g_is", ["dy", "view", "twice", "fresh"])
def test_is_fresh_says_which_arrays_a_backward_made(g_is):
    dy = np.ones((2, 3))
    fresh = dy * 2
    g = {"dy": dy, "view": dy.reshape(3, 2), "twice": fresh, "fresh": fresh}[g_is]
    others = (g, g) if g_is == "twice" else (g, None)
    assert is_fresh(g, dy, others) == (g_is == "fresh")


def test_a_tied_weight_sums_both_uses_and_each_backward_only_returns_gradients():
    w = leaf((7, 4), 6)
    ids = np.array([[0, 3, 3, 6]])
    h = F.embedding(ids, w)                            # (1, 4, 4) rows of w
    logits = F.linear(h, w)                            # (1, 4, 7): w again, as the head
    upstream = np.random.default_rng(7).standard_normal((1, 4, 7))
    logits.backward(upstream)
    rows = w.data[ids[0]]                              # (4, 4)
    head = upstream[0].T @ rows                        # dW from the head
    lookup = np.zeros_like(w.data)
    np.add.at(lookup, ids[0], upstream[0] @ w.data)    # dW from the lookup: scatter-add
    np.testing.assert_allclose(w.grad, head + lookup, rtol=1e-12)
