"""Optimizers, clipping and the learning-rate schedule (nn/optim.py).

AdamW and SGD are compared with torch.optim step by step (float64: to rounding; float32:
within float32 tolerance); clip_grad_norm with torch.nn.utils.clip_grad_norm_; get_lr
with nanoGPT's formula written out here; a partly frozen net as torch steps one whose
frozen tensors have requires_grad_(False) (more on freezing: test_freeze.py). Then:
parameters own their arrays (an optimizer updates them in place, whatever order the model,
a device move and the optimizer were made in), fresh gradients after zero_grad() are used,
an optimizer state round trip resumes training exactly, and tensor.fast's optimizer
kernels equal the reference functions.
"""
import copy
import math

import numpy as np
import pytest

import tensor
import tensor.fast
import tensor.functional as F
from tensor.fast import optim as fast_optim
from tensor.fast import threads
from nn import (SGD, GELU, AdamW, Embedding, LayerNorm, Linear, Module, Parameter,
                clip_grad_norm, decay_groups, get_lr)
from nn.optim import adamw_update, adamw_update_all, scale_in_place, sum_of_squares

try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


class Net(Module):
    """Both kinds of parameter nanoGPT distinguishes: 2-D weights and 1-D biases/gains."""

    def __init__(self):
        self.emb = Embedding(10, 6)
        self.fc = Linear(6, 8)
        self.norm = LayerNorm(8)
        self.act = GELU()
        self.out = Linear(8, 10)

    def forward(self, ids, targets):
        logits = self.out(self.act(self.norm(self.fc(self.emb(ids)))))
        return F.cross_entropy(logits, targets)


@pytest.fixture
def fast():
    """tensor.fast's kernels registered for one test (malloc left alone), then removed."""
    tensor.fast.enable(tune_malloc=False)
    try:
        yield
    finally:
        tensor.fast.disable()
        threads.set_threads(2)


def make_net(seed=0, dtype=np.float32):
    tensor.manual_seed(seed)
    net = Net()
    for p in net.parameters():
        p.data = p.data.astype(dtype)
    return net


def batch(step):
    rng = np.random.default_rng(100 + step)
    return rng.integers(0, 10, size=(4, 5)), rng.integers(0, 10, size=(4, 5))


def train_step(net, opt, step, clip=None, lr=None):
    ids, targets = batch(step)
    net.zero_grad()
    net(ids, targets).backward()
    if clip is not None:
        clip_grad_norm(net.parameters(), clip)
    if lr is not None:
        for group in opt.param_groups:
            group["lr"] = lr
    opt.step()


def params_of(net):
    return {name: np.array(p.data, copy=True) for name, p in net.named_parameters()}


# ----- against torch.optim: identical gradients in, parameters compared out ---------------
def gradient(params, rng):
    """A gradient that depends on the parameters (so differences would grow) plus noise."""
    return [np.sin(3 * p) + 0.1 * rng.standard_normal(p.shape) for p in params]


def run_both(make_ours, make_theirs, dtype, steps=6, lr_schedule=None):
    rng = np.random.default_rng(0)
    net = make_net(dtype=dtype)
    ours = net.parameters()
    theirs = [torch.tensor(p.data.copy(), requires_grad=True) for p in ours]
    opt_ours, opt_theirs = make_ours(ours), make_theirs(theirs)
    for step in range(steps):
        grads = gradient([p.data.astype(np.float64) for p in ours], rng)
        for p, t, g in zip(ours, theirs, grads):
            p.grad = g.astype(dtype)
            t.grad = torch.tensor(g.astype(dtype))
        if lr_schedule is not None:
            for group in opt_ours.param_groups + opt_theirs.param_groups:
                group["lr"] = lr_schedule[step]
        opt_ours.step()
        opt_theirs.step()
    return ours, theirs


def torch_groups(params, weight_decay):
    return [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]


@needs_torch
@pytest.mark.parametrize("dtype,rtol,atol", [(np.float64, 1e-12, 1e-14),
                                             (np.float32, 2e-5, 2e-6)])
