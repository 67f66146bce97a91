"""The ops at their edges, without PyTorch: zero bases, exact ties, +-inf, NaN, empty axes.

What the math says, checked on our ops alone (test_op_edges_torch.py compares the same
edges with PyTorch, where it is installed):
- pow at a zero base: da = 0 at b = 0 and db = 0 at a = 0 <= b (the limits, and what
  central differences give), and its gradients finite wherever the derivative is;
- var refuses N - ddof <= 0 in its forward (a ValueError, never a ZeroDivisionError in
  backward); max over an empty axis is a ValueError; tied maxima (and minima) share dy;
- NaN in, NaN out exactly where the math combines the NaN: in its row for the row-wise
  ops (reductions, softmax, layer norm, products, attention's queries), and nowhere else,
  with finite gradients for the rows it does not reach;
- tensor.fast's kernels give what the reference ops give on all of these edges,
  infinities, NaN and empty axes included.
The helpers (EDGES, grid, assert_same, forward_backward) serve the torch file too.
"""
import math
from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tensor.fast
import tensor.functional as F
from strategies import axes_for, reduced_count, seeds
from tensor import Tensor
from tensor.finite_differences import gradcheck

# The boundary values: signed zeros, ties (any value drawn twice), +-inf and NaN.
EDGES = (0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 3.0, math.inf, -math.inf, math.nan)
FINITE = EDGES[:7]
UPSTREAM = (1.0, -2.0, 0.5, 0.0)   # dy values: a 0 meets the infinite derivatives too


# 0 * inf, log(0) and means of empty slices are the point here: NumPy's warnings are noise.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def grid(shape, values=EDGES):
    """float64 arrays of `shape` with every element one of `values`."""
    return hnp.arrays(np.float64, shape, elements=st.sampled_from(values))


def upstream_for(shape, seed):
    return np.random.default_rng(seed).choice(UPSTREAM, shape)


def forward_backward(fn, arrays, upstream):
    """fn on float64 Tensors that require grad, then backward(upstream): (y, grads).
    upstream: dy, or an int seed to draw dy (of y's shape) from UPSTREAM."""
    tensors = [Tensor(a, requires_grad=True, dtype="float64") for a in arrays]
    y = fn(*tensors)
    y.backward(upstream_for(y.shape, upstream) if isinstance(upstream, int) else upstream)
    return y.numpy(), [t.grad for t in tensors]


def assert_same(ours, theirs, what, rtol=1e-12):
    """One shape; NaN at the same places; the same infinities; finite values within rtol
    (and an atol of rtol times the largest finite magnitude, for terms that cancel)."""
    ours, theirs = np.asarray(ours), np.asarray(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {ours.shape}, expected {theirs.shape}"
    finite = np.abs(theirs[np.isfinite(theirs)])
    atol = rtol * max(1.0, float(finite.max(initial=0.0)))
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


# ----- pow at a zero base -----------------------------------------------------------------
LIMITS = [   # (a, b, y, da, db) with dy = 1
    (0.0, 0.0, 1.0, 0.0, 0.0),         # a^0 = 1 for every a: da = 0; 0^b jumps at 0: db = 0
    (-0.0, 0.0, 1.0, 0.0, 0.0),
    (0.0, 0.5, 0.0, math.inf, 0.0),    # sqrt's infinite slope at 0; 0^b = 0 for b > 0: db = 0
    (0.0, 1.0, 0.0, 1.0, 0.0), (-0.0, 1.0, 0.0, 1.0, 0.0),
    (0.0, 2.0, 0.0, 0.0, 0.0), (-0.0, 3.0, 0.0, 0.0, 0.0),
    (0.0, -1.0, math.inf, -math.inf, -math.inf),   # 1/a: both blow up, as the math does
]


@pytest.mark.parametrize("base, b, y, da, db", LIMITS)
def test_pow_at_a_zero_base_gives_the_limits(base, b, y, da, db):
    """The derivative where it exists, its limit (0) where the formula gives NaN, and an
    infinity where the math has one."""
    out, (got_da, got_db) = forward_backward(lambda s, t: s ** t,
                                             [np.array(base), np.array(b)], np.array(1.0))
    assert (out, got_da, got_db) == (y, da, db)


@given(b=hnp.arrays(np.float64, st.integers(1, 4), elements=st.floats(0.5, 2.0)))
def test_pow_zero_base_db_and_zero_exponent_da_equal_central_differences(b):
    """0^b is 0 for every b > 0, a^0 is 1 for every a: both derivatives are 0, and central
    differences in float64 (which straddle 0 in a) say so."""
    zeros = np.zeros(b.shape)
    assert gradcheck(lambda t: Tensor(zeros, dtype="float64") ** t, [b]).ok
    assert gradcheck(lambda t: t ** Tensor(zeros, dtype="float64"), [zeros + b - 1]).ok
    assert gradcheck(lambda t: t ** 0.0, [np.r_[0.0, b]]).ok


@given(shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=4), data=st.data(), seed=seeds)
def test_pow_gradients_are_finite_exactly_where_the_derivative_is(shape, data, seed):
    """Bases >= 0: da = b a^(b-1) exists for a > 0, b = 0 or b >= 1 (else it is infinite);
    db = a^b log(a) for a > 0 and, as a limit, for a = 0 <= b (0^b with b < 0 is inf)."""
    a = data.draw(grid(shape, (0.0, 0.5, 1.0, 2.0, 3.0)), label="a")
    b = data.draw(grid(shape, (0.0, 0.5, 1.0, 2.0, 3.0, -1.0)), label="b")
    _, (da, db) = forward_backward(lambda s, t: s ** t, [a, b], upstream_for(shape, seed))
    np.testing.assert_array_equal(np.isfinite(da), (a > 0) | (b == 0) | (b >= 1))
    np.testing.assert_array_equal(np.isfinite(db), (a > 0) | (b >= 0))


