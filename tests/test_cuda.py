"""The CuPy backend: gradchecks on device='cuda', NumPy and CuPy giving the same forward
outputs and gradients for every op (float32 tolerance), and tensor/fast/'s kernels equal to
the reference ops on CuPy too.

Needs CuPy and an NVIDIA GPU; without them the GPU tests skip with the reason shown, while
the case table they use is still checked to cover every public op and to run on the CPU.
"""
import numpy as np
import pytest

import tensor
import tensor.functional as F
import test_fast_kernels
from strategies import PUBLIC_OPS, away_from_zero, distinct, normal, positive
from tensor import Tensor
from tensor.backend import to_numpy
from tensor.gelu import gelu_erf
from tensor.finite_differences import gradcheck
from test_ops_gradcheck import TOLERANCES

GPU = tensor.cuda_available()
requires_gpu = pytest.mark.skipif(
    not GPU, reason="no CUDA GPU: CuPy is not installed or sees no device "
                    "(pip install cupy-cuda12x on a machine with an NVIDIA GPU)")

FLOAT32 = dict(rtol=1e-4, atol=1e-5)        # NumPy vs CuPy in float32: summation order
DROPOUT_P = 0.3


def index(array, device):
    """Integer indices as a Tensor on the device the op runs on."""
    return Tensor(np.asarray(array), device=device)


def with_mask_seed(t):
    tensor.manual_seed(1234)
    return F.dropout(t, DROPOUT_P)


# name -> build(rng, device) -> (fn, float inputs). Small fixed shapes, broadcasting included.
CASES = {
    "add": lambda r, d: (lambda a, b: a + b, [normal(r, (3, 1, 4)), normal(r, (2, 4))]),
    "sub": lambda r, d: (lambda a, b: a - b, [normal(r, (2, 3)), normal(r, (3,))]),
    "mul": lambda r, d: (lambda a, b: a * b, [normal(r, (2, 1)), normal(r, (1, 3))]),
    "div": lambda r, d: (lambda a, b: a / b,
                         [normal(r, (2, 3)), away_from_zero(r, (2, 1), low=0.5)]),
    "pow": lambda r, d: (lambda a, b: a ** b, [positive(r, (2, 3)), normal(r, (3,))]),
    "neg": lambda r, d: (lambda a: -a, [normal(r, (2, 3))]),
    "exp": lambda r, d: (lambda a: a.exp(), [normal(r, (2, 3))]),
    "log": lambda r, d: (lambda a: a.log(), [positive(r, (2, 3))]),
    "tanh": lambda r, d: (lambda a: a.tanh(), [normal(r, (2, 3))]),
    "sqrt": lambda r, d: (lambda a: a.sqrt(), [positive(r, (2, 3))]),
    "relu": lambda r, d: (lambda a: a.relu(), [away_from_zero(r, (2, 3))]),
    "sum": lambda r, d: (lambda a: a.sum(axis=(0, -1), keepdims=True), [normal(r, (2, 3, 4))]),
    "mean": lambda r, d: (lambda a: a.mean(axis=1), [normal(r, (2, 3, 4))]),
    "max": lambda r, d: (lambda a: a.max(axis=-1), [distinct(r, (3, 4))]),
    "var": lambda r, d: (lambda a: a.var(axis=0, ddof=1), [normal(r, (4, 3))]),
    "reshape": lambda r, d: (lambda a: a.reshape(-1, 2), [normal(r, (2, 3, 2))]),
    "transpose": lambda r, d: (lambda a: a.transpose(0, -1), [normal(r, (2, 3, 4))]),
    "permute": lambda r, d: (lambda a: a.permute(2, 0, 1), [normal(r, (2, 3, 4))]),
    "getitem": lambda r, d: (lambda a: a[index([0, 2, 0], d), 1:],       # a repeated row
                             [normal(r, (3, 4))]),
    "masked_fill": lambda r, d: (lambda a: a.masked_fill(np.array([True, False, True]), -2.0),
                                 [normal(r, (2, 3))]),
    "cat": lambda r, d: (lambda a, b: Tensor.cat([a, b], axis=-1),
                         [normal(r, (2, 3)), normal(r, (2, 1))]),
    "stack": lambda r, d: (lambda a, b: Tensor.stack([a, b], axis=1),
                           [normal(r, (2, 3)), normal(r, (2, 3))]),
    "split": lambda r, d: (lambda a: Tensor.cat([p * (k + 1) for k, p in
                                                 enumerate(a.split([1, 2], axis=1))][::-1],
                                                axis=1), [normal(r, (2, 3))]),
    "matmul": lambda r, d: (lambda a, b: a @ b, [normal(r, (2, 1, 3, 4)), normal(r, (5, 4, 2))]),
    "linear": lambda r, d: (F.linear, [normal(r, (2, 3, 4)), normal(r, (5, 4)), normal(r, (5,))]),
    "lora_linear": lambda r, d: (lambda x, w, b, a, bb: F.lora_linear(x, w, b, a, bb, 1.5),
                                 [normal(r, (2, 3, 4)), normal(r, (5, 4)), normal(r, (5,)),
                                  normal(r, (2, 4)), normal(r, (5, 2))]),
    "softmax": lambda r, d: (lambda a: F.softmax(a, axis=0), [normal(r, (3, 4), 2.0)]),
    "log_softmax": lambda r, d: (F.log_softmax, [normal(r, (3, 4), 2.0)]),
    "layer_norm": lambda r, d: (F.layer_norm,
                                [normal(r, (2, 3, 5)), normal(r, (5,)), normal(r, (5,))]),
    "gelu": lambda r, d: (F.gelu, [normal(r, (3, 4), 2.0)]),
    "gelu_erf": lambda r, d: (gelu_erf, [normal(r, (3, 4), 2.0)]),
    "embedding": lambda r, d: (lambda w: F.embedding(index([[0, 3, 3], [4, 0, 3]], d), w),
                               [normal(r, (5, 3))]),
    "cross_entropy": lambda r, d: (
        lambda x: F.cross_entropy(x, index([[1, -100, 4], [0, 2, -100]], d)),
        [normal(r, (2, 3, 5), 2.0)]),
    "scaled_dot_product_attention": lambda r, d: (
        F.scaled_dot_product_attention, [normal(r, (1, 2, 3, 4)) for _ in range(3)]),
    "dropout": lambda r, d: (with_mask_seed, [away_from_zero(r, (4, 6))]),
}


