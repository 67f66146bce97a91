"""Every public op against PyTorch's at the edges: zeros, exact ties, +-inf, NaN, empty axes.

Each test runs a family of ops on the same float64 values (drawn from test_op_edges.EDGES: signed
zeros, small integers and halves that tie, +-inf, NaN) in both libraries, backward with the
same upstream gradient, and asserts the same output and gradients (assert_same: NaN at the
same places, the same infinities, finite values to 1e-12, 1e-10 for the fused ops). Shapes
have sides of 0 and 1. The ops with a fast kernel run with tensor.fast on and off.

Not compared: -0.0 and -inf to the powers +-0.5. IEEE pow gives +inf and 0 for (-0)^-0.5,
(-inf)^-0.5, +0 and +inf for ^0.5; NumPy (for a 0-d or scalar exponent) and PyTorch (for a
scalar one) take shortcuts through sqrt and rsqrt there, which give -0.0, NaN, -inf, and
disagree with pow and with each other. We inherit NumPy's; no program should rely on them.

Where we differ from PyTorch on purpose, the test asserts ours and says why:
- var with N - ddof <= 0, max over an empty axis, cross_entropy with no counted target, and
  attention with a head size of 0 are ValueErrors, not inf/NaN (or an IndexError);
- attention with a NaN query gives NaN in that row (PyTorch's CPU kernel gives 0);
- relu's gradient at NaN is its formula's dy * [NaN > 0] = 0 (PyTorch passes dy);
- split of an empty axis gives no pieces (PyTorch gives one empty piece);
- max shares dy between ties, as torch.amax (torch.max(dim) gives it all to one of them).
"""
import math
from contextlib import nullcontext

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import tensor.functional as F
from strategies import axes_for, reduced_count, seeds
from tensor import Tensor
from tensor.attention import future
from test_op_edges import (EDGES, FINITE, assert_same, fast_if, forward_backward, grid,
                           upstream_for)

torch = pytest.importorskip("torch")
tF = torch.nn.functional
pytestmark = [pytest.mark.filterwarnings("ignore::RuntimeWarning"),   # 0 * inf is the point
              # PyTorch's var of an empty input (an empty output, too) counts N as 0 / 0:
              pytest.mark.filterwarnings("ignore:var\\(\\). degrees of freedom:UserWarning")]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny arrays: PyTorch's thread pool only costs time here (20 ms a call on a busy CPU)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def shapes(min_dims=0, max_dims=3, min_side=0, max_side=3):
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side)


def against_torch(ours, theirs, arrays, seed, what, rtol=1e-12):
    """ours(*Tensors) and theirs(*torch tensors): the same output and the same gradients."""
    y, grads = forward_backward(ours, arrays, seed)
    inputs = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in arrays]
    expected = theirs(*inputs)
    expected.backward(torch.tensor(upstream_for(y.shape, seed)))   # the same dy as ours
    assert_same(y, expected.detach().numpy(), f"{what}: output", rtol)
    for i, (got, t) in enumerate(zip(grads, inputs)):
        want = np.zeros(t.shape) if t.grad is None else t.grad.numpy()
        assert_same(np.zeros(t.shape) if got is None else got, want, f"{what}: d input {i}",
                    rtol)


# ----- elementwise --------------------------------------------------------------------------
BINARY = {"add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
          "div": lambda a, b: a / b, "pow": lambda a, b: a ** b}
UNARY = {"neg": (lambda t: -t, lambda t: -t), "exp": (Tensor.exp, torch.exp),
         "log": (Tensor.log, torch.log), "tanh": (Tensor.tanh, torch.tanh),
         "sqrt": (Tensor.sqrt, torch.sqrt), "relu": (Tensor.relu, torch.relu),
         "gelu": (F.gelu, lambda t: tF.gelu(t, approximate="tanh")),
         "gelu_erf": (lambda t: F.gelu(t, "none"), tF.gelu)}


