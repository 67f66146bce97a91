"""The engine's semantics, beyond any single op: how gradients flow through a graph, when
backward() refuses, no_grad and detect_anomaly, error messages, dtypes, broadcasting,
conversions, reflected operators, and devices.
"""
import numpy as np
import pytest
from hypothesis import given

import tensor
from strategies import broadcast_pairs, graph_ops, normal, positive, rng_for, seeds, shapes
from tensor import Tensor, detect_anomaly, no_grad
from tensor.finite_differences import gradcheck
from tensor.graph import topological_order

requires_gpu = pytest.mark.skipif(not tensor.cuda_available(),
                                  reason="needs CuPy and a CUDA GPU (none found)")
requires_no_gpu = pytest.mark.skipif(tensor.cuda_available(),
                                     reason="a GPU is present: the no-GPU error cannot occur")


def leaf(array, dtype=np.float64):
    return Tensor(array, requires_grad=True, dtype=dtype)


# ----- gradient flow through graphs -------------------------------------------------------
@given(shape=shapes(), seed=seeds)
def test_diamond_graph_sums_the_gradients_of_every_path(shape, seed):
    """y = x*x + exp(x)*x uses x on four edges: dy/dx = 2x + exp(x) x + exp(x)."""
    x = normal(rng_for(seed), shape)
    t = leaf(x)
    (t * t + t.exp() * t).sum().backward()
    np.testing.assert_allclose(t.grad, 2 * x + np.exp(x) * x + np.exp(x), rtol=1e-12)


@given(shape=shapes(), seed=seeds)
def test_shared_intermediate_passes_its_summed_gradient_upstream(shape, seed):
    """h = tanh(x) feeds three ops; finite differences see the whole diamond."""
    rng = rng_for(seed)

    def fn(x):
        h = x.tanh()
        return h * h + h.exp() * h - h
    result = gradcheck(fn, [normal(rng, shape)], upstream=rng.standard_normal(shape),
                       atol=1e-8, rtol=1e-7)
    assert result.ok, result.report()


def test_a_3000_op_chain_backpropagates_without_recursion_error():
    x = np.array([0.5, -1.0, 2.0])
    t = leaf(x)
    y = t
    for _ in range(1500):                       # 3,000 ops: a mul and an add each time
        y = y * 1.001 + 0.0
    assert len(_graph_nodes(y)) > 3000
    y.sum().backward()
    np.testing.assert_allclose(t.grad, np.full(3, 1.001 ** 1500), rtol=1e-12)


def _graph_nodes(out):
    seen, stack = {}, [out]
    while stack:
        node = stack.pop()
        if id(node) not in seen:
            seen[id(node)] = node
            stack.extend(node._parents)
    return seen


def test_a_tensor_reused_at_every_step_is_visited_once():
    """y = y + y, 40 times: 2^40 paths from the output to x. The topological order must
    list each node once (else backward takes exponential time) and dy/dx = 2^40."""
    t = leaf([1.0, -1.0])
    y = t
    for _ in range(40):
        y = y + y
    order = topological_order(y)
    assert len(order) == len({id(node) for node in order}) == 41
    assert all(order.index(parent) < order.index(node)
               for node in order for parent in node._parents)
    y.backward(np.ones(2))
    np.testing.assert_array_equal(t.grad, [2.0 ** 40] * 2)


def test_backward_twice_with_retain_graph_accumulates():
    t = leaf([1.0, -2.0, 3.0])
    y = (t * t * t).sum()
    y.backward(retain_graph=True)
    first = t.grad.copy()
    np.testing.assert_allclose(first, 3 * t.data ** 2)
    y.backward(retain_graph=True)
    np.testing.assert_allclose(t.grad, 2 * first)


def test_backward_twice_without_retain_graph_raises_a_clear_error():
    t = leaf([1.0, 2.0])
    y = (t * t).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="retain_graph=True"):
        y.backward()


