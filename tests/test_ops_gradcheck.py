"""Every op's hand-derived backward against float64 central finite differences.

Each test draws small random shapes (size-1 dims and broadcasting included) and a seed for
well-conditioned values, runs `tensor.finite_differences.gradcheck` with a random upstream gradient,
and compares the forward with NumPy. `check_grad` is the one place that does this; the
per-op tolerances live in TOLERANCES just below, and the completeness tests at the end make
sure the ops checked here are exactly the engine's public ops.
"""
import ast
import math
import types
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tensor
import tensor.functional as F
from strategies import (GRAPH_NAMES, MAX_SIZE, PUBLIC_OPS, away_from_zero, axes_for,
                        broadcast_pairs, distinct, graph_ops, matmul_shapes, normal, positive,
                        reduced_count, rng_for, seeds, shapes, size_of)
from tensor import Tensor
from tensor import embedding as embedding_module
from tensor.gelu import gelu_erf
from tensor.finite_differences import gradcheck

erf = np.vectorize(math.erf)   # the reference needs no SciPy (not a dependency)

# (atol, rtol) per op for |analytic - numeric| <= atol + rtol * |numeric|, elementwise.
# Central differences in float64 (eps = 1e-6) are good to about 1e-9 here: over 1,000
# examples per op, the largest atol any op needed was 1e-9 (first group, with rtol 1e-7)
# and 2.6e-9 (second group: transcendental forward math, rtol 1e-6). Each bound is ~10x
# that, so a correct backward passes and a wrong one (a missing term, a wrong axis) fails.
TOLERANCES = {
    "add": (1e-8, 1e-7), "sub": (1e-8, 1e-7), "mul": (1e-8, 1e-7), "div": (1e-8, 1e-7),
    "neg": (1e-8, 1e-7), "log": (1e-8, 1e-7), "tanh": (1e-8, 1e-7), "sqrt": (1e-8, 1e-7),
    "relu": (1e-8, 1e-7), "sum": (1e-8, 1e-7), "mean": (1e-8, 1e-7), "max": (1e-8, 1e-7),
    "var": (1e-8, 1e-7), "reshape": (1e-8, 1e-7), "transpose": (1e-8, 1e-7),
    "permute": (1e-8, 1e-7), "getitem": (1e-8, 1e-7), "masked_fill": (1e-8, 1e-7),
    "cat": (1e-8, 1e-7), "stack": (1e-8, 1e-7), "split": (1e-8, 1e-7),
    "matmul": (1e-8, 1e-7), "linear": (1e-8, 1e-7), "lora_linear": (1e-8, 1e-7),
    "softmax": (1e-8, 1e-7),
    "embedding": (1e-8, 1e-7), "dropout": (1e-8, 1e-7),
    "scaled_dot_product_attention": (1e-8, 1e-7),
    "exp": (3e-8, 1e-6), "pow": (3e-8, 1e-6), "log_softmax": (3e-8, 1e-6),
    "layer_norm": (3e-8, 1e-6), "gelu": (3e-8, 1e-6), "gelu_erf": (3e-8, 1e-6),
    "cross_entropy": (3e-8, 1e-6),
}

COVERED = set()   # filled by @covers: the ops that have a gradcheck test below


def covers(*ops):
    """Record that the decorated test gradchecks these ops (see the completeness tests)."""
    def register(test):
        COVERED.update(ops)
        return test
    return register


def check_grad(op, fn, inputs, rng, reference=None):
    """Gradcheck `fn` with op's tolerances and a random upstream gradient.

    Also proves the check is about `op` (its node is in fn's graph) and not vacuous (some
    numeric gradient is nonzero), that backward leaves the gradient it is given untouched
    (in a diamond the same array reaches several ops), and, given a NumPy `reference`,
    that the forward agrees. Integer inputs (ids, targets) pass through as int Tensors.
    """
    atol, rtol = TOLERANCES[op]
    floats = [np.asarray(x).dtype.kind == "f" for x in inputs]
    tensors = [Tensor(x, requires_grad=f, dtype=np.float64 if f else None)
               for x, f in zip(inputs, floats)]
    out = fn(*tensors)
    graph_name = GRAPH_NAMES.get(op, op)
    assert graph_name in graph_ops(out), f"{graph_name} is not in the graph it should check"
    if reference is not None:
        np.testing.assert_allclose(out.numpy(), reference(*inputs), rtol=1e-12, atol=1e-12,
                                   err_msg=f"{op}: forward differs from NumPy")
    upstream = rng.standard_normal(out.shape)
    sent = np.array(upstream)
    out.backward(sent)
    np.testing.assert_array_equal(sent, upstream, err_msg=f"{op}: backward changed its dy")
    result = gradcheck(fn, inputs, upstream=upstream, atol=atol, rtol=rtol)
    assert result.ok, f"{op}: analytic gradient != numeric\n{result.report()}"
    assert any(np.any(n != 0) for n in result.numeric), f"{op}: every gradient is 0"
    return result