# ----- var, max: refused and tied ---------------------------------------------------------
@given(shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3), data=st.data(),
       ddof=st.integers(0, 3), keepdims=st.booleans(), seed=seeds)
def test_var_refuses_n_minus_ddof_at_or_below_zero_in_the_forward(shape, data, ddof,
                                                                  keepdims, seed):
    x = data.draw(grid(shape, FINITE), label="x")
    axis = data.draw(axes_for(len(shape)), label="axis")
    t = Tensor(x, requires_grad=True, dtype="float64")
    if reduced_count(shape, axis) - ddof <= 0:
        with pytest.raises(ValueError, match=f"ddof={ddof}.*must be positive"):
            t.var(axis=axis, keepdims=keepdims, ddof=ddof)
        return
    y = t.var(axis=axis, keepdims=keepdims, ddof=ddof)
    assert_same(y.numpy(), np.var(x, axis=axis, keepdims=keepdims, ddof=ddof), "var")
    y.backward(upstream_for(y.shape, seed))
    assert np.isfinite(t.grad).all() and t.grad.shape == shape


def test_max_over_an_empty_axis_is_a_clear_error_and_other_axes_are_fine():
    x = Tensor(np.zeros((2, 0)), requires_grad=True)
    with pytest.raises(ValueError, match="an empty set has no maximum"):
        x.max(axis=1)
    y = x.max(axis=0)
    y.backward(np.zeros(0))
    assert y.shape == (0,) and x.grad.shape == (2, 0)


@given(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=4), data=st.data(),
       keepdims=st.booleans(), minimum=st.booleans(), seed=seeds)
def test_tied_extremes_share_dy_equally(shape, data, keepdims, minimum, seed):
    """k tied maxima (or minima, as -max(-x)) get dy / k each; the rest 0; +-inf ties too."""
    x = data.draw(grid(shape, (-math.inf, -1.0, 0.0, 1.0, math.inf)), label="x")
    axis = data.draw(axes_for(len(shape)), label="axis")
    t = Tensor(x, requires_grad=True, dtype="float64")
    y = -(-t).max(axis, keepdims) if minimum else t.max(axis, keepdims)
    dy = upstream_for(y.shape, seed)
    y.backward(dy)
    pick = np.min if minimum else np.max
    best = pick(x, axis=axis, keepdims=True)
    winners = x == best
    ties = winners.sum(axis=axis, keepdims=True)
    dy_kept = dy.reshape(best.shape)
    np.testing.assert_array_equal(t.grad, np.where(winners, dy_kept / ties, 0.0))