# Each test runs every op of its family on the drawn inputs (one example, many ops: the
# drawing, not the ops, is what costs time on arrays this small).
@given(pair=hnp.mutually_broadcastable_shapes(num_shapes=2, max_dims=3, min_side=0, max_side=3),
       data=st.data(), seed=seeds)
def test_binary_ops(pair, data, seed):
    """Every pair of edge values, broadcast; pow's 0 ** b has PyTorch's gradients now."""
    a, b = (data.draw(grid(s), label=n) for s, n in zip(pair.input_shapes, "ab"))
    for op, fn in BINARY.items():
        if op == "pow":
            a, b = without_half_powers_of_minus_zero_or_inf(a, b)
        against_torch(fn, fn, [a, b], seed, op)


def without_half_powers_of_minus_zero_or_inf(a, b):
    """(a, b) with the bases -0.0 and -inf set to 1 where b holds +-0.5 (see the docstring)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if (np.abs(b) == 0.5).any():
        a = np.where((a == -math.inf) | ((a == 0) & np.signbit(a)), 1.0, a)
    return a, b


@given(shape=shapes(), data=st.data(), seed=seeds)
def test_unary_ops(shape, data, seed):
    """gelu with and without its fast kernel; relu at NaN: see the next test."""
    x = data.draw(grid(shape), label="x")
    for op, fast in [(op, False) for op in UNARY] + [("gelu", True), ("gelu_erf", True)]:
        with fast_if(fast):
            against_torch(*UNARY[op], [np.where(np.isnan(x), 1.0, x) if op == "relu" else x],
                          seed, f"{op}, fast={fast}")


def test_relu_gradient_at_nan_is_its_formula():
    """Deliberate: da = dy * [a > 0] is 0 at a = NaN (NaN > 0 is false), as the docstring
    says; PyTorch passes dy there (its test is `result <= 0`). The forward is NaN in both,
    so the NaN reaches the loss either way; neither gradient means anything at NaN."""
    y, (da,) = forward_backward(Tensor.relu, [np.array([math.nan, 2.0, 0.0])], np.ones(3))
    assert np.isnan(y[0]) and da.tolist() == [0.0, 1.0, 0.0]


@given(c=st.sampled_from(EDGES), shape=shapes(), data=st.data(), seed=seeds)
def test_operators_with_a_python_number(c, shape, data, seed):
    """t op c and c op t (2 - t, t ** 0.5, 0 ** t...): the same ops with a constant."""
    x = data.draw(grid(shape), label="x")
    for op, fn in BINARY.items():
        base = without_half_powers_of_minus_zero_or_inf(x, c)[0] if op == "pow" else x
        against_torch(lambda t: fn(t, c), lambda t: fn(t, c), [base], seed, f"{op}(t, {c})")
        if op == "pow" and (c == -math.inf or (c == 0 and math.copysign(1, c) < 0)):
            x = np.where(np.abs(x) == 0.5, 1.0, x)
        against_torch(lambda t: fn(c, t), lambda t: fn(c, t), [x], seed, f"{op}({c}, t)")


# ----- reductions ---------------------------------------------------------------------------
REDUCTIONS = {   # op -> (ours, PyTorch's), each (x, axes, keepdims)
    "sum": (lambda t, a, k: t.sum(a, k), lambda t, a, k: t.sum(a, keepdim=k)),
    "mean": (lambda t, a, k: t.mean(a, k), lambda t, a, k: t.mean(a, keepdim=k)),
    "max": (lambda t, a, k: t.max(a, k), lambda t, a, k: t.amax(a, keepdim=k)),
    "min": (lambda t, a, k: -(-t).max(a, k), lambda t, a, k: t.amin(a, keepdim=k)),
    "var": (lambda t, a, k: t.var(a, k, ddof=1), lambda t, a, k: t.var(a, keepdim=k)),
}


@given(shape=shapes(min_dims=1), data=st.data(), keepdims=st.booleans(), seed=seeds)
def test_reductions(shape, data, keepdims, seed):
    """Ties share dy (amax, amin), NaN poisons its slice, empty axes sum to 0 and average to
    NaN. Deliberate: max/min over an empty axis and var with N - ddof <= 0 (here ddof = 1,
    PyTorch's default) are ValueErrors, where PyTorch raises IndexError or returns NaN."""
    x = data.draw(grid(shape), label="x")
    axis = data.draw(axes_for(len(shape)).filter(lambda a: a != ()), label="axis")
    axes = tuple(range(len(shape))) if axis is None else axis
    n = reduced_count(shape, axis)
    for op, (ours, theirs) in REDUCTIONS.items():
        if (op in ("max", "min") and n == 0) or (op == "var" and n <= 1):
            with pytest.raises(ValueError, match="empty set has no maximum|must be positive"):
                ours(Tensor(x), axis, keepdims)
            continue
        against_torch(lambda t: ours(t, axis, keepdims), lambda t: theirs(t, axes, keepdims),
                      [x], seed, op)


# ----- softmax, cross_entropy, layer_norm ---------------------------------------------------
@given(shape=shapes(min_dims=1), data=st.data(), seed=seeds)
def test_softmax_and_log_softmax(shape, data, seed):
    """-inf masks a logit out, a row of -inf or with +inf or NaN is NaN, an empty axis is empty."""
    x = data.draw(grid(shape), label="x")
    axis = data.draw(st.integers(-len(shape), len(shape) - 1), label="axis")
    for op in ("softmax", "log_softmax"):
        against_torch(lambda t: getattr(F, op)(t, axis), lambda t: getattr(tF, op)(t, axis),
                      [x], seed, op, rtol=1e-10)


@given(R=st.integers(1, 4), C=st.integers(1, 4), data=st.data(),
       ignore_index=st.sampled_from([-100, 0, -1]), seed=seeds)
def test_cross_entropy(R, C, data, ignore_index, seed):
    """ignore_index as PyTorch's (default -100, or a class id). Deliberate: with every target
    ignored there is nothing to average, a ValueError; PyTorch returns NaN."""
    x = data.draw(grid((R, C)), label="logits")
    t = data.draw(hnp.arrays(np.int64, (R,), elements=st.sampled_from(
        sorted({ignore_index, *range(C)}))), label="targets")
    for fast in (False, True):
        with fast_if(fast), pytest.raises(ValueError, match="every target equals ignore_index") \
                if (t == ignore_index).all() else nullcontext():
            against_torch(lambda s: F.cross_entropy(s, t, ignore_index),
                          lambda s: tF.cross_entropy(s, torch.tensor(t),
                                                     ignore_index=ignore_index),
                          [x], seed, f"cross_entropy, fast={fast}", rtol=1e-10)


@given(shape=shapes(min_dims=1), affine=st.sampled_from(["none", "weight", "both"]),
       data=st.data(), seed=seeds)
def test_layer_norm(shape, affine, data, seed):
    """Constant rows (var 0: n = 0, rstd = 1/sqrt(eps)), C = 1, C = 0, +-inf and NaN in x.
    Weights stay finite: with an infinite one, whether a gradient is inf or NaN depends on
    how the formula is arranged (PyTorch's kernel arranges it otherwise), and means nothing."""
    C = shape[-1]
    arrays = [data.draw(grid(shape), label="x")]
    arrays += [data.draw(grid((C,), FINITE), label=p)
               for p in ["w", "b"][:("none", "weight", "both").index(affine)]]
    for fast in (False, True):
        with fast_if(fast):
            against_torch(F.layer_norm, lambda x, *wb: tF.layer_norm(x, (C,), *wb, eps=1e-5),
                          arrays, seed, f"layer_norm, fast={fast}", rtol=1e-10)


# ----- products, embedding, attention --------------------------------------------------------
@given(pair=hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=2,
                                              min_side=0, max_side=3),
       data=st.data(), seed=seeds)