# ----- elementwise ------------------------------------------------------------------------
# op -> (function of two operands, values for a, values for b); works on arrays too.
BINARY = {
    "add": (lambda a, b: a + b, normal, normal),
    "sub": (lambda a, b: a - b, normal, normal),
    "mul": (lambda a, b: a * b, normal, normal),
    "div": (lambda a, b: a / b, normal, lambda rng, s: away_from_zero(rng, s, low=0.5)),
    "pow": (lambda a, b: a ** b, positive, normal),          # tensor exponent
}


@covers(*BINARY)
@pytest.mark.parametrize("op", BINARY)
@given(pair=broadcast_pairs(), seed=seeds)
@example(pair=((2, 1, 3), (4, 1)), seed=0)
def test_binary_op_gradients_with_broadcasting(op, pair, seed):
    """Both operands get gradients summed back over the axes they were broadcast along."""
    fn, values_a, values_b = BINARY[op]
    rng = rng_for(seed)
    a, b = values_a(rng, pair[0]), values_b(rng, pair[1])
    check_grad(op, fn, [a, b], rng, reference=fn)


@pytest.mark.parametrize("op", BINARY)
@given(shape=shapes(), seed=seeds, scalar_on_left=st.booleans())
def test_binary_op_gradients_with_a_python_scalar_operand(op, shape, seed, scalar_on_left):
    """2 - t, t / 2, 2 ** t...: the reflected operators reach the same op and backward."""
    fn, values_a, values_b = BINARY[op]
    rng = rng_for(seed)
    if scalar_on_left:
        c = float(positive(rng, ()) if op == "pow" else away_from_zero(rng, ()))
        x = values_b(rng, shape)
        check_grad(op, lambda t: fn(c, t), [x], rng, reference=lambda x: fn(c, x))
    else:
        c = float(away_from_zero(rng, (), low=0.5))
        x = values_a(rng, shape)
        check_grad(op, lambda t: fn(t, c), [x], rng, reference=lambda x: fn(x, c))


@given(shape=shapes(), seed=seeds,
       exponent=st.sampled_from([-2.0, -0.5, 0.5, 1.0, 2.0, 3.0])
       | st.floats(-3, 3, allow_nan=False))
def test_pow_with_a_scalar_exponent(shape, seed, exponent):
    rng = rng_for(seed)
    assume(abs(exponent) > 0.05)                    # a ** 0 is constant: nothing to check
    x = positive(rng, shape)
    check_grad("pow", lambda t: t ** exponent, [x], rng, reference=lambda x: x ** exponent)


@given(shape=shapes(), seed=seeds, exponent=st.sampled_from([2, 3, 4]))
def test_pow_with_an_integer_exponent_on_negative_bases(shape, seed, exponent):
    """da = b a^(b-1) must hold for a < 0 too when the exponent is an integer."""
    rng = rng_for(seed)
    x = away_from_zero(rng, shape)
    check_grad("pow", lambda t: t ** exponent, [x], rng, reference=lambda x: x ** exponent)


def positive_first(rng, shape):
    """Away from relu's kink, with at least one input above it (else every gradient is 0)."""
    x = away_from_zero(rng, shape)
    x.flat[0] = abs(x.flat[0])
    return x


# op -> (Tensor function, NumPy function, values)
UNARY = {
    "neg": (lambda t: -t, np.negative, normal),
    "exp": (lambda t: t.exp(), np.exp, normal),
    "log": (lambda t: t.log(), np.log, positive),
    "tanh": (lambda t: t.tanh(), np.tanh, lambda rng, s: normal(rng, s, scale=1.5)),
    "sqrt": (lambda t: t.sqrt(), np.sqrt, positive),
    "relu": (lambda t: t.relu(), lambda x: np.maximum(x, 0), positive_first),
}


@covers(*UNARY)
@pytest.mark.parametrize("op", UNARY)
@given(shape=shapes(), seed=seeds)
def test_unary_op_gradients(op, shape, seed):
    fn, reference, values = UNARY[op]
    rng = rng_for(seed)
    check_grad(op, fn, [values(rng, shape)], rng, reference=reference)


