"""Optimizers, clipping and the learning-rate schedule (nn/optim.py).

AdamW and SGD are compared with torch.optim step by step (float64: to rounding; float32:
within float32 tolerance); clip_grad_norm with torch.nn.utils.clip_grad_norm_; get_lr
with nanoGPT's formula written out here. Then the flat-buffer design: parameters' .data are
views into one buffer, fresh gradients after model.zero_grad() are used, load_state_dict
keeps the views valid, and an optimizer state round trip resumes training exactly.
"""
import copy
import math

import numpy as np
import pytest

import tensor
import tensor.functional as F
from tensor.fast import threads
from nn import (SGD, GELU, AdamW, Embedding, LayerNorm, Linear, Module, Parameter,
                clip_grad_norm, decay_groups, get_lr)

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


def test_clip_grad_norm_over_many_blocks_is_exact_and_independent_of_threads():
    """Gradients bigger than one block (threads.BLOCK) are summed and scaled in blocks on
    both cores: the float32 norm matches float64's to 1e-6 (a single float32 dot over
    millions of values drifts more), every value is scaled, and 1 or 2 threads agree bit
    for bit. The non-contiguous gradient takes the plain path."""
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


# ----- the flat-buffer design ------------------------------------------------------------
def test_parameters_become_views_into_one_flat_buffer():
    net = make_net()
    before = params_of(net)
    opt = AdamW(decay_groups(net.parameters(), 0.1))
    assert opt.flat.size == net.num_parameters()
    for name, p in net.named_parameters():
        assert np.shares_memory(p.data, opt.flat), name
        np.testing.assert_array_equal(p.data, before[name])   # values kept when packed
        assert p.grad is None and np.shares_memory(p.grad_buffer, opt.flat_grad), name
    ids, targets = batch(0)
    net(ids, targets).backward()                 # the first gradients land in the buffer
    for name, p in net.named_parameters():
        assert p.grad is p.grad_buffer and np.shares_memory(p.grad, opt.flat_grad), name


class TiedNet(Module):
    """An embedding tied to the output layer, as GPT's token embedding and LM head."""

    def __init__(self):
        self.emb = Embedding(10, 6)
        self.fc = Linear(6, 6)

    def forward(self, ids, targets):
        h = self.fc(self.emb(ids))
        return F.cross_entropy(F.linear(h, self.emb.weight), targets)


@pytest.mark.parametrize("make", [make_net, lambda: (tensor.manual_seed(0), TiedNet())[1]])
def test_gradients_written_in_place_equal_the_plain_engine_s(make):
    """With an optimizer, linear's dW goes straight into the empty buffer and embedding rows
    are added into an existing gradient; without one, every gradient is a fresh array."""
    plain, packed = make(), make()
    opt = SGD(packed.parameters(), lr=0.1)
    for _ in range(2):                                     # twice: both calls accumulate
        for net in (plain, packed):
            net(*batch(0)).backward()
    for (name, p), q in zip(plain.named_parameters(), packed.parameters()):
        assert q.grad is q.grad_buffer and np.shares_memory(q.grad, opt.flat_grad), name
        np.testing.assert_allclose(q.grad, p.grad, rtol=1e-5, atol=1e-7, err_msg=name)


def test_linear_of_a_weight_with_itself_does_not_write_its_gradient_twice():
    w0 = np.random.default_rng(0).standard_normal((4, 4))
    expected = Parameter(w0, dtype=np.float64)
    F.linear(expected, expected).sum().backward()
    w = Parameter(w0, dtype=np.float64)
    SGD([w], lr=0.1)                                       # gives w a grad_buffer
    F.linear(w, w).sum().backward()                        # x is W: dx and dW both reach w
    np.testing.assert_allclose(w.grad, expected.grad, rtol=1e-12)
    ones = np.ones((4, 4))
    np.testing.assert_allclose(w.grad, ones @ w0 + ones.T @ w0, rtol=1e-12)


def test_moving_a_model_forgets_the_optimizer_buffers():
    net = make_net()
    SGD(net.parameters(), lr=0.1)
    net.to("cpu")
    assert all(p.grad_buffer is None for p in net.parameters())


def test_a_parameter_in_two_groups_is_packed_once_in_the_first():
    p, q = Parameter(np.ones((2, 3))), Parameter(np.ones(4))
    opt = SGD([{"params": [p]}, {"params": [p, q], "lr": 0.5}], lr=0.1)
    assert opt.flat.size == 10 and len(opt.params) == 2
    assert [len(g["params"]) for g in opt.param_groups] == [1, 1]
    with pytest.raises(ValueError, match="empty"):
        SGD([], lr=0.1)


def test_a_parameter_repeated_in_one_list_is_packed_once():
    p, q = Parameter(np.ones((2, 3))), Parameter(np.ones(4))
    opt = SGD([p, q, p], lr=0.1)
    assert opt.flat.size == 10 and len(opt.params) == 2


@pytest.mark.parametrize("zero", ["model", "optimizer"])
def test_step_uses_fresh_gradients_after_either_zero_grad(zero):
    net = make_net()
    opt = SGD(net.parameters(), lr=0.5)
    for step in range(3):
        (net if zero == "model" else opt).zero_grad()
        if zero == "model":
            assert all(p.grad is None for p in net.parameters())
        before = params_of(net)
        ids, targets = batch(step)
        net(ids, targets).backward()
        grads = {n: np.array(p.grad, copy=True) for n, p in net.named_parameters()}
        opt.step()
        for name, p in net.named_parameters():              # exactly p - lr * g, this step's g
            np.testing.assert_allclose(p.data, before[name] - 0.5 * grads[name],
                                       rtol=1e-6, atol=1e-7, err_msg=name)
            assert np.shares_memory(p.data, opt.flat)


def test_gradients_accumulate_into_the_flat_buffer_until_zeroed():
    net = make_net(dtype=np.float64)
    opt = SGD(net.parameters(), lr=1.0)
    ids, targets = batch(0)
    net(ids, targets).backward()
    once = np.array(opt.flat_grad, copy=True)
    assert np.abs(once).max() > 0
    net(ids, targets).backward()
    np.testing.assert_allclose(opt.flat_grad, 2 * once, rtol=1e-12)
    opt.zero_grad()
    assert all(p.grad is None for p in net.parameters())
    net(ids, targets).backward()                 # written over the old values, not added
    np.testing.assert_allclose(opt.flat_grad, once, rtol=1e-12)


def test_module_load_state_dict_keeps_the_optimizer_views_valid():
    net, other = make_net(0), make_net(1)
    opt = SGD(net.parameters(), lr=0.1)
    net.load_state_dict(params_of(other))
    for name, p in net.named_parameters():
        assert np.shares_memory(p.data, opt.flat), name
    np.testing.assert_array_equal(opt.flat, np.concatenate(
        [v.reshape(-1) for v in params_of(other).values()]))
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
        opt.load_state_dict({"t": 1, "m": opt.m})
    sgd = SGD(net.parameters(), momentum=0.9)
    with pytest.raises(ValueError, match="shape"):
        sgd.load_state_dict(SGD(Small().parameters(), momentum=0.9).state_dict())
    with pytest.raises(ValueError, match="missing"):
        sgd.load_state_dict(opt.state_dict())                   # AdamW's state into SGD