def test_matmul(pair, data, seed):
    """1-D operands, batch broadcasting, an inner size of 0 (y = 0), 0 * inf = NaN."""
    a, b = (data.draw(grid(s), label=n) for s, n in zip(pair.input_shapes, "ab"))
    against_torch(lambda s, t: s @ t, lambda s, t: s @ t, [a, b], seed, "matmul")


@given(lead=shapes(max_dims=2), n_in=st.integers(0, 3), n_out=st.integers(0, 3),
       rank=st.integers(1, 2), data=st.data(), seed=seeds)
def test_linear_and_lora_linear(lead, n_in, n_out, rank, data, seed):
    """Against x W^T + b (+ 0.5 (x A^T) B^T in PyTorch's own ops); in or out of size 0."""
    shapes_ = [lead + (n_in,), (n_out, n_in), (n_out,), (rank, n_in), (n_out, rank)]
    arrays = [data.draw(grid(s), label=str(s)) for s in shapes_]
    against_torch(F.linear, tF.linear, arrays[:2], seed, "linear without bias")
    against_torch(F.linear, tF.linear, arrays[:3], seed, "linear")
    against_torch(lambda x, w, b, A, B: F.lora_linear(x, w, b, A, B, 0.5),
                  lambda x, w, b, A, B: tF.linear(x, w, b) + ((x @ A.T) * 0.5) @ B.T,
                  arrays, seed, "lora_linear")


