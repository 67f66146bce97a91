"""tensor/fast/'s kernels equal the reference ops they replace (tensor/gelu.py, layernorm.py,
cross_entropy.py, attention.py): the forward output and every input's gradient, on the
same inputs, with 1 thread and with 2; and the fast kernels give bitwise the same results
whatever the thread count (threads.py promises it: every block is computed the same way
wherever it runs). enable() / disable() / TINYGRAD_GPT_FAST=0 register them or not.

Tolerances: |fast - reference| <= rtol |reference| + atol max(1, max|reference|), float32
rtol = atol = 1e-5 (~80 float32 ulps, eps = 1.2e-7). Fast and reference compute the same
formulas with the operations in another order (the fast GELU builds k x^3 as ((x x) k) x,
the fast attention scales q instead of the scores, the fast layer norm sums with einsum),
so their results round differently: a few ulps for an elementwise result (rtol), and for
a sum over many terms that cancel (attention's dq = s dS k over L keys, layer norm's dw
over every row) a few ulps of the largest terms rather than of the element, hence the
atol relative to the array's scale (upstream gradients are O(1); cross-entropy's is
N_kept, so that dlogits = p - onehot is O(1) too). Measured over 500 examples per kernel:
at most 1.9e-6 of the scale (attention's dq, one head of size 1), 3.5e-7 elsewhere; a
wrong term is O(1). float64 runs the same comparison at rtol 1e-10, atol 1e-12, where
the measured worst is 1e-16: there a wrong piece of keys or a missed mask cannot hide.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tensor
import tensor.fast
from strategies import seeds
from tensor import Tensor, dispatch
from tensor import attention as reference_attention
from tensor import cross_entropy as reference_cross_entropy
from tensor import gelu as reference_gelu
from tensor import layernorm as reference_layernorm
from tensor.fast import attention as fast_attention
from tensor.fast import cross_entropy as fast_cross_entropy
from tensor.fast import gelu as fast_gelu
from tensor.fast import layernorm as fast_layernorm
from tensor.fast import threads

# op name -> (fast kernel, reference op); the optimizer kernels are tested in test_optim.py.
PAIRS = {
    "gelu": (fast_gelu.gelu, reference_gelu.gelu),
    "layer_norm": (fast_layernorm.layer_norm, reference_layernorm.layer_norm),
    "cross_entropy": (fast_cross_entropy.cross_entropy, reference_cross_entropy.cross_entropy),
    "attention": (fast_attention.scaled_dot_product_attention,
                  reference_attention.scaled_dot_product_attention),
}
OPTIMIZER_KERNELS = {"adamw_update_all", "sum_of_squares", "scale_"}
OTHER_KERNELS = {"embedding"}   # integer ids, one thread: tests/test_fast_embedding.py
TOLERANCE = {np.float32: (1e-5, 1e-5), np.float64: (1e-10, 1e-12)}   # (rtol, atol)
BLOCK = threads.BLOCK


@pytest.fixture(autouse=True)
def restore_fast_state():
    """No test here leaks the fast mode, or a thread count, into another."""
    kernels = {name: dispatch.kernel(name, None) for name in dispatch.registered()}
    before = threads.THREADS
    yield
    for name in dispatch.registered():
        dispatch.unregister(name)
    for name, fn in kernels.items():
        dispatch.register(name, fn)
    threads.set_threads(before)


def run(fn, inputs, dtype, seed=0, device="cpu", requires=None, upstream=None):
    """fn(*tensors) and backward with a seeded random upstream gradient (or `upstream`),
    after manual_seed(seed) (dropout's mask): (op name, [output, each input's gradient])."""
    requires = requires or [True] * len(inputs)
    tensors = [Tensor(x, requires_grad=r, dtype=dtype, device=device)
               for x, r in zip(inputs, requires)]
    tensor.manual_seed(seed)
    out = fn(*tensors)
    if upstream is None:
        upstream = np.random.default_rng(seed + 1).standard_normal(out.shape)
    out.backward(np.asarray(upstream, dtype=dtype))
    arrays = [out.data] + [t.grad for t in tensors]
    return out.op, [None if a is None else tensor.backend.to_numpy(a) for a in arrays]


def assert_close(got, expected, dtype, what):
    rtol, atol = TOLERANCE[dtype]
    for i, (g, e) in enumerate(zip(got, expected)):
        name = f"{what}: " + ("output" if i == 0 else f"gradient of input {i - 1}")
        if e is None:
            assert g is None, name
            continue
        assert g.shape == e.shape and g.dtype == e.dtype, f"{name}: {g.shape} {g.dtype}"
        finite = np.abs(e[np.isfinite(e)])
        scale = max(1.0, float(finite.max(initial=0.0)))
        np.testing.assert_allclose(g, e, rtol=rtol, atol=atol * scale, err_msg=name)


def check_kernel(name, fast_fn, reference_fn, inputs, dtype, seed=0, requires=None,
                 upstream=None):
    """The fast kernel on 1 and on 2 threads against the reference; 1 vs 2 bitwise.
    Returns the reference's results."""
    op, expected = run(reference_fn, inputs, dtype, seed, requires=requires, upstream=upstream)
    per_count = []
    for count in (1, 2):
        threads.set_threads(count)
        fast_op, got = run(fast_fn, inputs, dtype, seed, requires=requires, upstream=upstream)
        assert fast_op == op, f"{name}: the fast kernel records {fast_op!r}, not {op!r}"
        assert_close(got, expected, dtype, f"{name}, {count} thread(s)")
        per_count.append(got)
    for i, (one, two) in enumerate(zip(*per_count)):
        assert (one is None and two is None) or np.array_equal(one, two, equal_nan=True), \
            f"{name}: result {i} depends on the thread count"
    return expected