def test_gradients_of_separate_graphs_accumulate_until_zero_grad():
    t = leaf([1.0, 2.0])
    (t * 3.0).sum().backward()
    (t * t).sum().backward()
    np.testing.assert_allclose(t.grad, 3.0 + 2 * t.data)
    t.zero_grad()
    assert t.grad is None


def test_leaf_grad_is_a_copy_not_the_array_passed_to_backward():
    t = leaf([1.0, 2.0])
    upstream = np.array([5.0, 7.0])
    (t + 0.0).backward(upstream)
    upstream[:] = 0
    np.testing.assert_array_equal(t.grad, [5.0, 7.0])


def test_constants_and_non_grad_leaves_receive_no_gradient():
    t, c = leaf([1.0, 2.0]), Tensor([3.0, 4.0], dtype=np.float64)
    (t * c).sum().backward()
    np.testing.assert_array_equal(t.grad, [3.0, 4.0])
    assert c.grad is None and not c.requires_grad


def test_backward_on_a_non_scalar_without_gradient_raises():
    y = leaf(np.ones((2, 3))) * 2.0
    with pytest.raises(RuntimeError, match=r"non-scalar.*\(2, 3\)"):
        y.backward()


def test_backward_with_a_wrong_shaped_gradient_raises_naming_both_shapes():
    y = leaf(np.ones((2, 3))) * 2.0
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_backward_on_a_tensor_that_needs_no_grad_raises():
    with pytest.raises(RuntimeError, match="does not require grad"):
        Tensor([1.0, 2.0]).sum().backward()


# ----- no_grad and detect_anomaly ---------------------------------------------------------
def test_no_grad_records_nothing_and_restores_grad_mode():
    t = leaf([1.0, 2.0])
    with no_grad():
        y = (t * t).exp().sum()
        with no_grad():
            pass
        z = t * 2.0                              # still off after the nested block closed
    assert not y.requires_grad and y._parents == () and y._backward is None
    assert not z.requires_grad and z._parents == ()
    assert (t * 2.0).requires_grad               # back on after the block


def test_no_grad_restores_grad_mode_after_an_exception():
    with pytest.raises(ZeroDivisionError):
        with no_grad():
            raise ZeroDivisionError
    assert (leaf([1.0]) * 2.0).requires_grad


def test_detect_anomaly_names_the_forward_op_and_its_input_shapes():
    with np.errstate(invalid="ignore"), detect_anomaly():
        with pytest.raises(FloatingPointError, match=r"forward of op 'log'.*\(2, 3\)"):
            Tensor([[1.0, -1.0, 2.0], [3.0, 4.0, 5.0]]).log()


def test_detect_anomaly_names_the_backward_op_that_produced_inf():
    """sqrt is finite at 0 but its gradient 1 / (2 sqrt(x)) is not."""
    t = leaf([[0.0, 4.0]])
    y = t.sqrt().sum()
    with np.errstate(divide="ignore"), detect_anomaly():
        with pytest.raises(FloatingPointError, match=r"backward of op 'sqrt'.*\(1, 2\)"):
            y.backward()


def test_without_detect_anomaly_the_same_nan_passes_silently():
    with np.errstate(invalid="ignore"):
        y = Tensor([-1.0, 2.0]).log()
    assert np.isnan(y.numpy()[0])


# ----- error messages name shapes ---------------------------------------------------------
def test_matmul_error_names_both_shapes():
    with pytest.raises(ValueError) as info:
        Tensor(np.ones((3, 4))) @ Tensor(np.ones((5, 6)))
    assert "(3, 4)" in str(info.value) and "(5, 6)" in str(info.value)


def test_matmul_error_for_batch_dims_that_do_not_broadcast_names_them():
    with pytest.raises(ValueError, match=r"\(2,\).*\(3,\)"):
        Tensor(np.ones((2, 3, 4))) @ Tensor(np.ones((3, 4, 5)))


def test_reshape_error_names_the_shape_and_the_target():
    with pytest.raises(ValueError, match=r"\(3, 4\).*12 elements.*\(5, -1\)"):
        Tensor(np.ones((3, 4))).reshape(5, -1)