def build(name, device, seed=0):
    return CASES[name](np.random.default_rng(seed), device)


def run(fn, inputs, device, dtype, upstream_seed=1):
    """Forward and backward on a device: the output, every input's gradient and the upstream
    gradient used, in NumPy."""
    tensors = [Tensor(x, requires_grad=True, dtype=dtype, device=device) for x in inputs]
    out = fn(*tensors)
    upstream = np.random.default_rng(upstream_seed).standard_normal(out.shape).astype(dtype)
    out.backward(upstream)
    assert out.device == device and all(t.grad is not None for t in tensors)
    return out.numpy(), [to_numpy(t.grad) for t in tensors], upstream


def check_on(device, name):
    fn, inputs = build(name, device)
    atol, rtol = TOLERANCES[name]
    result = gradcheck(fn, inputs, atol=atol, rtol=rtol, device=device)
    assert result.ok, f"{name} on {device}:\n{result.report()}"


def assert_dropout_consistent(out, grads, upstream, x):
    """Masks differ between backends' generators: check each against itself instead. The
    scaled mask y / x is 0 or 1 / (1 - p), and backward multiplies by that same mask."""
    scaled_mask = out / x
    assert np.all(np.isclose(scaled_mask, 0) | np.isclose(scaled_mask, 1 / (1 - DROPOUT_P)))
    assert 0 < np.count_nonzero(scaled_mask) < scaled_mask.size
    np.testing.assert_allclose(grads[0], upstream * scaled_mask, **FLOAT32)


# ----- always: the table itself -----------------------------------------------------------
def test_case_table_covers_every_public_op():
    assert set(CASES) == set(PUBLIC_OPS)


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_case_gradchecks_on_the_cpu(name):
    """What the GPU tests run is valid: on NumPy every case passes its gradcheck."""
    check_on("cpu", name)


def test_comparison_harness_runs_on_the_cpu():
    """The cross-backend comparison, NumPy against itself: every case runs in float32 and
    the dropout case passes its mask-consistency check."""
    for name in CASES:
        compare_backends(name, "cpu", "cpu")


# ----- with a GPU -------------------------------------------------------------------------
@requires_gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_gradcheck_on_cuda(name):
    check_on("cuda", name)


def compare_backends(name, first="cpu", second="cuda"):
    """Run one case in float32 on two devices; outputs and gradients must agree."""
    _, inputs = build(name, first)
    out_1, grads_1, upstream = run(build(name, first)[0], inputs, first, np.float32)
    out_2, grads_2, _ = run(build(name, second)[0], inputs, second, np.float32)
    assert out_1.dtype == out_2.dtype == np.float32
    if name == "dropout":
        assert_dropout_consistent(out_1, grads_1, upstream, inputs[0])
        assert_dropout_consistent(out_2, grads_2, upstream, inputs[0])
        return
    np.testing.assert_allclose(out_2, out_1, **FLOAT32, err_msg=f"{name}: forward")
    for i, (g2, g1) in enumerate(zip(grads_2, grads_1)):
        np.testing.assert_allclose(g2, g1, **FLOAT32, err_msg=f"{name}: grad of input {i}")


@requires_gpu
@pytest.mark.parametrize("name", sorted(CASES))
def test_numpy_and_cupy_agree_on_outputs_and_gradients(name):
    compare_backends(name, "cpu", "cuda")