# ----- reductions -------------------------------------------------------------------------
@covers("sum", "mean", "max")
@pytest.mark.parametrize("op", ["sum", "mean", "max"])
@given(shape=shapes(), seed=seeds, keepdims=st.booleans(), data=st.data())
def test_reduction_gradients(op, shape, seed, keepdims, data):
    """Axis None, int, tuple, negative; keepdims both ways. max sees no near-ties."""
    axis = data.draw(axes_for(len(shape)), label="axis")
    rng = rng_for(seed)
    x = distinct(rng, shape) if op == "max" else normal(rng, shape)
    check_grad(op, lambda t: getattr(t, op)(axis=axis, keepdims=keepdims), [x], rng,
               reference=lambda x: getattr(np, op)(x, axis=axis, keepdims=keepdims))


@covers("var")
@given(shape=shapes(), seed=seeds, keepdims=st.booleans(), ddof=st.sampled_from([0, 1]),
       data=st.data())
def test_var_gradient(shape, seed, keepdims, ddof, data):
    axis = data.draw(axes_for(len(shape)), label="axis")
    assume(reduced_count(shape, axis) >= 2)        # one element: var is 0, nothing to check
    rng = rng_for(seed)
    check_grad("var", lambda t: t.var(axis=axis, keepdims=keepdims, ddof=ddof),
               [normal(rng, shape)], rng,
               reference=lambda x: np.var(x, axis=axis, keepdims=keepdims, ddof=ddof))


# ----- movement ---------------------------------------------------------------------------
def divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def reshape_targets(draw, n):
    """A shape with n elements, possibly with one side given as -1."""
    dims, rest = [], n
    for _ in range(draw(st.integers(0, 2))):
        d = draw(st.sampled_from(divisors(rest)))
        dims.append(d)
        rest //= d
    dims.append(rest)
    if draw(st.booleans()):
        dims[draw(st.integers(0, len(dims) - 1))] = -1
    return tuple(draw(st.permutations(dims)))


@covers("reshape")
@given(shape=shapes(), seed=seeds, as_ints=st.booleans(), data=st.data())
def test_reshape_gradient(shape, seed, as_ints, data):
    """reshape((2, 3)) and reshape(2, 3), with -1 inferred."""
    target = data.draw(reshape_targets(size_of(shape)), label="target")
    rng = rng_for(seed)
    fn = (lambda t: t.reshape(*target)) if as_ints else (lambda t: t.reshape(target))
    check_grad("reshape", fn, [normal(rng, shape)], rng,
               reference=lambda x: x.reshape(target))


@covers("transpose")
@given(shape=shapes(min_dims=1), seed=seeds, data=st.data())
def test_transpose_gradient(shape, seed, data):
    axis = st.integers(-len(shape), len(shape) - 1)
    ax1, ax2 = data.draw(axis, label="ax1"), data.draw(axis, label="ax2")
    rng = rng_for(seed)
    check_grad("transpose", lambda t: t.transpose(ax1, ax2), [normal(rng, shape)], rng,
               reference=lambda x: np.swapaxes(x, ax1, ax2))


@covers("permute")
@given(shape=shapes(min_dims=1), seed=seeds, as_ints=st.booleans(), data=st.data())
def test_permute_gradient(shape, seed, as_ints, data):
    ndim = len(shape)
    order = data.draw(st.permutations(range(ndim)), label="order")
    axes = tuple(ax - ndim if data.draw(st.booleans()) else ax for ax in order)
    rng = rng_for(seed)
    fn = (lambda t: t.permute(*axes)) if as_ints else (lambda t: t.permute(axes))
    check_grad("permute", fn, [normal(rng, shape)], rng,
               reference=lambda x: np.transpose(x, axes))


def as_tensor_index(index):
    """The same index with every integer array inside it wrapped in an int Tensor."""
    wrap = (lambda i: Tensor(i) if isinstance(i, np.ndarray) else i)
    return tuple(wrap(i) for i in index) if isinstance(index, tuple) else wrap(index)


@covers("getitem")
@given(shape=shapes(min_dims=1), seed=seeds, data=st.data())
def test_getitem_gradient_with_basic_indices(shape, seed, data):
    """Ints (negative too), slices with steps, None and ...: each element picked at most once."""
    index = data.draw(hnp.basic_indices(shape, allow_newaxis=True, allow_ellipsis=True),
                      label="index")
    assume(np.empty(shape)[index].size > 0)
    rng = rng_for(seed)
    check_grad("getitem", lambda t: t[index], [normal(rng, shape)], rng,
               reference=lambda x: x[index])


@given(shape=shapes(min_dims=1), seed=seeds, use_tensors=st.booleans(), data=st.data())
def test_getitem_gradient_with_integer_array_indices(shape, seed, use_tensors, data):
    """Integer arrays (or int Tensors) select some elements several times: their gradients
    must add up. The first and last picks are made the same element to be sure of one."""
    index = data.draw(hnp.integer_array_indices(
        shape, result_shape=hnp.array_shapes(min_dims=1, max_dims=2, max_side=4)),
        label="index")
    for component in index:
        component.flat[-1] = component.flat[0]                 # a repeated pick
    used = as_tensor_index(index) if use_tensors else index
    rng = rng_for(seed)
    check_grad("getitem", lambda t: t[used], [normal(rng, shape)], rng,
               reference=lambda x: x[index])