def test_cat_error_names_every_shape():
    with pytest.raises(ValueError, match=r"\(3, 4\), \(2, 5\)"):
        Tensor.cat([Tensor(np.ones((3, 4))), Tensor(np.ones((2, 5)))])


# ----- dtypes -----------------------------------------------------------------------------
@pytest.mark.parametrize("data", [1.5, [1.0, 2.0], np.ones(3), np.ones(3, np.float16)])
def test_floats_default_to_float32(data):
    assert Tensor(data).dtype == np.float32


@pytest.mark.parametrize("dtype", ["float64", np.float64])
def test_float64_on_request_and_kept_through_ops_and_gradients(dtype):
    t = Tensor([1.0, 2.0], requires_grad=True, dtype=dtype)
    y = (t * 0.1 + 1 / t).sum()
    y.backward()
    assert t.dtype == y.dtype == t.grad.dtype == np.float64
    np.testing.assert_array_equal(y.numpy(), (np.array([1.0, 2.0]) * 0.1 + 1 / np.array(
        [1.0, 2.0])).sum())


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_integer_and_bool_data_keep_their_dtype(dtype):
    assert Tensor(np.array([1, 0, 1], dtype=dtype)).dtype == dtype


def test_python_ints_stay_integer():
    assert Tensor([1, 2, 3]).dtype.kind == "i"


@pytest.mark.parametrize("data", [[1, 2], np.array([True, False])])
def test_requires_grad_on_integer_or_bool_data_raises(data):
    with pytest.raises(TypeError, match="float"):
        Tensor(data, requires_grad=True)


# ----- broadcasting -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("op", ["add", "sub", "mul", "truediv", "pow"])
@given(pair=broadcast_pairs(), seed=seeds)
def test_binary_ops_broadcast_exactly_like_numpy(op, dtype, pair, seed):
    rng = rng_for(seed)
    a = positive(rng, pair[0]).astype(dtype)
    b = normal(rng, pair[1]).astype(dtype)
    out = getattr(Tensor(a, dtype=dtype), f"__{op}__")(Tensor(b, dtype=dtype))
    expected = getattr(np.asarray(a), f"__{op}__")(np.asarray(b))
    assert out.shape == expected.shape and out.dtype == expected.dtype
    np.testing.assert_array_equal(out.numpy(), expected)


# ----- conversions ------------------------------------------------------------------------
def test_numpy_returns_an_ndarray_with_the_values():
    x = np.arange(6.0).reshape(2, 3)
    out = Tensor(x, dtype=np.float64).numpy()
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, x)


def test_item_returns_a_python_number_and_refuses_many_elements():
    value = Tensor([[2.5]]).item()
    assert type(value) is float and value == 2.5
    assert type(Tensor(np.array([7])).item()) is int
    with pytest.raises(ValueError, match=r"\(2,\)"):
        Tensor([1.0, 2.0]).item()


def test_to_cpu_keeps_the_values_and_device():
    t = Tensor([1.0, 2.0], requires_grad=True)
    moved = t.to("cpu")
    assert moved.device == "cpu" and moved.requires_grad
    np.testing.assert_array_equal(moved.numpy(), t.numpy())


def test_detach_keeps_values_but_cuts_the_graph():
    t = leaf([1.0, 2.0])
    d = (t * 3.0).detach()
    assert not d.requires_grad and d._parents == () and d.op is None
    np.testing.assert_array_equal(d.numpy(), [3.0, 6.0])
    (t.detach() * t).sum().backward()            # only the attached factor passes gradient
    np.testing.assert_array_equal(t.grad, [1.0, 2.0])


def test_T_swaps_the_last_two_axes_and_leaves_1d_alone():
    x = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(Tensor(x).T.numpy(), np.swapaxes(x, -1, -2))
    one_d = Tensor([1.0, 2.0])
    assert one_d.T is one_d