def normal(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


dtypes = st.sampled_from([np.float32, np.float64])
# Each kernel's test runs twice: "small" (sides from 1, one block) and "blocks" (odd sizes
# bigger than a block of threads.BLOCK elements: several blocks, both threads).
sizes = pytest.mark.parametrize("size", ["small", "blocks"])


def test_pairs_name_every_fast_kernel_of_an_op():
    assert set(PAIRS) == set(tensor.fast.OPS) - OPTIMIZER_KERNELS - OTHER_KERNELS


# ----- gelu ---------------------------------------------------------------------------------
@sizes
@given(lead=st.lists(st.integers(1, 3), max_size=2), data=st.data(), dtype=dtypes, seed=seeds)
def test_gelu_matches_the_reference(size, lead, data, dtype, seed):
    if size == "small":
        shape = data.draw(st.one_of(st.just(()), st.tuples(st.integers(1, 9))), label="last")
    else:
        shape = (data.draw(st.integers(BLOCK + 1, 2 * BLOCK + 99), label="last"),)
    shape = tuple(lead) + shape if shape else ()
    x = normal(np.random.default_rng(seed), shape, dtype, 3.0)
    check_kernel("gelu", *PAIRS["gelu"], [x], dtype, seed)


def test_gelu_erf_form_and_bad_argument_are_the_references():
    x = np.linspace(-4, 4, 9)
    check_kernel("gelu_erf", lambda t: fast_gelu.gelu(t, "none"),
                 lambda t: reference_gelu.gelu(t, "none"), [x], np.float64)
    for gelu in PAIRS["gelu"]:
        with pytest.raises(ValueError, match="use 'tanh' \\(GPT-2\\) or 'none' \\(erf\\)"):
            gelu(Tensor(x), approximate="exact")


# ----- layer_norm ---------------------------------------------------------------------------
@sizes
@given(lead=st.lists(st.integers(1, 3), max_size=1), data=st.data(),
       weight=st.sampled_from(["none", "grad", "frozen"]),
       bias=st.sampled_from(["none", "grad", "frozen"]), dtype=dtypes, seed=seeds)
def test_layer_norm_matches_the_reference(size, lead, data, weight, bias, dtype, seed):
    """With and without weight and bias, each needing a gradient or not; widths of 1 (var 0)
    upward; rows in several blocks (rows_per_block(385) = 170, rows_per_block(1000) = 65)."""
    if size == "small":
        rows, width = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 9))
    else:
        rows, width = data.draw(st.integers(171, 400)), data.draw(st.sampled_from([385, 1000]))
    rng = np.random.default_rng(seed)
    inputs, requires = [normal(rng, tuple(lead) + (rows, width), dtype, 2.0)], [True]
    for kind in (weight, bias):
        if kind != "none":
            inputs.append(normal(rng, (width,), dtype))
            requires.append(kind == "grad")

    def with_kernel(layer_norm):
        def fn(x, *affine):
            affine = list(affine)
            w = affine.pop(0) if weight != "none" else None
            b = affine.pop(0) if bias != "none" else None
            return layer_norm(x, w, b)
        return fn
    fast, reference = PAIRS["layer_norm"]
    check_kernel("layer_norm", with_kernel(fast), with_kernel(reference), inputs, dtype, seed,
                 requires)


