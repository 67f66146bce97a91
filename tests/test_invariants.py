"""Mathematical properties the fused ops must have whatever their inputs: softmax is a
distribution and shift-invariant, layer_norm standardizes, cross_entropy is the mean
negative log-likelihood and really ignores ignored rows, the two GELUs agree, embedding's
backward is a scatter-add, dropout keeps the expectation.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import tensor
import tensor.functional as F
from strategies import normal, rng_for, seeds, shapes
from tensor import Tensor


def f64(array, requires_grad=False):
    return Tensor(array, requires_grad=requires_grad, dtype=np.float64)


@st.composite
def shape_and_axis(draw, min_dims=1):
    shape = draw(shapes(min_dims=min_dims))
    return shape, draw(st.integers(-len(shape), len(shape) - 1))


# ----- max ---------------------------------------------------------------------------------
@given(shape=shapes(min_dims=1), seed=seeds, data=st.data())
def test_max_shares_the_gradient_equally_between_tied_maxima(shape, seed, data):
    """Along the last axis, k copies of the row's maximum each get 1/k of its gradient."""
    rng = rng_for(seed)
    x = rng.integers(-3, 3, shape).astype(np.float64)         # small integers: many ties
    t = f64(x, requires_grad=True)
    upstream = normal(rng, shape[:-1])
    t.max(axis=-1).backward(upstream)
    winners = x == x.max(axis=-1, keepdims=True)
    expected = winners / winners.sum(axis=-1, keepdims=True) * upstream[..., None]
    np.testing.assert_allclose(t.grad, expected, rtol=1e-14, atol=0)


# ----- softmax and log_softmax ------------------------------------------------------------
@given(case=shape_and_axis(), seed=seeds, scale=st.sampled_from([1.0, 10.0, 100.0]))
def test_softmax_is_a_distribution_along_its_axis(case, seed, scale):
    shape, axis = case
    y = F.softmax(f64(normal(rng_for(seed), shape, scale)), axis=axis).numpy()
    assert np.all(y >= 0) and np.all(np.isfinite(y))
    np.testing.assert_allclose(y.sum(axis=axis), 1.0, rtol=0, atol=1e-12)


@given(case=shape_and_axis(), seed=seeds, offset=st.sampled_from([1.0, -50.0, 1000.0]))
def test_softmax_ignores_a_constant_added_to_each_row(case, seed, offset):
    """Also a stability check: +1000 overflows exp unless the max is subtracted first."""
    shape, axis = case
    rng = rng_for(seed)
    x = normal(rng, shape, 3.0)
    per_row = list(shape)
    per_row[axis] = 1
    shift = offset * (1 + rng.random(per_row))              # a different constant per row
    with np.errstate(over="raise"):
        shifted = F.softmax(f64(x + shift), axis=axis).numpy()
    np.testing.assert_allclose(shifted, F.softmax(f64(x), axis=axis).numpy(),
                               rtol=1e-9, atol=1e-12)


@given(case=shape_and_axis(), seed=seeds, scale=st.sampled_from([1.0, 10.0]))
def test_log_softmax_is_the_log_of_softmax(case, seed, scale):
    shape, axis = case
    x = f64(normal(rng_for(seed), shape, scale))
    np.testing.assert_allclose(F.log_softmax(x, axis=axis).numpy(),
                               np.log(F.softmax(x, axis=axis).numpy()), rtol=1e-12,
                               atol=1e-12)


# ----- layer_norm -------------------------------------------------------------------------
@given(lead=shapes(max_dims=2), width=st.integers(2, 8), seed=seeds,
       spread=st.sampled_from([0.5, 1.0, 30.0]), center=st.sampled_from([0.0, 5.0, -200.0]))
def test_layer_norm_rows_have_mean_0_and_variance_1(lead, width, seed, spread, center):
    """Exactly: var(y) = var(x) / (var(x) + eps); so 1 within 1e-4 once var(x) >= 0.1."""
    rng = rng_for(seed)
    x = center + normal(rng, lead + (width,), spread)
    var_x = x.var(axis=-1)
    assume(var_x.min() >= 0.1)
    y = F.layer_norm(f64(x)).numpy()
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-10)
    np.testing.assert_allclose(y.var(axis=-1), var_x / (var_x + 1e-5), rtol=1e-9)
    np.testing.assert_allclose(y.var(axis=-1), 1.0, atol=1e-4)


@given(lead=shapes(max_dims=2), width=st.integers(2, 8), seed=seeds)
def test_layer_norm_in_float32_standardizes_within_float32_tolerance(lead, width, seed):
    x = normal(rng_for(seed), lead + (width,), 2.0) + 3.0
    assume(x.var(axis=-1).min() >= 0.1)
    y = F.layer_norm(Tensor(x)).numpy()
    assert y.dtype == np.float32
    np.testing.assert_allclose(y.mean(axis=-1), 0.0, atol=1e-5)
    np.testing.assert_allclose(y.var(axis=-1), 1.0, atol=2e-4)