# ----- reflected operators with Python scalars and NumPy arrays ----------------------------
@given(shape=shapes(), seed=seeds)
def test_reflected_operators_with_python_scalars(shape, seed):
    x = positive(rng_for(seed), shape)
    t = leaf(x)
    y = (2 - t) + 2 / t + 2 ** t + 2 * t + 2 + t
    np.testing.assert_allclose(y.numpy(), (2 - x) + 2 / x + 2 ** x + 2 * x + 2 + x,
                               rtol=1e-14)
    y.sum().backward()
    terms = [-1, -2 / x ** 2, np.log(2) * 2 ** x, 2, 1]    # one per operator; they may cancel
    # so the rounding to allow is relative to the terms' size, not to their (small) sum
    scale = sum(np.abs(term) for term in terms)
    assert np.all(np.abs(t.grad - sum(terms)) <= 1e-12 * scale)


def test_numpy_array_on_the_left_defers_to_the_tensor():
    """ndarray @ Tensor, ndarray * Tensor: a Tensor result with gradients, not an object
    array built by NumPy."""
    rng = rng_for(0)
    arr, x = rng.standard_normal((2, 3)), rng.standard_normal((3, 4))
    t = leaf(x)
    y = arr @ t
    assert isinstance(y, Tensor) and "matmul" in graph_ops(y)
    np.testing.assert_allclose(y.numpy(), arr @ x, rtol=1e-14)
    upstream = rng.standard_normal((2, 4))
    y.backward(upstream)
    np.testing.assert_allclose(t.grad, arr.T @ upstream, rtol=1e-12)
    z = x * t + np.float64(2.0) * t - arr[:, :1].sum() / t
    assert isinstance(z, Tensor) and z.shape == (3, 4)


# ----- devices ----------------------------------------------------------------------------
@pytest.mark.parametrize("make", [lambda: Tensor([1.0], device="tpu"),
                                  lambda: Tensor([1.0]).to("metal")])
def test_unknown_device_raises_value_error(make):
    with pytest.raises(ValueError, match="unknown device"):
        make()


@requires_no_gpu
@pytest.mark.parametrize("make", [lambda: Tensor([1.0], device="cuda"),
                                  lambda: Tensor([1.0], device="cuda:0"),
                                  lambda: Tensor([1.0]).to("cuda")])
def test_cuda_without_a_gpu_raises_an_error_that_names_the_fix(make):
    with pytest.raises(RuntimeError) as info:
        make()
    message = str(info.value).lower()
    assert "device='cpu'" in message
    assert "cupy" in message or "nvidia-smi" in message


@requires_gpu
def test_mixing_devices_raises_and_names_both():
    a, b = Tensor([1.0, 2.0]), Tensor([1.0, 2.0], device="cuda")
    for op in (lambda: a + b, lambda: b * a, lambda: a @ b):
        with pytest.raises(RuntimeError, match="cuda.*cpu|cpu.*cuda"):
            op()


@requires_gpu
def test_to_moves_between_devices_and_back():
    t = Tensor([1.0, 2.0], requires_grad=True)
    on_gpu = t.to("cuda")
    assert on_gpu.device == "cuda" and on_gpu.requires_grad
    np.testing.assert_array_equal(on_gpu.to("cpu").numpy(), t.numpy())


def test_a_backward_returning_a_wrong_shape_or_count_is_one_clear_error():
    """A learner's op that forgets to sum a broadcast gradient back (or returns one gradient
    too few) is stopped at once, naming the op and the shapes, not stored in .grad."""
    from tensor.tensor import make

    def forgot_unbroadcast(a, b):
        return make(a.data * b.data, (a, b), "my_mul", lambda dy: (dy * b.data, dy * a.data))

    def one_too_few(a, b):
        return make(a.data * b.data, (a, b), "my_mul", lambda dy: (dy * b.data,))
    for fn in (forgot_unbroadcast, one_too_few):
        a = Tensor(np.ones((2, 3)), requires_grad=True)
        b = Tensor(np.ones(3), requires_grad=True)
        with pytest.raises(ValueError, match=r"backward of op 'my_mul' returned gradients of "
                                             r"shapes .* for inputs of shapes \(\(2, 3\), \(3,\)\)"):
            fn(a, b).sum().backward()
        assert b.grad is None