@given(shape=shapes(min_dims=2), seed=seeds, picks=st.lists(st.integers(-4, 3), min_size=1,
                                                                max_size=5), data=st.data())
def test_getitem_gradient_with_an_index_list_and_slices(shape, seed, picks, data):
    """A list of rows (repeats allowed) then a basic index on the remaining axes."""
    picks = [p % shape[0] for p in picks]
    rest = data.draw(hnp.basic_indices(shape[1:], allow_newaxis=False, allow_ellipsis=False),
                     label="rest")
    rest = rest if isinstance(rest, tuple) else (rest,)
    index = (picks,) + rest
    assume(np.empty(shape)[index].size > 0)
    rng = rng_for(seed)
    check_grad("getitem", lambda t: t[index], [normal(rng, shape)], rng,
               reference=lambda x: x[index])


@covers("masked_fill")
@given(shape=shapes(), seed=seeds, mask_as_tensor=st.booleans(), data=st.data())
def test_masked_fill_gradient_with_a_broadcast_mask(shape, seed, mask_as_tensor, data):
    """Filled places get no gradient; the mask may broadcast (and even widen the output)."""
    mask_shape = data.draw(hnp.broadcastable_shapes(shape, max_side=4), label="mask_shape")
    assume(size_of(np.broadcast_shapes(shape, mask_shape)) <= 2 * MAX_SIZE)
    rng = rng_for(seed)
    mask = np.asarray(rng.random(mask_shape) < 0.5)
    mask.flat[0] = False                                       # some gradient gets through
    value = float(rng.standard_normal())
    arg = Tensor(mask) if mask_as_tensor else mask
    check_grad("masked_fill", lambda t: t.masked_fill(arg, value), [normal(rng, shape)], rng,
               reference=lambda x: np.where(mask, value, x))


@covers("cat")
@given(shape=shapes(min_dims=1), seed=seeds, data=st.data())
def test_cat_gradient(shape, seed, data):
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    lengths = data.draw(st.lists(st.integers(1, 3), min_size=2, max_size=3), label="lengths")
    rng = rng_for(seed)
    parts = [normal(rng, shape[:axis % ndim] + (n,) + shape[axis % ndim + 1:])
             for n in lengths]
    check_grad("cat", lambda *ts: Tensor.cat(ts, axis=axis), parts, rng,
               reference=lambda *xs: np.concatenate(xs, axis=axis))


@covers("stack")
@given(shape=shapes(max_dims=2), seed=seeds, count=st.integers(1, 3), data=st.data())
def test_stack_gradient(shape, seed, count, data):
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)), label="axis")
    rng = rng_for(seed)
    parts = [normal(rng, shape) for _ in range(count)]
    check_grad("stack", lambda *ts: Tensor.stack(ts, axis=axis), parts, rng,
               reference=lambda *xs: np.stack(xs, axis=axis))


@st.composite
def split_sizes(draw, n):
    """An int piece size (the last piece may be shorter) or a list of sizes adding to n."""
    if draw(st.booleans()):
        return draw(st.integers(1, n))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1))) if n > 1 else ())
    bounds = [0, *cuts, n]
    return [hi - lo for lo, hi in zip(bounds, bounds[1:])]