def test_adamw_with_decay_groups_matches_torch(dtype, rtol, atol):
    kw = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8)
    ours, theirs = run_both(
        lambda ps: AdamW(decay_groups(ps, 0.1), **kw),
        lambda ps: torch.optim.AdamW(torch_groups(ps, 0.1), **kw, foreach=False), dtype,
        lr_schedule=[3e-2, 2e-2, 1e-2, 5e-3, 1e-3, 1e-3])
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=rtol, atol=atol)
    moved = max(float(np.abs(p.data - make_net(dtype=dtype).parameters()[i].data).max())
                for i, p in enumerate(ours))
    assert moved > 1e-2                                          # the steps did something


@needs_torch
def test_adamw_over_a_partly_frozen_net_matches_torch_with_requires_grad_false():
    """Frozen parameters: ours leaves them out of the optimizer, torch keeps them in its
    groups but skips them (no .grad); the trainable ones step alike, and both hold state
    for the trainable ones only."""
    net = make_net(dtype=np.float64)
    net.freeze("fc", "norm.bias")
    ours = net.parameters()
    theirs = [torch.tensor(p.data.copy()).requires_grad_(p.requires_grad) for p in ours]
    start = params_of(net)
    kw = dict(lr=3e-2, betas=(0.9, 0.95), eps=1e-8)
    opt_ours = AdamW(decay_groups(ours, 0.1), **kw)
    opt_theirs = torch.optim.AdamW(torch_groups(theirs, 0.1), **kw, foreach=False)
    rng = np.random.default_rng(0)
    for _ in range(4):
        for p, t, g in zip(ours, theirs, gradient([p.data for p in ours], rng)):
            if p.requires_grad:
                p.grad, t.grad = g, torch.tensor(g)
        opt_ours.step()
        opt_theirs.step()
    for (name, p), t in zip(net.named_parameters(), theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)
        assert np.array_equal(p.data, start[name]) == (not p.requires_grad), name
    assert len(opt_ours.state) == len(opt_theirs.state) == sum(p.requires_grad for p in ours)
    assert opt_ours.state_dict()["m"].size == net.num_trainable_parameters()


@needs_torch
def test_adamw_default_hyperparameters_match_torch():
    ours, theirs = run_both(lambda ps: AdamW(ps), lambda ps: torch.optim.AdamW(ps),
                            np.float64, steps=4)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)


@needs_torch
@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 0.01), (0.0, 0.0), (0.5, 0.0)])
def test_sgd_matches_torch(momentum, weight_decay):
    kw = dict(lr=0.1, momentum=momentum, weight_decay=weight_decay)
    ours, theirs = run_both(lambda ps: SGD(ps, **kw),
                            lambda ps: torch.optim.SGD(ps, **kw), np.float64)
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_adamw_first_step_is_lr_times_sign_of_gradient():
    """With m_hat = g and v_hat = g^2, step one moves each element by lr * g / (|g| + eps)."""
    p = Parameter(np.array([1.0, -2.0, 3.0]), dtype=np.float64)
    opt = AdamW([p], lr=0.1, weight_decay=0.0, eps=0.0)
    p.grad = np.array([0.5, -4.0, 1e-3])
    opt.step()
    np.testing.assert_allclose(p.data, [0.9, -1.9, 2.9], rtol=1e-12)


def test_decay_groups_split_matrices_from_vectors():
    net = make_net()
    decay, no_decay = decay_groups(net.parameters(), 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {
        id(net.emb.weight), id(net.fc.weight), id(net.out.weight)}
    assert {id(p) for p in no_decay["params"]} == {
        id(net.fc.bias), id(net.norm.weight), id(net.norm.bias), id(net.out.bias)}


def test_weight_decay_applies_only_to_the_decay_group():
    net = make_net(dtype=np.float64)
    opt = AdamW(decay_groups(net.parameters(), 0.5), lr=0.1)
    before = params_of(net)
    for p in net.parameters():
        p.grad = np.zeros_like(p.data)                          # no gradient: decay only
    opt.step()
    after = params_of(net)
    np.testing.assert_allclose(after["fc.weight"], before["fc.weight"] * (1 - 0.1 * 0.5))
    np.testing.assert_array_equal(after["norm.weight"], before["norm.weight"])
    np.testing.assert_array_equal(after["fc.bias"], before["fc.bias"])


# ----- clipping --------------------------------------------------------------------------
@pytest.mark.parametrize("max_norm", [0.5, 1e6])
def test_clip_grad_norm_returns_the_pre_clip_norm_and_clips_like_torch(max_norm):
    rng = np.random.default_rng(0)
    params = [Parameter(rng.standard_normal(s), dtype=np.float64) for s in [(3, 4), (4,), (2,)]]
    grads = [rng.standard_normal(p.shape) for p in params]
    for p, g in zip(params, grads):
        p.grad = g.copy()
    expected_norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads))
    norm = clip_grad_norm(params, max_norm)
    assert norm == pytest.approx(expected_norm, rel=1e-12)
    new_norm = math.sqrt(sum(float((p.grad ** 2).sum()) for p in params))
    assert new_norm == pytest.approx(min(expected_norm, max_norm), rel=1e-5)
    if torch is not None:
        ts = [torch.zeros(p.shape, dtype=torch.float64, requires_grad=True) for p in params]
        for t, g in zip(ts, grads):
            t.grad = torch.tensor(g)
        torch_norm = torch.nn.utils.clip_grad_norm_(ts, max_norm)
        assert norm == pytest.approx(float(torch_norm), rel=1e-12)
        for p, t in zip(params, ts):
            np.testing.assert_allclose(p.grad, t.grad.numpy(), rtol=1e-12)