# ----- NaN in, NaN out: where the math puts it and nowhere else ----------------------------
ELEMENTWISE = {   # op -> function; inputs are positive (log, sqrt defined) or NaN
    "neg": lambda t: -t, "exp": lambda t: t.exp(), "log": lambda t: t.log(),
    "tanh": lambda t: t.tanh(), "sqrt": lambda t: t.sqrt(), "relu": lambda t: t.relu(),
    "add": lambda t: t + 2.0, "sub": lambda t: 2.0 - t, "mul": lambda t: t * 3.0,
    "div": lambda t: 1.0 / t, "pow": lambda t: t ** 1.5, "rpow": lambda t: 2.0 ** t,
    "gelu": F.gelu, "gelu_erf": lambda t: F.gelu(t, "none"),
    "dropout": lambda t: F.dropout(t, 0.5),    # a dropped NaN is NaN * 0: still NaN
}
WITH_FAST = [(op, False) for op in sorted(ELEMENTWISE)] + [("gelu", True), ("gelu_erf", True)]


def fast_if(fast):
    return tensor.fast.on() if fast else nullcontext()


@given(shape=hnp.array_shapes(min_dims=0, max_dims=2, max_side=4), data=st.data(), seed=seeds)
def test_nan_stays_in_its_element(shape, data, seed):
    """Every elementwise op (gelu also with its fast kernel), on the same drawn x."""
    x = data.draw(grid(shape, (0.5, 1.0, 2.0, 3.0, math.nan)), label="x")
    nan_in = np.isnan(x)
    for op, fast in WITH_FAST:
        tensor.manual_seed(seed)
        with fast_if(fast):
            y, (dx,) = forward_backward(ELEMENTWISE[op], [x], seed)
        np.testing.assert_array_equal(np.isnan(y), nan_in, err_msg=f"{op}, fast={fast}")
        assert np.isfinite(y[~nan_in]).all() and np.isfinite(dx[~nan_in]).all(), op


K, V = (Tensor(a, dtype="float64") for a in  # attention's keys and values (1, 1, 3, 3)
        np.random.default_rng(0).standard_normal((2, 1, 1, 3, 3)))
W = Tensor(np.random.default_rng(1).standard_normal((5, 3)), dtype="float64")   # (out, in)
ROW_OPS = {   # op -> x (R, 3) -> output whose first axis is x's rows
    "sum": lambda x: x.sum(axis=-1), "mean": lambda x: x.mean(axis=-1, keepdims=True),
    "max": lambda x: x.max(axis=-1), "var": lambda x: x.var(axis=-1, ddof=1),
    "softmax": F.softmax, "log_softmax": F.log_softmax,
    "layer_norm": lambda x: F.layer_norm(x, W[0], W[1]),
    "matmul": lambda x: x @ W.T, "linear": lambda x: F.linear(x, W),
    "lora_linear": lambda x: F.lora_linear(x, W, None, W[:2], W[:, :2], 0.5),
    "attention": lambda x: F.scaled_dot_product_attention(      # x: the queries (1, 1, R, 3)
        x[None, None], K, V, is_causal=False)[0, 0],
}
ROWS_WITH_FAST = [(op, False) for op in sorted(ROW_OPS)] + [("layer_norm", True),
                                                             ("attention", True)]


@given(rows=st.integers(1, 4), data=st.data(), seed=seeds)
def test_nan_spreads_over_its_row_only(rows, data, seed):
    """A NaN in row i of x makes row i of the output NaN (every element: each combines the
    whole row) and leaves every other row, and their gradients, finite."""
    x = data.draw(grid((rows, 3), FINITE), label="x")
    i, j = data.draw(st.integers(0, rows - 1), label="i"), data.draw(st.integers(0, 2), label="j")
    x[i, j] = math.nan
    others = np.arange(rows) != i
    for op, fast in ROWS_WITH_FAST:
        with fast_if(fast):
            t = Tensor(x, requires_grad=True, dtype="float64")
            y = ROW_OPS[op](t)
            y.backward(upstream_for(y.shape, seed))
        y = y.numpy().reshape(rows, -1)
        assert np.isnan(y[i]).all(), f"{op}, fast={fast}: {y}"
        assert np.isfinite(y[others]).all() and np.isfinite(t.grad[others]).all(), op