@covers("split")
@given(shape=shapes(min_dims=1), seed=seeds, data=st.data())
def test_split_gradient(shape, seed, data):
    """The pieces are scaled by 1, 2, 3... and joined in reverse, so each piece's gradient
    is distinct; the pieces themselves must equal np.split's."""
    ndim = len(shape)
    axis = data.draw(st.integers(-ndim, ndim - 1), label="axis")
    size = data.draw(split_sizes(shape[axis]), label="size")
    n = shape[axis]
    sizes = [size] * (n // size) + [n % size] * (n % size > 0) if isinstance(size, int) \
        else size
    rng = rng_for(seed)
    x = normal(rng, shape)
    expected = np.split(x, np.cumsum(sizes)[:-1], axis=axis)
    pieces = Tensor(x, dtype=np.float64).split(size, axis=axis)
    assert len(pieces) == len(expected)
    for piece, want in zip(pieces, expected):
        np.testing.assert_array_equal(piece.numpy(), want)

    def scaled_reversed(parts, join):
        return join([p * (k + 1) for k, p in enumerate(parts)][::-1], axis=axis)
    check_grad("split", lambda t: scaled_reversed(t.split(size, axis=axis), Tensor.cat),
               [x], rng,
               reference=lambda x: scaled_reversed(expected, np.concatenate))


# ----- matmul and linear ------------------------------------------------------------------
@covers("matmul")
@given(pair=matmul_shapes(), seed=seeds)
@example(pair=((2, 1, 3, 4), (5, 4, 2)), seed=1)
@example(pair=((4,), (4,)), seed=2)
@example(pair=((4,), (2, 4, 3)), seed=3)
@example(pair=((2, 3, 4), (4,)), seed=4)
@example(pair=((3, 4), (2, 4, 5)), seed=5)
def test_matmul_gradient(pair, seed):
    """2-D, batched, broadcast batch dims and 1-D operands, as np.matmul defines them."""
    rng = rng_for(seed)
    a, b = normal(rng, pair[0]), normal(rng, pair[1])
    check_grad("matmul", lambda x, y: x @ y, [a, b], rng, reference=np.matmul)


@covers("linear")
@given(lead=shapes(max_dims=2, max_side=3), n_in=st.integers(1, 4), n_out=st.integers(1, 4),
       with_bias=st.booleans(), seed=seeds)
def test_linear_gradient(lead, n_in, n_out, with_bias, seed):
    rng = rng_for(seed)
    inputs = [normal(rng, lead + (n_in,)), normal(rng, (n_out, n_in))]
    if with_bias:
        inputs.append(normal(rng, (n_out,)))
    check_grad("linear", F.linear, inputs, rng,
               reference=lambda x, w, b=0.0: x @ w.T + b)


@covers("lora_linear")
@given(lead=shapes(max_dims=2, max_side=3), n_in=st.integers(1, 4), n_out=st.integers(1, 4),
       rank=st.integers(1, 4), with_bias=st.booleans(), seed=seeds)
def test_lora_linear_gradient(lead, n_in, n_out, rank, with_bias, seed):
    """Every input trainable here; frozen W and b (LoRA's case) are in tests/test_lora.py."""
    rng = rng_for(seed)
    scale = float(rng.uniform(0.25, 4.0))                  # alpha / r
    x, w, b = normal(rng, lead + (n_in,)), normal(rng, (n_out, n_in)), normal(rng, (n_out,))
    a, bb = normal(rng, (rank, n_in)), normal(rng, (n_out, rank))
    if with_bias:
        check_grad("lora_linear", lambda *t: F.lora_linear(*t, scale), [x, w, b, a, bb], rng,
                   reference=lambda x, w, b, a, bb: x @ w.T + b + scale * (x @ a.T) @ bb.T)
    else:
        check_grad("lora_linear", lambda x, w, a, bb: F.lora_linear(x, w, None, a, bb, scale),
                   [x, w, a, bb], rng,
                   reference=lambda x, w, a, bb: x @ w.T + scale * (x @ a.T) @ bb.T)


# ----- fused ops --------------------------------------------------------------------------
def np_log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


@covers("softmax", "log_softmax")
@pytest.mark.parametrize("op", ["softmax", "log_softmax"])
@given(shape=shapes(min_dims=1), seed=seeds, data=st.data())
def test_softmax_gradients_along_any_axis(op, shape, seed, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    assume(shape[axis] > 1)               # softmax of one element is constant 1
    rng = rng_for(seed)
    reference = (lambda x: np.exp(np_log_softmax(x, axis))) if op == "softmax" \
        else (lambda x: np_log_softmax(x, axis))
    check_grad(op, lambda t: getattr(F, op)(t, axis=axis), [normal(rng, shape, 2.0)], rng,
               reference=reference)


@covers("layer_norm")
@given(lead=shapes(max_dims=2), width=st.integers(2, 6),
       affine=st.sampled_from(["weight and bias", "weight", "bias", "neither"]), seed=seeds)
def test_layer_norm_gradient(lead, width, affine, seed):
    assume(size_of(lead) * width <= 60)
    rng = rng_for(seed)
    inputs = [normal(rng, lead + (width,), 2.0) + normal(rng, lead + (1,))]
    if "weight" in affine:
        inputs.append(normal(rng, (width,)))
    if "bias" in affine:
        inputs.append(normal(rng, (width,)))

    def fn(x, *params):
        weight = params[0] if "weight" in affine else None
        bias = params[-1] if "bias" in affine else None
        return F.layer_norm(x, weight, bias)

    def reference(x, *params):
        centered = x - x.mean(axis=-1, keepdims=True)
        y = centered / np.sqrt((centered ** 2).mean(axis=-1, keepdims=True) + 1e-5)
        y = y * params[0] if "weight" in affine else y
        return y + params[-1] if "bias" in affine else y
    check_grad("layer_norm", fn, inputs, rng, reference=reference)


def np_gelu(x, approximate):
    if approximate == "none":
        return 0.5 * x * (1 + erf(x / np.sqrt(2)))   # math.erf, elementwise (no SciPy)
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))