@given(ids=hnp.arrays(np.int64, shapes(min_dims=1, max_dims=2), elements=st.integers(0, 3)),
       C=st.integers(0, 3), data=st.data(), seed=seeds)
def test_embedding(ids, C, data, seed):
    """Repeated ids sum their rows' gradients; no ids, or rows of size 0, give empty outputs."""
    w = data.draw(grid((4, C)), label="weight")
    for fast in (False, True):
        with fast_if(fast):
            against_torch(lambda t: F.embedding(ids, t),
                          lambda t: tF.embedding(torch.tensor(ids), t), [w], seed,
                          f"embedding, fast={fast}")


@given(B=st.integers(0, 2), T=st.integers(0, 3), L=st.integers(0, 3), hs=st.integers(1, 3),
       mode=st.sampled_from(["full", "causal", "kv_cache"]), data=st.data(), seed=seeds)
def test_attention(B, T, L, hs, mode, data, seed):
    """Ties (equal scores: uniform weights), saturated scores (values of 30), T > L, no keys
    (y = 0) or no queries. kv_cache: queries at offset L - T among the keys, the mask given
    to PyTorch explicitly. Only finite values: NaN is the next test."""
    values = FINITE + (30.0, -30.0)
    q, k, v = (data.draw(grid((B, 2, n, hs), values), label=c) for c, n in zip("qkv", (T, L, L)))
    offset = L - T if mode == "kv_cache" and L >= T else 0
    mask = torch.tensor(~future(T, L, offset)) if mode == "kv_cache" else None
    causal = mode != "full"
    for fast in (False, True):
        with fast_if(fast):
            against_torch(
                lambda *t: F.scaled_dot_product_attention(*t, is_causal=causal, offset=offset),
                lambda *t: tF.scaled_dot_product_attention(*t, attn_mask=mask,
                                                           is_causal=causal and mask is None),
                [q, k, v], seed, f"attention, fast={fast}", rtol=1e-10)