def test_fast_clip_grad_norm_over_many_blocks_is_exact_and_independent_of_threads(fast):
    """With tensor.fast, gradients bigger than one block (threads.BLOCK) are summed and
    scaled in blocks on both cores: the float32 norm matches float64's to 1e-6 (a single
    float32 dot over millions of values drifts more), every value is scaled, and 1 or 2
    threads agree bit for bit. The non-contiguous gradient takes the plain path."""
    rng = np.random.default_rng(3)
    shapes = [(700, 1000), (5 * threads.BLOCK + 3,), (64, 48)]
    grads = [rng.standard_normal(s, dtype=np.float32) for s in shapes]
    grads[2] = grads[2].T                                   # (48, 64), not C-contiguous
    truth = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads))
    results = []
    for n in (1, 2):
        params = [Parameter(np.zeros(g.shape, np.float32)) for g in grads]
        for p, g in zip(params, grads):
            p.grad = g.copy()
        threads.set_threads(n)
        try:
            norm = clip_grad_norm(params, 1.0)
        finally:
            threads.set_threads(2)
        assert norm == pytest.approx(truth, rel=1e-6)
        scale = np.float32(1.0 / (norm + 1e-6))
        for p, g in zip(params, grads):
            np.testing.assert_array_equal(p.grad, g * scale)
        results.append((norm, [p.grad for p in params]))
    assert results[0][0] == results[1][0]
    for a, b in zip(results[0][1], results[1][1]):
        np.testing.assert_array_equal(a, b)