@given(rows=st.integers(2, 4), data=st.data())
def test_cross_entropy_nan_counts_only_in_a_kept_row(rows, data):
    """A NaN logit makes the loss NaN when its row counts; an ignored row with NaN leaves
    the loss and the kept rows' gradients finite (its own gradient is NaN * 0, as PyTorch's)."""
    x = data.draw(grid((rows, 3), FINITE), label="x")
    x[0, data.draw(st.integers(0, 2), label="j")] = math.nan
    targets = np.array([data.draw(st.sampled_from([-100, 1]), label="t0")] + [2] * (rows - 1))
    for fast in (False, True):
        with fast_if(fast):
            loss, (dx,) = forward_backward(lambda t: F.cross_entropy(t, targets), [x], 0)
        assert np.isnan(loss) == (targets[0] != -100), f"fast={fast}"
        assert targets[0] != -100 or np.isfinite(dx[1:]).all(), f"fast={fast}"


@given(ids=hnp.arrays(np.int64, hnp.array_shapes(min_dims=1, max_dims=2, max_side=4),
                      elements=st.integers(0, 3)), row=st.integers(0, 3), seed=seeds)
def test_a_nan_embedding_row_reaches_exactly_the_positions_that_use_it(ids, row, seed):
    w = np.random.default_rng(seed).standard_normal((4, 2))
    w[row, 0] = math.nan
    for fast in (False, True):
        with fast_if(fast):
            y, (dw,) = forward_backward(lambda t: F.embedding(ids, t), [w], seed)
        np.testing.assert_array_equal(np.isnan(y[..., 0]), ids == row)
        assert np.isfinite(dw).all()


# ----- tensor.fast's kernels at the same edges ---------------------------------------------
def fast_case(op, R, C, data):
    """(function, arrays) for a fast kernel's op on R rows of C: edge values, R or C may be 0."""
    x = data.draw(grid((R, C)), label="x")
    if op == "gelu":
        return F.gelu, [x]
    if op == "layer_norm":
        return F.layer_norm, [x] + [data.draw(grid((C,)), label=name) for name in "wb"]
    if op == "cross_entropy":
        t = data.draw(hnp.arrays(np.int64, (R,), elements=st.sampled_from([-100, *range(C)])),
                      label="targets")
        return (lambda s: F.cross_entropy(s, t)), [x]
    if op == "attention":
        L, causal = data.draw(st.integers(0, 3), label="L"), data.draw(st.booleans(), label="c")
        k, v = (data.draw(grid((1, 1, L, C)), label=name) for name in "kv")
        return ((lambda *t: F.scaled_dot_product_attention(*t, is_causal=causal)),
                [x[None, None], k, v])
    ids = data.draw(hnp.arrays(np.int64, (R,), elements=st.integers(0, 3)), label="ids")
    return (lambda w: F.embedding(ids, w)), [data.draw(grid((4, C)), label="w")]


@given(R=st.integers(0, 3), C=st.integers(0, 3), data=st.data(), seed=seeds)
def test_fast_kernels_give_the_reference_results_at_the_edges(R, C, data, seed):
    """+-inf, NaN, ties and empty axes: each fast kernel gives the reference's values, NaN
    for NaN, infinity for infinity, and the same error where the reference refuses."""
    for op in ("gelu", "layer_norm", "cross_entropy", "attention", "embedding"):
        fn, arrays = fast_case(op, R, C, data)
        results = []
        for fast in (False, True):
            with fast_if(fast):
                try:
                    results.append(forward_backward(fn, arrays, seed))
                except (ValueError, IndexError) as error:
                    results.append(f"{type(error).__name__}: {error}")
        reference, kernel = results
        if isinstance(reference, str):
            assert kernel == reference, op
            continue
        assert_same(kernel[0], reference[0], f"{op}: output", rtol=1e-10)
        for i, (got, expected) in enumerate(zip(kernel[1], reference[1])):
            assert_same(got, expected, f"{op}: gradient of input {i}", rtol=1e-10)