def test_layer_norm_rejects_the_same_bad_weight():
    x, w = Tensor(np.ones((2, 4))), Tensor(np.ones(3))
    messages = []
    for layer_norm in PAIRS["layer_norm"]:
        with pytest.raises(ValueError, match="expected \\(4,\\)") as error:
            layer_norm(x, w)
        messages.append(str(error.value))
    assert messages[0] == messages[1]


# ----- cross_entropy ------------------------------------------------------------------------
@sizes
@given(lead=st.lists(st.integers(1, 4), max_size=1), data=st.data(),
       ignored=st.sampled_from([0.0, 0.3, 1.0]), ignore_index=st.sampled_from([-1, -100]),
       targets_as_tensor=st.booleans(), dtype=dtypes, seed=seeds)
def test_cross_entropy_matches_the_reference(size, lead, data, ignored, ignore_index,
                                             targets_as_tensor, dtype, seed):
    """Ignored targets (none, some, all: then both raise the same ValueError); rows in
    several blocks (rows_per_block(1000) = 65, rows_per_block(20001) = 3)."""
    if size == "small":
        rows, vocab = data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9))
    else:
        rows, vocab = data.draw(st.integers(67, 130)), data.draw(st.sampled_from([1000, 20001]))
    rng = np.random.default_rng(seed)
    lead = tuple(lead) + (rows,)
    logits = normal(rng, lead + (vocab,), dtype, 3.0)
    targets = rng.integers(0, vocab, lead)
    targets[rng.random(lead) < ignored] = ignore_index
    n_kept = int((targets != ignore_index).sum())
    if targets_as_tensor:
        targets = Tensor(targets)
    fast, reference = PAIRS["cross_entropy"]
    if n_kept == 0:                                 # every target ignored: nothing to average
        messages = []
        for cross_entropy in (fast, reference):
            with pytest.raises(ValueError, match="every target equals ignore_index") as raised:
                cross_entropy(Tensor(logits, requires_grad=True), targets, ignore_index)
            messages.append(str(raised.value))
        assert messages[0] == messages[1] and f"({ignore_index})" in messages[0]
        return
    loss, grad = check_kernel(                      # upstream N_kept: dlogits = p - onehot
        "cross_entropy", lambda x: fast(x, targets, ignore_index),
        lambda x: reference(x, targets, ignore_index), [logits], dtype, seed,
        upstream=n_kept)
    ignored_rows = (np.asarray(getattr(targets, "data", targets)) == ignore_index)
    assert not grad[ignored_rows].any()


def test_cross_entropy_default_ignore_index_is_minus_100_in_both():
    """-100 is ignored without naming it (PyTorch's default); -1 is then a bad target."""
    logits = np.random.default_rng(0).standard_normal((4, 5))
    targets = np.array([1, -100, 3, -100])
    for cross_entropy in PAIRS["cross_entropy"]:
        loss = cross_entropy(Tensor(logits, dtype=np.float64), targets).item()
        expected = cross_entropy(Tensor(logits[[0, 2]], dtype=np.float64), targets[[0, 2]])
        assert np.isclose(loss, expected.item(), rtol=1e-15, atol=0)
        with pytest.raises(IndexError, match=r"ignore_index \(-100\)"):
            cross_entropy(Tensor(logits), np.array([1, -1, 3, 0]))