def test_clip_grad_norm_skips_parameters_without_gradients():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(3))
    a.grad = np.array([3.0, 4.0], dtype=np.float32)
    assert clip_grad_norm([a, b], 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(a.grad, [0.6, 0.8], rtol=1e-5)
    assert b.grad is None
    assert clip_grad_norm([b], 1.0) == 0.0


# ----- nanoGPT's learning-rate schedule --------------------------------------------------
def test_get_lr_follows_nanogpt_warmup_cosine_and_floor():
    lr, warmup, decay_iters, min_lr = 6e-4, 10, 110, 6e-5
    sched = lambda it: get_lr(it, lr, warmup, decay_iters, min_lr)   # noqa: E731
    # warmup: lr * (it + 1) / (warmup + 1)
    assert sched(0) == pytest.approx(6e-4 / 11)
    assert sched(4) == pytest.approx(6e-4 * 5 / 11)
    assert sched(9) == pytest.approx(6e-4 * 10 / 11)
    # cosine: min + (1 + cos(pi r)) / 2 * (lr - min), r = (it - 10) / 100
    assert sched(10) == pytest.approx(6e-4)                           # r = 0
    assert sched(35) == pytest.approx(6e-5 + (1 + math.sqrt(0.5)) / 2 * 5.4e-4)  # r = 1/4
    assert sched(60) == pytest.approx(3.3e-4)                         # r = 1/2: midpoint
    assert sched(85) == pytest.approx(6e-5 + (1 - math.sqrt(0.5)) / 2 * 5.4e-4)  # r = 3/4
    assert sched(110) == pytest.approx(6e-5)                          # r = 1
    # after lr_decay_iters: the floor
    assert sched(111) == 6e-5 and sched(10_000) == 6e-5
    # monotone: up during warmup, down during decay
    values = [sched(i) for i in range(120)]
    assert all(a < b for a, b in zip(values[:10], values[1:11]))
    assert all(a >= b for a, b in zip(values[10:], values[11:]))


def test_get_lr_without_warmup_starts_at_the_peak():
    assert get_lr(0, 1e-3, 0, 100, 1e-4) == pytest.approx(1e-3)
    assert get_lr(50, 1e-3, 0, 100, 1e-4) == pytest.approx(5.5e-4)


# ----- parameters own their storage --------------------------------------------------------
def test_an_optimizer_leaves_every_parameter_array_where_it_was():
    net = make_net()
    arrays = {name: p.data for name, p in net.named_parameters()}
    opt = AdamW(decay_groups(net.parameters(), 0.1))
    ids, targets = batch(0)
    net(ids, targets).backward()
    opt.step()
    for name, p in net.named_parameters():
        assert p.data is arrays[name], name                    # updated in place, not moved
        assert p.grad is not None and not np.shares_memory(p.grad, p.data), name


@pytest.mark.parametrize("order", ["optimizer first", "model changed first"])
def test_step_works_whatever_order_the_model_and_optimizer_were_made_in(order):
    """Making the optimizer before a parameter's array is replaced (as model.to(device) or a
    dtype change does) must not matter: a step reads p.data and p.grad when it runs."""
    results = []
    for which in ("optimizer first", "model changed first"):
        net = make_net()
        if which == "optimizer first":
            opt = AdamW(decay_groups(net.parameters(), 0.1), lr=0.01)
        for p in net.parameters():
            p.data = p.data.astype(np.float64)                 # a new array for every parameter
        net.to("cpu")
        if which == "model changed first":
            opt = AdamW(decay_groups(net.parameters(), 0.1), lr=0.01)
        for step in range(3):
            train_step(net, opt, step, clip=1.0)
        assert all(p.data.dtype == np.float64 for p in net.parameters())
        assert all(opt.state_of(p)["m"].dtype == np.float64 for p in net.parameters())
        results.append(params_of(net))
    first, second = results
    assert any(not np.array_equal(first[k], make_net().parameters()[0].data) for k in first)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_linear_of_a_weight_with_itself_adds_both_gradients():
    w0 = np.random.default_rng(0).standard_normal((4, 4))
    w = Parameter(w0, dtype=np.float64)
    F.linear(w, w).sum().backward()                        # x is W: dx and dW both reach w
    ones = np.ones((4, 4))
    np.testing.assert_allclose(w.grad, ones @ w0 + ones.T @ w0, rtol=1e-12)


def test_a_parameter_in_two_groups_is_kept_once_in_the_first():
    p, q = Parameter(np.ones((2, 3))), Parameter(np.ones(4))
    opt = SGD([{"params": [p]}, {"params": [p, q], "lr": 0.5}], lr=0.1)
    assert len(opt.params) == 2 and opt.state_dict()["buf"].size == 10
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)


def test_a_parameter_repeated_in_one_list_is_kept_once():
    p, q = Parameter(np.ones((2, 3))), Parameter(np.ones(4))
    opt = SGD([p, q, p], lr=0.1)
    assert len(opt.params) == 2 and opt.state_dict()["buf"].size == 10


@pytest.mark.parametrize("zero", ["model", "optimizer"])
def test_step_uses_fresh_gradients_after_either_zero_grad(zero):
    net = make_net()
    opt = SGD(net.parameters(), lr=0.5)
    for step in range(3):
        (net if zero == "model" else opt).zero_grad()
        assert all(p.grad is None for p in net.parameters())
        before = params_of(net)
        ids, targets = batch(step)
        net(ids, targets).backward()
        grads = {n: np.array(p.grad, copy=True) for n, p in net.named_parameters()}
        opt.step()
        for name, p in net.named_parameters():              # exactly p - lr * g, this step's g
            np.testing.assert_allclose(p.data, before[name] - 0.5 * grads[name],
                                       rtol=1e-6, atol=1e-7, err_msg=name)


def test_gradients_accumulate_until_zeroed():
    net = make_net(dtype=np.float64)
    opt = SGD(net.parameters(), lr=1.0)
    ids, targets = batch(0)
    net(ids, targets).backward()
    once = {n: np.array(p.grad, copy=True) for n, p in net.named_parameters()}
    assert max(float(np.abs(g).max()) for g in once.values()) > 0
    net(ids, targets).backward()
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, 2 * once[name], rtol=1e-12, err_msg=name)
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net(ids, targets).backward()                 # a new gradient, not added to the old one
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, once[name], rtol=1e-12, err_msg=name)