@pytest.mark.parametrize("fast", [False, True])
def test_attention_deliberate_differences(fast):
    """A NaN query gives a NaN row (NaN in, NaN out; PyTorch's CPU kernel writes 0 there),
    the other rows as PyTorch's; a head size of 0 is a ValueError (PyTorch: empty output)."""
    rng = np.random.default_rng(0)
    q, k, v = rng.standard_normal((3, 1, 1, 3, 2))
    q[0, 0, 1, 0] = math.nan
    expected = tF.scaled_dot_product_attention(*map(torch.tensor, (q, k, v)), is_causal=True)
    with fast_if(fast):
        y = F.scaled_dot_product_attention(*(Tensor(a, dtype="float64") for a in (q, k, v)))
        with pytest.raises(ValueError, match="head size 0"):
            F.scaled_dot_product_attention(*(Tensor(np.zeros((1, 1, 2, 0))),) * 3)
    y, expected = y.numpy()[0, 0], expected.numpy()[0, 0]
    assert np.isnan(y[1]).all() and not np.isnan(expected[1]).any()
    assert_same(y[[0, 2]], expected[[0, 2]], "the other rows", 1e-10)


# ----- movement, dropout --------------------------------------------------------------------
MOVEMENT = {   # op -> (ours, PyTorch's), on x of at least 2 dimensions
    "reshape": (lambda t: t.reshape(-1), lambda t: t.reshape(-1)),
    "transpose": (lambda t: t.transpose(0, -1), lambda t: t.transpose(0, -1)),
    "T": (lambda t: t.T, lambda t: t.transpose(-2, -1)),
    "permute": (lambda t: t.permute(-1, *range(t.ndim - 1)),
                lambda t: t.permute(-1, *range(t.ndim - 1))),
    "getitem": (lambda t: t[..., :1, None], lambda t: t[..., :1, None]),
    "getitem_repeats": (lambda t: t[np.array([0, 0, -1])], lambda t: t[[0, 0, -1]]),
    "masked_fill": (lambda t: t.masked_fill(np.eye(*t.shape[-2:], dtype=bool), -math.inf),
                    lambda t: t.masked_fill(torch.eye(*t.shape[-2:], dtype=bool), -math.inf)),
    "cat": (lambda t: Tensor.cat([t, t[:0], t * 2], axis=0),
            lambda t: torch.cat([t, t[:0], t * 2], dim=0)),
    "stack": (lambda t: Tensor.stack([t, -t], axis=-1), lambda t: torch.stack([t, -t], dim=-1)),
    "split": (lambda t: Tensor.cat(t.split(2, axis=-1)[::-1], axis=-1),
              lambda t: torch.cat(t.split(2, dim=-1)[::-1], dim=-1)),
}


@given(shape=shapes(min_dims=2), data=st.data(), seed=seeds)
def test_movement_ops(shape, data, seed):
    """Values move untouched (inf, NaN, -0.0 included); gradients move back (repeats add)."""
    x = data.draw(grid(shape), label="x")
    for op, (ours, theirs) in MOVEMENT.items():
        if (op == "getitem_repeats" and shape[0] == 0) or (op == "split" and shape[-1] == 0):
            continue           # rows 0 and -1 must exist; split of nothing: the next test
        against_torch(ours, theirs, [x], seed, op)


def test_split_of_an_empty_axis_gives_no_pieces():
    """Deliberate: pieces of `size` cover the axis, so 0 elements make 0 pieces (none empty);
    PyTorch returns one empty piece."""
    assert Tensor(np.zeros((2, 0))).split(2, axis=1) == []
    assert len(torch.zeros((2, 0)).split(2, dim=1)) == 1


@given(shape=shapes(), data=st.data(), seed=seeds)
def test_dropout_where_it_draws_no_mask(shape, data, seed):
    """p = 0 or not training: identity; p = 1: all dropped, x * 0 (NaN and inf give NaN)."""
    x = data.draw(grid(shape), label="x")
    for p, training in [(0.0, True), (1.0, True), (0.5, False)]:
        against_torch(lambda t: F.dropout(t, p, training), lambda t: tF.dropout(t, p, training),
                      [x], seed, f"dropout(p={p}, training={training})")