def test_cross_entropy_rejects_the_same_bad_targets():
    logits = Tensor(np.zeros((2, 3, 5)))
    for targets, error in (([[0, 1, 2]], ValueError), ([[0, 1, 5], [0, 0, 0]], IndexError)):
        messages = []
        for cross_entropy in PAIRS["cross_entropy"]:
            with pytest.raises(error) as raised:
                cross_entropy(logits, np.array(targets))
            messages.append(str(raised.value))
        assert messages[0] == messages[1]


# ----- attention ----------------------------------------------------------------------------
@st.composite
def attention_sizes(draw, size):
    """(heads, T, L, offset): self-attention (L = T), a KV cache (L = offset + T; T = 1 is
    a generation step), or any offset of the first query among L keys. "blocks": 6 heads
    of 110+ queries and keys, more than threads.BLOCK scores, so blocks of heads on both
    threads and several pieces of QUERY_CHUNK query rows."""
    if size == "small":
        heads = draw(st.tuples(st.integers(1, 2), st.integers(1, 3)))
        T, short = draw(st.integers(1, 5)), st.integers(1, 9)
    else:
        heads, T, short = (2, 3), draw(st.integers(110, 150)), st.integers(110, 150)
    kind = draw(st.sampled_from(["self", "cache", "any"]))
    if kind == "self":
        return heads, T, T, 0
    if kind == "cache":
        offset = draw(st.integers(1, 9) if size == "small" else st.integers(1, 40))
        return heads, T, offset + T, offset
    L = draw(short)
    return heads, T, L, draw(st.integers(0, L))


@sizes
@given(data=st.data(), head_size=st.sampled_from([1, 3, 16]), is_causal=st.booleans(),
       dropout_p=st.sampled_from([0.0, 0.3]), dtype=dtypes, seed=seeds)
def test_attention_matches_the_reference(size, data, head_size, is_causal, dropout_p,
                                         dtype, seed):
    """Causal or not, with a KV-cache offset, with dropout on the weights: both draw their
    keep-mask from the generator seeded by manual_seed, with one draw of (B, nh, T, L)
    values, so both use the same mask."""
    heads, T, L, offset = data.draw(attention_sizes(size), label="heads, T, L, offset")
    rng = np.random.default_rng(seed)
    q = normal(rng, heads + (T, head_size), dtype, 1.5)
    k, v = (normal(rng, heads + (L, head_size), dtype, 1.5) for _ in range(2))
    fast, reference = PAIRS["attention"]
    check_kernel("attention",
                 lambda q, k, v: fast(q, k, v, is_causal, offset, dropout_p, dropout_p > 0),
                 lambda q, k, v: reference(q, k, v, is_causal, offset, dropout_p,
                                           dropout_p > 0), [q, k, v], dtype, seed)


@given(heads=st.tuples(st.integers(1, 2), st.integers(1, 2)), T=st.integers(1, 7),
       extra=st.integers(0, 5), chunk=st.sampled_from([1, 2, 3, 64]),
       dropout_p=st.sampled_from([0.0, 0.3]), seed=seeds)
def test_causal_attention_in_pieces_of_any_size_is_the_full_square(heads, T, extra, chunk,
                                                                  dropout_p, seed):
    """The fast kernel computes only the keys each piece of QUERY_CHUNK query rows can see
    (and dk, dv in matching pieces of keys); at any piece size that is the reference's
    whole (T, L) square, in float64."""
    rng = np.random.default_rng(seed)
    L = T + extra
    offset = int(rng.integers(0, extra + 1))                 # some keys no query sees
    q = rng.standard_normal(heads + (T, 4))
    k, v = (rng.standard_normal(heads + (L, 4)) for _ in range(2))
    fast, reference = PAIRS["attention"]
    before, fast_attention.QUERY_CHUNK = fast_attention.QUERY_CHUNK, chunk
    try:
        check_kernel("attention", lambda q, k, v: fast(q, k, v, True, offset, dropout_p, True),
                     lambda q, k, v: reference(q, k, v, True, offset, dropout_p, True),
                     [q, k, v], np.float64, seed)
    finally:
        fast_attention.QUERY_CHUNK = before