@covers("gelu", "gelu_erf")
@pytest.mark.parametrize("approximate", ["tanh", "none"])
@given(shape=shapes(), seed=seeds)
def test_gelu_gradient_both_forms(approximate, shape, seed):
    """approximate='none' is the erf form, recorded as op gelu_erf (also public directly)."""
    op = "gelu" if approximate == "tanh" else "gelu_erf"
    rng = rng_for(seed)
    check_grad(op, lambda t: F.gelu(t, approximate=approximate), [normal(rng, shape, 2.0)],
               rng, reference=lambda x: np_gelu(x, approximate))


@given(shape=shapes(), seed=seeds)
def test_gelu_erf_called_directly(shape, seed):
    rng = rng_for(seed)
    check_grad("gelu_erf", gelu_erf, [normal(rng, shape, 2.0)], rng,
               reference=lambda x: np_gelu(x, "none"))


# The embedding backward has a one-hot matmul path for small vocabularies and a sorted
# scatter-add above this many rows: the tests below draw vocabularies on both sides.
LARGE_VOCAB = getattr(embedding_module, "ONE_HOT_MAX_ROWS", 1024) + 1
vocabularies = st.integers(1, 6) | st.integers(LARGE_VOCAB, LARGE_VOCAB + 40)


@covers("embedding")
@given(vocab=vocabularies, width=st.integers(1, 4), ids_shape=shapes(min_dims=1, max_dims=2),
       ids_as_tensor=st.booleans(), seed=seeds)
def test_embedding_gradient_with_repeated_ids(vocab, width, ids_shape, ids_as_tensor, seed):
    """Rows picked several times collect the sum of their gradients; ids come as an int
    array (closed over) or an int Tensor (passed through gradcheck unchanged). A large
    vocabulary (over a thousand rows, one column) is the one input here above 60 elements."""
    if vocab >= LARGE_VOCAB:
        width = 1
    rng = rng_for(seed)
    ids = rng.integers(0, vocab, ids_shape)
    ids.flat[-1] = ids.flat[0]                                  # at least one repeat
    weight = normal(rng, (vocab, width))
    if ids_as_tensor:
        check_grad("embedding", lambda w, i: F.embedding(i, w), [weight, ids], rng,
                   reference=lambda w, i: w[i])
    else:
        check_grad("embedding", lambda w: F.embedding(ids, w), [weight], rng,
                   reference=lambda w: w[ids])


def np_cross_entropy(logits, targets, ignore_index):
    logp = np_log_softmax(logits.reshape(-1, logits.shape[-1]), axis=-1)
    t = targets.reshape(-1)
    keep = t != ignore_index
    return -logp[keep, t[keep]].mean()


@covers("cross_entropy")
@given(lead=st.sampled_from([(1,), (3,), (6,), (1, 1), (2, 3), (3, 2)]),
       vocab=st.integers(2, 6), ignore_index=st.sampled_from([-1, -100]),
       targets_as_tensor=st.booleans(), seed=seeds)
def test_cross_entropy_gradient_with_ignored_rows(lead, vocab, ignore_index,
                                                  targets_as_tensor, seed):
    """(N, V) and (B, T, V) logits; about a third of the rows carry ignore_index."""
    rng = rng_for(seed)
    logits = normal(rng, lead + (vocab,), 2.0)
    targets = rng.integers(0, vocab, lead)
    targets[rng.random(lead) < 0.35] = ignore_index
    targets.flat[0] = 0                                         # at least one kept row
    if targets_as_tensor:
        check_grad("cross_entropy", lambda x, t: F.cross_entropy(x, t, ignore_index),
                   [logits, targets], rng,
                   reference=lambda x, t: np_cross_entropy(x, t, ignore_index))
    else:
        check_grad("cross_entropy", lambda x: F.cross_entropy(x, targets, ignore_index),
                   [logits], rng,
                   reference=lambda x: np_cross_entropy(x, targets, ignore_index))


@covers("dropout")
@given(shape=shapes(min_dims=1), p=st.floats(0.05, 0.9), mask_seed=seeds, seed=seeds)
def test_dropout_gradient_with_a_fixed_mask(shape, p, mask_seed, seed):
    """manual_seed inside the function: every finite-difference evaluation sees one mask."""
    def fn(t):
        tensor.manual_seed(mask_seed)
        return F.dropout(t, p)
    rng = rng_for(seed)
    x = away_from_zero(rng, shape)
    kept = fn(Tensor(x, dtype=np.float64)).numpy() != 0
    assume(kept.any())
    check_grad("dropout", fn, [x], rng,
               reference=lambda x: np.where(kept, x / (1 - p), 0.0))