# ----- cross_entropy ----------------------------------------------------------------------
def draw_targets(rng, lead, vocab, ignore_index):
    targets = rng.integers(0, vocab, lead)
    targets[rng.random(lead) < 0.4] = ignore_index
    targets.flat[0] = rng.integers(0, vocab)               # at least one kept row
    return targets


@given(lead=st.sampled_from([(1,), (5,), (2, 3), (3, 4)]), vocab=st.integers(1, 7),
       ignore_index=st.sampled_from([-1, -100]), seed=seeds)
def test_cross_entropy_is_mean_negative_log_softmax_at_the_target(lead, vocab, ignore_index,
                                                                  seed):
    rng = rng_for(seed)
    logits = normal(rng, lead + (vocab,), 3.0)
    targets = draw_targets(rng, lead, vocab, ignore_index)
    loss = F.cross_entropy(f64(logits), targets, ignore_index=ignore_index).item()
    logp = F.log_softmax(f64(logits), axis=-1).numpy().reshape(-1, vocab)
    flat = targets.reshape(-1)
    kept = np.flatnonzero(flat != ignore_index)
    assert np.isclose(loss, -np.mean(logp[kept, flat[kept]]), rtol=1e-12, atol=1e-14)


@given(lead=st.sampled_from([(2,), (5,), (2, 3), (3, 4)]), vocab=st.integers(2, 7),
       ignore_index=st.sampled_from([-1, -100]), seed=seeds)
def test_cross_entropy_ignored_rows_change_nothing_and_get_zero_gradient(
        lead, vocab, ignore_index, seed):
    """Rewriting the logits of ignored rows leaves the loss and every other row's gradient
    as they were, and the ignored rows' gradient is exactly 0."""
    rng = rng_for(seed)
    logits = normal(rng, lead + (vocab,), 3.0)
    targets = draw_targets(rng, lead, vocab, ignore_index)
    ignored = targets == ignore_index
    assume(ignored.any())
    changed = logits.copy()
    changed[ignored] = normal(rng, changed[ignored].shape, 50.0)

    def loss_and_grad(x):
        t = f64(x, requires_grad=True)
        loss = F.cross_entropy(t, Tensor(targets), ignore_index=ignore_index)
        loss.backward()
        return loss.item(), t.grad
    loss, grad = loss_and_grad(logits)
    loss_changed, grad_changed = loss_and_grad(changed)
    assert loss_changed == loss
    np.testing.assert_array_equal(grad_changed[~ignored], grad[~ignored])
    assert np.all(grad[ignored] == 0) and np.all(grad_changed[ignored] == 0)
    assert np.any(grad[~ignored] != 0)


@pytest.mark.parametrize("ignore_index", [-100, -1, 3])
def test_cross_entropy_with_every_row_ignored_is_a_clear_error_not_nan(ignore_index):
    """Unlike PyTorch (NaN), a mean over no rows is a ValueError naming ignore_index, for
    any ignore_index, with no graph made."""
    logits = f64(normal(rng_for(0), (2, 3, 4)), requires_grad=True)
    targets = np.full((2, 3), ignore_index)
    with pytest.raises(ValueError, match=rf"every target equals ignore_index \({ignore_index}\)"
                       r": nothing to average"):
        F.cross_entropy(logits, targets, ignore_index=ignore_index)


def test_cross_entropy_with_no_targets_at_all_is_a_clear_error():
    with pytest.raises(ValueError, match="no targets"):
        F.cross_entropy(f64(np.zeros((0, 5)), requires_grad=True), np.zeros(0, dtype=int))


def test_cross_entropy_default_ignore_index_is_pytorchs_minus_100():
    """-100 targets are skipped without naming ignore_index; one kept row is its own nll."""
    logits = normal(rng_for(1), (3, 5))
    loss = F.cross_entropy(f64(logits), np.array([-100, 2, -100])).item()
    logp = F.log_softmax(f64(logits), axis=-1).numpy()
    assert np.isclose(loss, -logp[1, 2], rtol=1e-14, atol=0)


# ----- gelu -------------------------------------------------------------------------------
@given(shape=shapes(min_dims=1), seed=seeds, scale=st.sampled_from([1.0, 3.0, 10.0]))
def test_gelu_tanh_and_erf_forms_agree_within_1e_3(shape, seed, scale):
    x = f64(normal(rng_for(seed), shape, scale))
    diff = F.gelu(x).numpy() - F.gelu(x, approximate="none").numpy()
    assert np.max(np.abs(diff)) < 1e-3


