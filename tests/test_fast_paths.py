"""Fast paths agree with the plain computation they replace."""
import numpy as np
import pytest

import tensor.functional as F
from tensor import Tensor
from tensor.embedding import ONE_HOT_MAX_ROWS, scatter_add_rows


@pytest.mark.parametrize("num_rows", [7, ONE_HOT_MAX_ROWS, ONE_HOT_MAX_ROWS + 1, 5000])
def test_scatter_add_rows_matches_np_add_at_on_both_paths(num_rows):
    rng = np.random.default_rng(num_rows)
    ids = rng.integers(0, min(num_rows, 50), size=300)         # many repeats
    rows = rng.standard_normal((300, 6))
    expected = np.zeros((num_rows, 6))
    np.add.at(expected, ids, rows)
    np.testing.assert_allclose(scatter_add_rows(np, num_rows, ids, rows), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("with_weight,with_bias", [(True, True), (True, False), (False, True),
                                                   (False, False)])
def test_layer_norm_backward_leaves_the_upstream_gradient_untouched(with_weight, with_bias):
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((3, 4, 8)), requires_grad=True, dtype="float64")
    w = Tensor(rng.standard_normal(8), requires_grad=True, dtype="float64") if with_weight else None
    b = Tensor(rng.standard_normal(8), requires_grad=True, dtype="float64") if with_bias else None
    y = F.layer_norm(x, w, b)
    dy = rng.standard_normal(y.shape)
    kept = dy.copy()
    y.backward(dy)
    np.testing.assert_array_equal(dy, kept)
    centered = x.data - x.data.mean(-1, keepdims=True)
    n = centered / np.sqrt(centered.var(-1, keepdims=True) + 1e-5)
    expected = n * (w.data if with_weight else 1) + (b.data if with_bias else 0)
    np.testing.assert_allclose(y.data, expected, rtol=1e-12, atol=1e-12)


def test_fused_attention_with_a_cache_offset_matches_the_last_rows_of_full_attention():
    rng = np.random.default_rng(1)
    q, k, v = (rng.standard_normal((2, 3, 6, 4)) for _ in range(3))
    full = F.scaled_dot_product_attention(Tensor(q, dtype="float64"), Tensor(k, dtype="float64"),
                                          Tensor(v, dtype="float64"))
    last = F.scaled_dot_product_attention(Tensor(q[:, :, 4:], dtype="float64"),
                                          Tensor(k, dtype="float64"), Tensor(v, dtype="float64"),
                                          offset=4)
    np.testing.assert_allclose(last.data, full.data[:, :, 4:], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("T,L,offset", [(150, 150, 0), (70, 200, 130), (1, 129, 128),
                                        (64, 64, 0), (130, 130, 0)])
def test_causal_attention_in_pieces_matches_the_full_square_in_value_and_gradient(T, L, offset):
    """At the default QUERY_CHUNK (64) the causal attention computes only the keys each
    piece of query rows can see; the result and all three gradients must equal the plain
    full-square computation (engine ops, float64), also with a KV-cache offset."""
    from tensor import attention
    assert attention.QUERY_CHUNK == 64       # so T, L above give one piece or several
    rng = np.random.default_rng(T + L)
    q = rng.standard_normal((2, 3, T, 8))
    k, v = (rng.standard_normal((2, 3, L, 8)) for _ in range(2))
    dy = rng.standard_normal((2, 3, T, 8))
    fused = [Tensor(a, requires_grad=True, dtype="float64") for a in (q, k, v)]
    F.scaled_dot_product_attention(*fused, offset=offset).backward(dy)
    plain = [Tensor(a, requires_grad=True, dtype="float64") for a in (q, k, v)]
    scores = (plain[0] @ plain[1].transpose(-2, -1)) * (1 / np.sqrt(8))
    future = np.arange(L)[None, :] > np.arange(T)[:, None] + offset
    y = F.softmax(scores.masked_fill(future, -np.inf), axis=-1) @ plain[2]
    y.backward(dy)
    np.testing.assert_allclose(F.scaled_dot_product_attention(*fused, offset=offset).data,
                               y.data, rtol=1e-12, atol=1e-12)
    for a, b, name in zip(fused, plain, "qkv"):
        np.testing.assert_allclose(a.grad, b.grad, rtol=1e-10, atol=1e-12, err_msg=name)