def np_attention(q, k, v, is_causal, offset, keep=None):
    scores = q @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    T, L = q.shape[-2], k.shape[-2]
    future = np.arange(L)[None, :] > np.arange(T)[:, None] + offset
    scores = np.where(future, -np.inf, scores) if is_causal else scores
    weights = np.exp(np_log_softmax(scores, axis=-1))
    return (weights if keep is None else weights * keep) @ v


@covers("scaled_dot_product_attention")
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@given(batch=st.sampled_from([(1,), (2,), (1, 2), (2, 1)]), queries=st.integers(1, 3),
       keys=st.integers(1, 5), head_size=st.integers(1, 3), is_causal=st.booleans(),
       mask_seed=seeds, seed=seeds, data=st.data())
def test_scaled_dot_product_attention_gradient(batch, queries, keys, head_size, is_causal,
                                               dropout_p, mask_seed, seed, data):
    """q (B, nh, T, hs), k and v (B, nh, L, hs); causal with any offset of the first query
    among the keys (a KV cache), or not; with dropout on the weights under a fixed seed.
    (The fast kernel's pieces of query rows are checked in tests/test_fast_kernels.py.)"""
    offset = data.draw(st.integers(0, keys), label="offset")

    def fn(q, k, v):
        tensor.manual_seed(mask_seed)
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, offset=offset,
                                              dropout_p=dropout_p, training=dropout_p > 0)
    rng = rng_for(seed)
    q = normal(rng, batch + (queries, head_size), 1.5)
    k, v = (normal(rng, batch + (keys, head_size), 1.5) for _ in range(2))
    keep = None
    if dropout_p:
        tensor.manual_seed(mask_seed)
        draw = tensor.backend.generator("cpu").random(batch + (queries, keys))
        keep = (draw >= dropout_p) / (1 - dropout_p)
        assume(np.any(np_attention(q, k, v, is_causal, offset, keep) != 0))  # not all dropped
    check_grad("scaled_dot_product_attention", fn, [q, k, v], rng,
               reference=lambda q, k, v: np_attention(q, k, v, is_causal, offset, keep))


# ----- against PyTorch (float64), where it is installed ----------------------------------
def torch_cases(torch):
    """name -> build(rng) -> (our function, torch's function, float inputs). Both functions
    take one tensor per input; integer ids and targets are closed over."""
    tf = torch.nn.functional

    def softmax(rng):
        return (lambda x: F.softmax(x, axis=1), lambda x: tf.softmax(x, dim=1),
                [normal(rng, (3, 4, 2), 2.0)])

    def log_softmax(rng):
        return (lambda x: F.log_softmax(x, axis=-1), lambda x: tf.log_softmax(x, dim=-1),
                [normal(rng, (2, 3, 5), 2.0)])

    def layer_norm(rng):
        return (F.layer_norm, lambda x, w, b: tf.layer_norm(x, (5,), w, b, eps=1e-5),
                [normal(rng, (2, 3, 5), 2.0), normal(rng, (5,)), normal(rng, (5,))])

    def gelu(approximate):
        return lambda rng: (lambda x: F.gelu(x, approximate=approximate),
                            lambda x: tf.gelu(x, approximate=approximate),
                            [normal(rng, (4, 6), 2.0)])

    def cross_entropy(rng):
        targets = rng.integers(0, 7, (2, 4))
        targets[0, 1] = targets[1, 3] = -100
        flat = torch.from_numpy(targets.reshape(-1))
        return (lambda x: F.cross_entropy(x, targets, ignore_index=-100),
                lambda x: tf.cross_entropy(x.reshape(-1, 7), flat, ignore_index=-100),
                [normal(rng, (2, 4, 7), 2.0)])

    def embedding(rng):
        ids = np.array([[0, 3, 3], [5, 0, 3]])
        return (lambda w: F.embedding(ids, w), lambda w: tf.embedding(torch.from_numpy(ids), w),
                [normal(rng, (6, 4))])

    def matmul(rng):
        return (lambda a, b: a @ b, lambda a, b: a @ b,
                [normal(rng, (2, 1, 3, 4)), normal(rng, (5, 4, 2))])

    def attention(rng):
        return (F.scaled_dot_product_attention,
                lambda q, k, v: tf.scaled_dot_product_attention(q, k, v, is_causal=True),
                [normal(rng, (2, 2, 3, 4)) for _ in range(3)])

    return {"softmax": softmax, "log_softmax": log_softmax, "layer_norm": layer_norm,
            "gelu": gelu("tanh"), "gelu_erf": gelu("none"), "cross_entropy": cross_entropy,
            "embedding": embedding, "matmul": matmul, "scaled_dot_product_attention": attention}


