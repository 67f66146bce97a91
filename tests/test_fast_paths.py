"""Fast paths agree with the plain computation they replace, and keep the engine's contract.

The reference ops (tensor/) against plain engine ops, and the fast kernels (tensor/fast/)
where they take shortcuts of their own: attention's pieces of query rows that skip the
causal future, embedding's two ways to scatter-add. tests/test_fast_kernels.py compares
every fast kernel with its reference op in general.
"""
import numpy as np
import pytest

import tensor.functional as F
from tensor import Tensor
from tensor import attention as reference_attention
from tensor import layernorm as reference_layernorm
from tensor.embedding import ONE_HOT_MAX_ROWS, scatter_add_rows
from tensor.fast import attention as fast_attention
from tensor.fast import layernorm as fast_layernorm
from test_fast_kernels import fixed_cases

ATTENTION = {"reference": reference_attention.scaled_dot_product_attention,
             "fast": fast_attention.scaled_dot_product_attention}
LAYER_NORM = {"reference": reference_layernorm.layer_norm, "fast": fast_layernorm.layer_norm}


@pytest.mark.parametrize("num_rows", [7, ONE_HOT_MAX_ROWS, ONE_HOT_MAX_ROWS + 1, 5000])
def test_scatter_add_rows_matches_np_add_at_on_both_paths(num_rows):
    rng = np.random.default_rng(num_rows)
    ids = rng.integers(0, min(num_rows, 50), size=300)         # many repeats
    rows = rng.standard_normal((300, 6))
    expected = np.zeros((num_rows, 6))
    np.add.at(expected, ids, rows)
    np.testing.assert_allclose(scatter_add_rows(np, num_rows, ids, rows), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", sorted(LAYER_NORM))
@pytest.mark.parametrize("with_weight,with_bias", [(True, True), (True, False), (False, True),
                                                   (False, False)])
def test_layer_norm_backward_leaves_the_upstream_gradient_untouched(impl, with_weight,
                                                                    with_bias):
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((3, 4, 8)), requires_grad=True, dtype="float64")
    w = Tensor(rng.standard_normal(8), requires_grad=True, dtype="float64") if with_weight else None
    b = Tensor(rng.standard_normal(8), requires_grad=True, dtype="float64") if with_bias else None
    y = LAYER_NORM[impl](x, w, b)
    dy = rng.standard_normal(y.shape)
    kept = dy.copy()
    y.backward(dy)
    np.testing.assert_array_equal(dy, kept)
    centered = x.data - x.data.mean(-1, keepdims=True)
    n = centered / np.sqrt(centered.var(-1, keepdims=True) + 1e-5)
    expected = n * (w.data if with_weight else 1) + (b.data if with_bias else 0)
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["gelu", "layer_norm", "cross_entropy", "attention"])
def test_fast_backward_keeps_dy_and_returns_arrays_it_does_not_keep(name):
    """The engine's contract (tensor/tensor.py): a backward only reads dy, and the arrays it
    returns become .grad without a copy, so it must not keep them (nor return a saved one)."""
    fast, _, inputs, _ = fixed_cases(np.float64)[name]
    out = fast(*[Tensor(x, requires_grad=True, dtype="float64") for x in inputs])
    dy = np.random.default_rng(1).standard_normal(out.shape)
    kept = dy.copy()
    first = out._backward(dy)
    np.testing.assert_array_equal(dy, kept)
    saved = [g.copy() for g in first]
    for g in first:
        g[...] = np.nan                                      # as the optimizer would write
    for g, again in zip(saved, out._backward(dy)):
        np.testing.assert_array_equal(again, g)


@pytest.mark.parametrize("impl", sorted(ATTENTION))
def test_attention_with_a_cache_offset_matches_the_last_rows_of_full_attention(impl):
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)) for _ in range(3))
    attend = ATTENTION[impl]
    full = attend(Tensor(q, dtype="float64"), Tensor(k, dtype="float64"),
                  Tensor(v, dtype="float64"))
    last = attend(Tensor(q[:, :, 4:], dtype="float64"), Tensor(k, dtype="float64"),
                  Tensor(v, dtype="float64"), offset=4)
    np.testing.assert_allclose(last.data, full.data[:, :, 4:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", sorted(ATTENTION))
@pytest.mark.parametrize("T,L,offset", [(150, 150, 0), (70, 200, 130), (1, 129, 128),
                                        (64, 64, 0), (130, 130, 0)])
def test_causal_attention_matches_the_composed_ops_in_value_and_gradient(impl, T, L, offset):
    """The reference's whole (T, L) square, and the fast kernel's pieces (at the default
    QUERY_CHUNK of 64, T and L above give one piece or several, and keys the piece never
    computes): the result and all three gradients equal the plain five-op computation
    (engine ops, float64), also with a KV-cache offset."""
    assert fast_attention.QUERY_CHUNK == 64
    rng = np.random.default_rng(T + L)
    q = rng.standard_normal((2, 3, T, 8))
    k, v = (rng.standard_normal((2, 3, L, 8)) for _ in range(2))
    dy = rng.standard_normal((2, 3, T, 8))
    fused = [Tensor(a, requires_grad=True, dtype="float64") for a in (q, k, v)]
    y_fused = ATTENTION[impl](*fused, offset=offset)
    y_fused.backward(dy)
    plain = [Tensor(a, requires_grad=True, dtype="float64") for a in (q, k, v)]
    scores = (plain[0] @ plain[1].transpose(-2, -1)) * (1 / np.sqrt(8))
    future = reference_attention.future(T, L, offset)
    y = F.softmax(scores.masked_fill(future, -np.inf), axis=-1) @ plain[2]
    y.backward(dy)
    np.testing.assert_allclose(y_fused.data, y.data, rtol=1e-12, atol=1e-12)
    for a, b, name in zip(fused, plain, "qkv"):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12, err_msg=name)


def test_future_is_the_causal_rule():
    """Query t (position offset + t among the keys) sees key u exactly when u <= offset + t;
    the additive mask is 0 there and -inf elsewhere."""
    future = reference_attention.future(3, 5, 2)
    assert future.tolist() == [[False, False, False, True, True],
                               [False, False, False, False, True],
                               [False, False, False, False, False]]
    mask = reference_attention.causal_mask(np, 3, 5, 2, "cpu")
    assert mask.dtype == np.float32
    np.testing.assert_array_equal(mask, np.where(future, -np.inf, 0.0))
    above_diagonal = np.triu(np.ones((4, 4), bool), k=1)     # no cache: the strict future
    np.testing.assert_array_equal(reference_attention.future(4, 4), above_diagonal)