def test_module_load_state_dict_copies_into_the_parameters_in_place():
    net, other = make_net(0), make_net(1)
    opt = SGD(net.parameters(), lr=0.1)
    arrays = [p.data for p in net.parameters()]
    net.load_state_dict(params_of(other))
    assert all(p.data is a for p, a in zip(net.parameters(), arrays))
    for name, value in params_of(other).items():
        np.testing.assert_array_equal(dict(net.named_parameters())[name].data, value)
    before = params_of(net)
    train_step(net, opt, 0)
    after = params_of(net)
    assert all(not np.array_equal(before[k], after[k]) for k in ("fc.weight", "out.bias"))


# ----- optimizer state: resume and validation ---------------------------------------------
def resume_matches_uninterrupted(make_opt):
    net = make_net(0)
    opt = make_opt(net)
    for step in range(3):
        train_step(net, opt, step, clip=1.0)
    model_state = copy.deepcopy(params_of(net))
    opt_state = copy.deepcopy(opt.state_dict())            # a checkpoint writes copies
    for step in range(3, 7):
        train_step(net, opt, step, clip=1.0, lr=0.01 / (step - 1))
    uninterrupted = params_of(net)

    resumed = make_net(5)                                   # different init, then loaded
    opt2 = make_opt(resumed)
    resumed.load_state_dict(model_state)
    opt2.load_state_dict(opt_state)
    for step in range(3, 7):
        train_step(resumed, opt2, step, clip=1.0, lr=0.01 / (step - 1))
    for name, value in params_of(resumed).items():
        np.testing.assert_array_equal(value, uninterrupted[name], err_msg=name)
    return opt2


def test_adamw_state_round_trip_resumes_training_exactly():
    opt = resume_matches_uninterrupted(
        lambda net: AdamW(decay_groups(net.parameters(), 0.1), lr=0.01, betas=(0.9, 0.95)))
    assert opt.t == 7


def test_sgd_state_round_trip_resumes_training_exactly():
    opt = resume_matches_uninterrupted(
        lambda net: SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=0.01))
    assert opt.t == 7


def test_resuming_without_the_optimizer_state_differs():
    """The resume tests can fail: dropping AdamW's moments changes the trajectory."""
    net = make_net(0)
    opt = AdamW(net.parameters(), lr=0.01)
    for step in range(3):
        train_step(net, opt, step)
    state = params_of(net)
    train_step(net, opt, 3)
    fresh = make_net(0)
    fresh.load_state_dict(state)
    opt2 = AdamW(fresh.parameters(), lr=0.01)
    train_step(fresh, opt2, 3)
    assert not np.allclose(params_of(fresh)["fc.weight"], params_of(net)["fc.weight"])


def test_loading_a_wrong_shaped_or_incomplete_optimizer_state_raises():
    net = make_net()
    opt = AdamW(net.parameters())

    class Small(Module):
        def __init__(self):
            self.fc = Linear(2, 2)
    other = AdamW(Small().parameters())
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="missing"):
        opt.load_state_dict({"t": 1, "m": opt.state_dict()["m"]})
    sgd = SGD(net.parameters(), momentum=0.9)
    with pytest.raises(ValueError, match="shape"):
        sgd.load_state_dict(SGD(Small().parameters(), momentum=0.9).state_dict())
    with pytest.raises(ValueError, match="missing"):
        sgd.load_state_dict(opt.state_dict())                   # AdamW's state into SGD


# ----- tensor.fast's optimizer kernels against the reference functions --------------------
AdamSettings = dict(lr=3e-3, beta1=0.9, beta2=0.95, eps=1e-8)


@pytest.mark.parametrize("shape,weight_decay", [((5, 3 * threads.BLOCK + 7), 0.1),
                                                ((700,), 0.0), ((3, 1, 4), 0.1), ((1,), 0.0)])