TORCH_CHECKED = ["softmax", "log_softmax", "layer_norm", "gelu", "gelu_erf", "cross_entropy",
                 "embedding", "matmul", "scaled_dot_product_attention"]


@pytest.mark.parametrize("op", TORCH_CHECKED)
@given(seed=seeds)
def test_forward_and_gradients_match_torch(op, seed):
    torch = pytest.importorskip("torch")
    rng = rng_for(seed)
    ours, theirs, inputs = torch_cases(torch)[op](rng)
    our_inputs = [Tensor(x, requires_grad=True, dtype=np.float64) for x in inputs]
    torch_inputs = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    our_out, torch_out = ours(*our_inputs), theirs(*torch_inputs)
    np.testing.assert_allclose(our_out.numpy(), torch_out.detach().numpy(), rtol=1e-10,
                               atol=1e-12, err_msg=f"{op}: forward differs from torch")
    upstream = rng.standard_normal(our_out.shape)
    our_out.backward(upstream)
    torch_out.backward(torch.from_numpy(np.asarray(upstream)))
    for i, (mine, reference) in enumerate(zip(our_inputs, torch_inputs)):
        np.testing.assert_allclose(mine.grad, reference.grad.numpy(), rtol=1e-9, atol=1e-11,
                                   err_msg=f"{op}: gradient of input {i} differs from torch")


# ----- completeness -----------------------------------------------------------------------
TENSOR_NON_OPS = {"numpy", "item", "tolist", "to", "detach", "astype", "zero_grad",
                  "backward", "shape", "dtype", "ndim", "size", "xp", "T"}
OPERATOR_OPS = {"__add__": "add", "__radd__": "add", "__sub__": "sub", "__rsub__": "sub",
                "__mul__": "mul", "__rmul__": "mul", "__truediv__": "div",
                "__rtruediv__": "div", "__pow__": "pow", "__rpow__": "pow", "__neg__": "neg",
                "__matmul__": "matmul", "__rmatmul__": "matmul", "__getitem__": "getitem"}
NUMERIC_DUNDERS = {f"__{r}{name}__" for r in ("", "r", "i") for name in (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
    "lshift", "rshift")} | {"__neg__", "__pos__", "__abs__", "__invert__", "__getitem__"}


def ops_recorded_by_make():
    """The op names passed to make(data, parents, "name", backward) anywhere in tensor/."""
    names = set()
    for path in Path(tensor.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "make"
                    and len(node.args) >= 3 and isinstance(node.args[2], ast.Constant)):
                names.add(node.args[2].value)
    return names


def tensor_methods_that_are_ops():
    """Tensor's public methods and arithmetic operators, as op names."""
    names = set()
    for name, member in vars(Tensor).items():
        if isinstance(member, types.MemberDescriptorType):       # a __slots__ field
            continue
        if name in NUMERIC_DUNDERS:
            names.add(OPERATOR_OPS.get(name, name))   # an unmapped operator shows as itself
        elif not name.startswith("_") and name not in TENSOR_NON_OPS:
            names.add(name)
    return names


def test_every_public_op_has_a_gradcheck_test_and_nothing_else_does():
    assert COVERED == set(PUBLIC_OPS), (
        f"untested: {sorted(set(PUBLIC_OPS) - COVERED)}; "
        f"not public: {sorted(COVERED - set(PUBLIC_OPS))}")


def test_tolerance_table_has_exactly_one_entry_per_public_op():
    assert set(TOLERANCES) == set(PUBLIC_OPS)
    assert len(PUBLIC_OPS) == len(set(PUBLIC_OPS))
    for op, (atol, rtol) in TOLERANCES.items():
        assert 0 < atol <= 1e-7 and 0 < rtol <= 1e-6, f"{op}: tolerance too loose"


def test_public_op_list_names_every_op_the_engine_defines():
    """Adding an op to tensor/ (a make(...) call, a Tensor method or operator, a name in
    tensor.functional) without adding it to PUBLIC_OPS, and so without a test, fails here."""
    public_name = {graph: op for op, graph in GRAPH_NAMES.items() if op != "split"}
    made = {public_name.get(name, name) for name in ops_recorded_by_make()}
    defined = made | set(F.__all__) | tensor_methods_that_are_ops()
    assert defined - set(PUBLIC_OPS) == set()
    assert set(PUBLIC_OPS) - defined == set(), "PUBLIC_OPS names an op the engine lacks"


def test_completeness_scan_sees_the_ops_it_should():
    """Guard the guard: the source scan must find make() calls and the operator mapping."""
    assert {"add", "matmul", "cross_entropy", "gelu_erf"} <= ops_recorded_by_make()
    assert {"add", "pow", "getitem", "split", "cat"} <= tensor_methods_that_are_ops()
