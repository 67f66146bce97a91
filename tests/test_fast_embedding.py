"""tensor/fast/embedding.py equals tensor/embedding.py: the same rows forward, and the same
weight gradient bit for bit, whether the embedding's gradient is the weight's first (made
dense) or is added into a gradient already there (a weight tied to a linear layer, as
GPT's token embedding and LM head), on both of the reference's ways to sum rows (the
one-hot product for a small vocabulary, sorted runs for a big one), with ids repeated.

Bitwise, not within a tolerance: a RowGradient's dense() is the reference's array, and
add_into(g) adds each row sum at its id once, the very float additions of g + dense
(the other entries of dense are exact zeros)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tensor
import tensor.fast
from strategies import seeds
from tensor import Tensor, dispatch
from tensor import embedding as reference_embedding
from tensor import linear as reference_linear
from tensor.embedding import ONE_HOT_MAX_ROWS
from tensor.fast import embedding as fast_embedding

VOCABS = {"one-hot": st.integers(1, 40),
          "sorted runs": st.integers(ONE_HOT_MAX_ROWS + 1, ONE_HOT_MAX_ROWS + 80)}


def gradients(embedding, V, C, ids, dtype, seed, tied, first):
    """Output and weight.grad of embedding(ids, w) (plus, when tied, a linear layer on the
    same w whose gradient reaches w's .grad before the embedding's, or after it)."""
    rng = np.random.default_rng(seed)
    w = Tensor(rng.standard_normal((V, C)), requires_grad=True, dtype=dtype)
    y = embedding(ids, w)                                               # (..., C)
    loss = (y * Tensor(rng.standard_normal(y.shape), dtype=dtype)).sum()
    if tied:
        h = Tensor(rng.standard_normal((3, C)), dtype=dtype)
        logits = reference_linear.linear(h, w)                          # (3, V)
        head = (logits * Tensor(rng.standard_normal(logits.shape), dtype=dtype)).sum()
        # The node visited first in backward hands its gradient of w to the engine first.
        loss = head + loss if first == "embedding" else loss + head
    loss.backward()
    return y.data, w.grad


@settings(max_examples=40, deadline=None)
@given(vocab=st.sampled_from(sorted(VOCABS)), data=st.data(), C=st.integers(1, 5),
       ids_shape=st.lists(st.integers(1, 6), min_size=1, max_size=3),
       dtype=st.sampled_from([np.float32, np.float64]), tied=st.booleans(),
       first=st.sampled_from(["embedding", "linear"]), seed=seeds)
def test_fast_embedding_is_the_reference_bit_for_bit(vocab, data, C, ids_shape, dtype, tied,
                                                     first, seed):
    V = data.draw(VOCABS[vocab], label="V")
    ids = np.random.default_rng(seed).integers(0, min(V, 4) if seed % 2 else V, ids_shape)
    y_ref, g_ref = gradients(reference_embedding.embedding, V, C, ids, dtype, seed, tied, first)
    y, g = gradients(fast_embedding.embedding, V, C, ids, dtype, seed, tied, first)
    assert np.array_equal(y, y_ref)
    assert g.dtype == g_ref.dtype and np.array_equal(g, g_ref)


def test_the_gradient_is_kept_as_rows_only_for_a_leaf():
    """A weight computed by another op gets the reference's dense array (only a leaf's
    gradient reaches accumulate_grad, which knows what to do with rows)."""
    rng = np.random.default_rng(0)
    ids = np.array([[3, 1, 3]])
    leaf = Tensor(rng.standard_normal((2000, 4)), requires_grad=True)
    y = fast_embedding.embedding(ids, leaf)
    (dw,) = y._backward(np.ones(y.shape))
    assert isinstance(dw, fast_embedding.RowGradient) and dw.shape == (2000, 4)
    assert np.array_equal(dw.dense(), reference_embedding.scatter_add_rows(
        np, 2000, ids.reshape(-1), np.ones((3, 4))))
    scaled = leaf * 2.0                                                  # not a leaf
    y = fast_embedding.embedding(ids, scaled)
    (dw,) = y._backward(np.ones(y.shape))
    assert isinstance(dw, np.ndarray) and dw.shape == (2000, 4)
    y.sum().backward()
    expected = np.zeros((2000, 4))
    expected[1], expected[3] = 2.0, 4.0                                 # d(2w)/dw = 2, id 3 twice
    assert np.array_equal(leaf.grad, expected)


def test_no_ids_give_a_zero_gradient_and_add_nothing():
    w = Tensor(np.ones((1500, 3)), requires_grad=True)
    y = fast_embedding.embedding(np.zeros((0,), dtype=np.int64), w)
    (dw,) = y._backward(np.ones(y.shape))
    g = np.full((1500, 3), 7.0)
    dw.add_into(g)
    assert np.array_equal(dw.dense(), np.zeros((1500, 3))) and np.all(g == 7.0)


def test_bad_ids_are_the_references_errors():
    w = Tensor(np.ones((5, 2)), requires_grad=True)
    for bad, error in ((np.array([0.5]), TypeError), (np.array([5]), IndexError),
                       (np.array([-1]), IndexError)):
        for embedding in (reference_embedding.embedding, fast_embedding.embedding):
            with pytest.raises(error):
                embedding(bad, w)


def test_detect_anomaly_checks_the_rows():
    w = Tensor(np.ones((1500, 2)), requires_grad=True)
    with tensor.detect_anomaly():
        y = fast_embedding.embedding(np.array([4, 4]), w)
        with pytest.raises(FloatingPointError, match="embedding"):
            y.backward(np.array([[1.0, np.nan], [0.0, 0.0]]))


def test_enable_runs_the_models_embedding_through_it():
    tensor.fast.disable()
    assert dispatch.kernel("embedding", None) is None
    try:
        assert tensor.fast.enable(tune_malloc=False)
        assert dispatch.kernel("embedding", None) is fast_embedding.embedding
    finally:
        tensor.fast.disable()