@requires_gpu
def test_cuda_tensors_stay_on_the_gpu_through_backward():
    import cupy
    t = Tensor(np.ones((2, 3)), requires_grad=True, device="cuda")
    y = F.gelu(t @ Tensor(np.ones((3, 2)), device="cuda")).sum()
    y.backward()
    assert isinstance(y.data, cupy.ndarray) and isinstance(t.grad, cupy.ndarray)


@requires_gpu
@pytest.mark.parametrize("name", sorted(test_fast_kernels.PAIRS))
def test_fast_kernels_equal_the_reference_ops_on_cuda(name):
    """The fast kernels on CuPy (one block each: the GPU is parallel already) against the
    reference ops on CuPy, with tests/test_fast_kernels.py's cases and float32 tolerance."""
    fast, reference, inputs, upstream = test_fast_kernels.fixed_cases()[name]
    op, expected = test_fast_kernels.run(reference, inputs, np.float32, device="cuda",
                                         upstream=upstream)
    fast_op, got = test_fast_kernels.run(fast, inputs, np.float32, device="cuda",
                                         upstream=upstream)
    assert fast_op == op
    test_fast_kernels.assert_close(got, expected, np.float32, f"{name} on cuda")


@requires_gpu
@pytest.mark.parametrize("V", [40, 3000])                  # one-hot product; scatter_add
def test_fast_embedding_equals_the_reference_on_cuda(V):
    """tensor/fast/embedding.py on CuPy, tied to a linear layer as GPT's token embedding is:
    the embedding's rows added into the weight's existing gradient (cupyx.scatter_add's
    atomic adds sum in any order, hence float32 tolerance)."""
    from tensor import embedding as reference_embedding
    from tensor.fast import embedding as fast_embedding
    rng = np.random.default_rng(3)
    ids = index(rng.integers(0, V, (4, 50)), "cuda")
    w0, h, up = (rng.standard_normal(s).astype(np.float32) for s in ((V, 16), (7, 16), (7, V)))
    grads = []
    for embedding in (reference_embedding.embedding, fast_embedding.embedding):
        w = Tensor(w0, requires_grad=True, device="cuda")
        loss = (F.linear(Tensor(h, device="cuda"), w) * Tensor(up, device="cuda")).sum() \
            + embedding(ids, w).sum()
        loss.backward()
        grads.append(to_numpy(w.grad))
    np.testing.assert_allclose(grads[1], grads[0], **FLOAT32)


# ----- NCCL: a one-rank communicator (nn/nccl.py) ------------------------------------------
def nccl_world():
    """An NcclWorld of one rank over a SingleWorld: a real NcclCommunicator(1, id, 0)."""
    from nn import distributed, nccl
    try:
        return nccl.NcclWorld(nccl.gpu_world(distributed.SingleWorld()))
    except RuntimeError as e:                      # CuPy without its NCCL library
        pytest.skip(f"no NCCL: {e}")


@requires_gpu
def test_one_rank_nccl_collectives_on_cupy_arrays():
    import cupy
    world = nccl_world()
    a = cupy.arange(6, dtype=cupy.float32)
    assert world.allreduce_(a) is a
    world.iallreduce_(a).wait()
    world.broadcast_(a, root=0)
    np.testing.assert_array_equal(a.get(), np.arange(6, dtype=np.float32))
    recv = cupy.full(6, -1.0)
    world.reduce_scatter(cupy.arange(6.0), recv, [6])
    np.testing.assert_array_equal(recv.get(), np.arange(6.0))
    g = cupy.arange(5, dtype=cupy.float32)
    world.allgather_(g, [5])
    np.testing.assert_array_equal(g.get(), np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(world.gather(g, [5]).get(), np.arange(5))
    assert world.comm.size() == 1 and world.comm.device_id() == 0


@requires_gpu
@pytest.mark.parametrize("zero", [False, True], ids=["GradientReducer", "ZeroAdamW"])
def test_a_step_on_cuda_through_nccl_equals_the_single_world_one(zero):
    """GradientReducer + nn.AdamW, or ZeroAdamW, on device cuda: one step through a one-rank
    NCCL world gives the SingleWorld's weights (ZeroAdamW's reduce-scatter and all-gather
    really run through NCCL on one rank)."""
    import distributed_worker as worker
    import nn
    weights = []
    for world in (nn.distributed.SingleWorld(), nccl_world()):
        model = worker.tiny_gpt(dtype=np.float32)
        model.to("cuda")
        opt = worker.optimizer(model, zero, world)
        reducer = opt if zero else nn.GradientReducer(model.parameters(), world)
        for it in range(2):
            opt.zero_grad()
            _, loss = model(*worker.micro_batch(it, 0))
            loss.backward()
            reducer.reduce(float(loss.item()))
            reducer.clip_grad_norm(0.05)
            opt.step()
        weights.append([to_numpy(p.data) for p in model.parameters()])
    for a, b in zip(*weights):
        np.testing.assert_array_equal(a, b)