@pytest.mark.parametrize("count", [1, 2])
def test_fast_adamw_update_is_bitwise_equal_to_the_reference(shape, weight_decay, count):
    """Same operations in the same order on every element: bit for bit, on 1 or 2 threads,
    over several steps (t grows), and for a strided (transposed) parameter too."""
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(shape).astype(np.float32)
    ours = [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)]
    ref = [p0.copy(), np.zeros_like(p0), np.zeros_like(p0)]
    threads.set_threads(count)
    try:
        for t in range(1, 4):
            g = rng.standard_normal(shape).astype(np.float32)
            fast_optim.adamw_update_all([(ours[0], g, ours[1], ours[2])], **AdamSettings,
                                        weight_decay=weight_decay, t=t)
            adamw_update(*ref[:1], g, *ref[1:], **AdamSettings, weight_decay=weight_decay, t=t)
    finally:
        threads.set_threads(2)
    for a, b in zip(ours, ref):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(ours[0], p0)
    strided = [a.T.copy().T for a in ref]                   # same values, Fortran order
    g = rng.standard_normal(shape).astype(np.float32)
    fast_optim.adamw_update_all([(strided[0], g, strided[1], strided[2])], **AdamSettings,
                                weight_decay=weight_decay, t=4)
    adamw_update(ref[0], g, ref[1], ref[2], **AdamSettings, weight_decay=weight_decay, t=4)
    for a, b in zip(strided, ref):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("split_min", [0, fast_optim.SPLIT_MIN])
def test_fast_adamw_update_all_over_a_group_is_bitwise_equal_to_the_reference(
        count, split_min, monkeypatch):
    """A group of many arrays, small and big, one strided: the pieces are shared by the two
    threads (split_min 0; a group this small stays on one core otherwise), and every element
    still goes through the reference's operations."""
    monkeypatch.setattr(fast_optim, "SPLIT_MIN", split_min)
    rng = np.random.default_rng(8)
    shapes = [(3,), (70, 90), (2 * threads.BLOCK + 11,), (1,), (128, 512), (40, 50)]
    p0 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    p0[-1] = p0[-1].T                                       # (50, 40), not C-contiguous
    ours = [[a.copy(order="K"), np.zeros_like(a), np.zeros_like(a)] for a in p0]
    ref = [[a.copy(order="K"), np.zeros_like(a), np.zeros_like(a)] for a in p0]
    threads.set_threads(count)
    try:
        for t in range(1, 4):
            grads = [rng.standard_normal(a.shape).astype(np.float32) for a in p0]
            fast_optim.adamw_update_all([(p, g, m, v) for (p, m, v), g in zip(ours, grads)],
                                        **AdamSettings, weight_decay=0.1, t=t)
            adamw_update_all([(p, g, m, v) for (p, m, v), g in zip(ref, grads)],
                             **AdamSettings, weight_decay=0.1, t=t)
    finally:
        threads.set_threads(2)
    for a, b, start in zip(ours, ref, p0):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
        assert not np.array_equal(a[0], start)
    fast_optim.adamw_update_all([], **AdamSettings, weight_decay=0.1, t=1)   # nothing to do


def test_fast_optimizer_kernels_are_what_adamw_and_clipping_run(fast):
    """With tensor.fast enabled, AdamW.step and clip_grad_norm call the fast kernels (and
    the reference functions otherwise): a whole training run gives the same parameters."""
    results = []
    for enabled in (True, False):
        if not enabled:
            tensor.fast.disable()
        net = make_net()
        opt = AdamW(decay_groups(net.parameters(), 0.1), lr=0.01)
        for step in range(4):
            train_step(net, opt, step, clip=0.05)
        results.append(params_of(net))
    for name in results[0]:
        np.testing.assert_allclose(results[0][name], results[1][name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_fast_sum_of_squares_and_scale_equal_the_reference():
    rng = np.random.default_rng(11)
    for shape in [(3 * threads.BLOCK + 5,), (300, 70), (1,), (40, 50)]:
        g = rng.standard_normal(shape).astype(np.float32)
        if shape == (40, 50):
            g = g.T                                          # not contiguous: one piece
        assert fast_optim.sum_of_squares(g) == pytest.approx(sum_of_squares(g), rel=1e-5)
        assert fast_optim.sum_of_squares(g) == pytest.approx(
            float((g.astype(np.float64) ** 2).sum()), rel=1e-6)
        a, b = g.copy(), g.copy()
        fast_optim.scale_(a, 0.3)
        scale_in_place(b, 0.3)
        np.testing.assert_array_equal(a, b)