def test_gelu_forms_agree_on_a_dense_grid_and_are_0_at_0():
    x = f64(np.linspace(-8, 8, 4001))                        # includes 0 exactly
    tanh_form, erf_form = F.gelu(x).numpy(), F.gelu(x, approximate="none").numpy()
    assert np.max(np.abs(tanh_form - erf_form)) < 1e-3
    for approximate in ("tanh", "none"):
        assert F.gelu(f64([0.0]), approximate=approximate).item() == 0.0


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_tends_to_identity_and_to_zero_far_from_0(approximate):
    x = f64([-30.0, 30.0])
    np.testing.assert_allclose(F.gelu(x, approximate=approximate).numpy(), [0.0, 30.0],
                               atol=1e-12)


# ----- embedding --------------------------------------------------------------------------
@given(vocab=st.integers(1, 8), width=st.integers(1, 5), ids_shape=shapes(min_dims=1),
       seed=seeds, dtype=st.sampled_from([np.float32, np.float64]))
def test_embedding_backward_equals_a_naive_scatter_add(vocab, width, ids_shape, seed, dtype):
    rng = rng_for(seed)
    ids = rng.integers(0, vocab, ids_shape)
    weight = Tensor(normal(rng, (vocab, width)), requires_grad=True, dtype=dtype)
    upstream = normal(rng, ids_shape + (width,)).astype(dtype)
    out = F.embedding(ids, weight)
    np.testing.assert_array_equal(out.numpy(), weight.numpy()[ids])
    out.backward(upstream)
    expected = np.zeros((vocab, width), dtype)
    np.add.at(expected, ids, upstream)
    assert weight.grad.dtype == dtype
    np.testing.assert_allclose(weight.grad, expected, rtol=1e-5 if dtype == np.float32
                               else 1e-13, atol=1e-6 if dtype == np.float32 else 1e-14)


# ----- dropout ----------------------------------------------------------------------------
@given(p=st.floats(0.05, 0.9), seed=seeds)
def test_dropout_keeps_the_expectation(p, seed):
    """mask * 1/(1-p) has mean 1: checked to 5 standard errors on 20,000 draws."""
    tensor.manual_seed(seed)
    n = 20_000
    x = f64(np.ones(n))
    scaled_mask = F.dropout(x, p).numpy()
    kept = scaled_mask != 0
    np.testing.assert_allclose(scaled_mask[kept], 1 / (1 - p), rtol=1e-12)
    standard_error = np.sqrt(p / (1 - p) / n)
    assert abs(scaled_mask.mean() - 1) < 5 * standard_error
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)


@given(shape=shapes(min_dims=1), seed=seeds, p=st.floats(0.1, 0.9))
def test_dropout_uses_one_mask_forward_and_backward(shape, seed, p):
    tensor.manual_seed(seed)
    x = normal(rng_for(seed), shape) + 5.0                  # no zeros of its own
    t = f64(x, requires_grad=True)
    y = F.dropout(t, p)
    y.backward(np.ones(shape))
    np.testing.assert_allclose(t.grad, y.numpy() / x, rtol=1e-12)


def test_dropout_is_reproducible_after_manual_seed_and_varies_without_it():
    x = f64(np.ones(1000))
    tensor.manual_seed(7)
    first, second = F.dropout(x, 0.5).numpy(), F.dropout(x, 0.5).numpy()
    tensor.manual_seed(7)
    np.testing.assert_array_equal(F.dropout(x, 0.5).numpy(), first)
    assert not np.array_equal(first, second)


@given(shape=shapes(), seed=seeds, p=st.floats(0.0, 1.0))
def test_dropout_is_the_identity_when_not_training(shape, seed, p):
    x = f64(normal(rng_for(seed), shape), requires_grad=True)
    y = F.dropout(x, p, training=False)
    np.testing.assert_array_equal(y.numpy(), x.numpy())
    y.backward(np.ones(shape))
    np.testing.assert_array_equal(x.grad, np.ones(shape))


@given(shape=shapes(), seed=seeds)
def test_dropout_with_p_0_is_the_identity(shape, seed):
    x = f64(normal(rng_for(seed), shape))
    np.testing.assert_array_equal(F.dropout(x, 0.0).numpy(), x.numpy())


def test_dropout_with_p_1_drops_everything_and_bad_p_raises():
    assert np.all(F.dropout(f64(np.ones(50)), 1.0).numpy() == 0)
    for p in (-0.1, 1.5):
        with pytest.raises(ValueError, match="dropout probability"):
            F.dropout(f64(np.ones(3)), p)