# ----- the big cases really run on two threads ---------------------------------------------
def fixed_cases(dtype=np.float32):
    """name -> (fast fn, reference fn, inputs, upstream or None): one case per kernel, each
    big enough for several blocks (the CuPy comparison in test_cuda.py uses them too)."""
    rng = np.random.default_rng(7)
    targets = rng.integers(0, 3000, (4, 30))
    targets[0, :5] = -100                       # ignored: the default ignore_index
    attention_args = (True, 0, 0.2, True)
    return {
        "gelu": (*PAIRS["gelu"], [normal(rng, (3, BLOCK + 5), dtype, 3.0)], None),
        "layer_norm": (*PAIRS["layer_norm"], [normal(rng, (2, 300, 384), dtype, 2.0),
                                               normal(rng, (384,), dtype),
                                               normal(rng, (384,), dtype)], None),
        "cross_entropy": (lambda x: PAIRS["cross_entropy"][0](x, targets),
                          lambda x: PAIRS["cross_entropy"][1](x, targets),
                          [normal(rng, (4, 30, 3000), dtype, 3.0)], int((targets != -100).sum())),
        "attention": (lambda q, k, v: PAIRS["attention"][0](q, k, v, *attention_args),
                      lambda q, k, v: PAIRS["attention"][1](q, k, v, *attention_args),
                      [normal(rng, (2, 3, 150, 16), dtype) for _ in range(3)], None),
    }


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_big_inputs_run_on_both_threads_and_match(name, monkeypatch):
    if name == "attention" and threads._blas_switch() is None:
        pytest.skip("attention's blocks run on one thread without NumPy's OpenBLAS switch")
    splits = []
    on_both = threads._on_both

    def counting(*args):
        splits.append(1)
        return on_both(*args)
    monkeypatch.setattr(threads, "_on_both", counting)
    fast, reference, inputs, upstream = fixed_cases()[name]
    check_kernel(name, fast, reference, inputs, np.float32, upstream=upstream)
    assert len(splits) >= 2, f"{name}: forward and backward should each use both threads"


# ----- switching the fast layer on and off --------------------------------------------------
def test_enable_registers_the_kernels_and_disable_removes_them():
    tensor.fast.disable()
    x = Tensor(np.random.default_rng(0).standard_normal((4, 5)))
    assert not tensor.fast.enabled()
    assert tensor.functional.layer_norm(x).op == "layer_norm"
    assert tensor.fast.enable(tune_malloc=False) is True
    assert tensor.fast.enabled() and set(tensor.fast.OPS) <= set(dispatch.registered())
    for name, (fast, reference) in PAIRS.items():
        assert dispatch.kernel(name, reference) is fast, name
    tensor.fast.disable()
    assert not tensor.fast.enabled()
    assert not set(tensor.fast.OPS) & set(dispatch.registered())
    for name, (fast, reference) in PAIRS.items():
        assert dispatch.kernel(name, reference) is reference, name


def test_tinygrad_gpt_fast_0_makes_enable_register_nothing(monkeypatch):
    tensor.fast.disable()
    monkeypatch.setenv("TINYGRAD_GPT_FAST", "0")
    assert tensor.fast.enable(tune_malloc=False) is False
    assert not tensor.fast.enabled()
    assert not set(tensor.fast.OPS) & set(dispatch.registered())


def test_the_kernels_are_used_through_tensor_functional_once_enabled(monkeypatch):
    """F.gelu etc. call the registered kernel (dispatch.py), not the reference."""
    calls = []
    fast_gelu_kernel = fast_gelu.gelu
    monkeypatch.setattr(fast_gelu, "gelu", lambda *a: calls.append(a) or fast_gelu_kernel(*a))
    assert tensor.fast.enable(tune_malloc=False)
    tensor.functional.gelu(Tensor(np.ones(3)))
    assert len(calls) == 1
    tensor.fast.disable()
    tensor.functional.gelu(Tensor(np.ones(3)))
    assert len(calls) == 1
