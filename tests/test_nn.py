"""nn.Module, nn.ModuleList and the layers (Linear, Embedding, LayerNorm, Dropout, GELU).

Module: parameters and submodules found by attribute, dotted names, tied parameters listed
once, state_dict / load_state_dict (strict and not), train/eval, zero_grad, to, counts.
Layers: float64 gradient checks of the input AND every parameter against finite
differences, and forward/backward against torch.nn when torch is importable.
"""
import numpy as np
import pytest

import nn
import tensor
from nn import GELU, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList, Parameter
from tensor import Tensor
from tensor.finite_differences import gradcheck

try:
    import torch
except ImportError:  # the torch comparisons skip; everything else runs
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


# ----- small modules used throughout -----------------------------------------------------
class Inner(Module):
    def __init__(self):
        self.lin = Linear(3, 4)
        self.norm = LayerNorm(4)


class Outer(Module):
    def __init__(self):
        self.scale = Parameter(np.ones(2))
        self.inner = Inner()
        self.count = 7                          # plain attributes are not parameters
        self.table = np.zeros((5, 5))           # nor are arrays
        self.const = Tensor(np.ones(3))         # nor are Tensors that are not Parameters
        self.head = Linear(4, 2, bias=False)
        self.drop = Dropout(0.5)

    def forward(self, x):
        return self.drop(self.head(self.inner.norm(self.inner.lin(x))))


class Tied(Module):
    """Two submodules sharing one Parameter (the pattern of a tied LM head)."""

    def __init__(self):
        self.emb = Embedding(6, 4)
        self.head = Linear(4, 6, bias=False)
        self.head.weight = self.emb.weight


OUTER_NAMES = ["scale", "inner.lin.weight", "inner.lin.bias", "inner.norm.weight",
               "inner.norm.bias", "head.weight"]


def snapshot(module):
    return {k: np.array(v, copy=True) for k, v in module.state_dict().items()}


# ----- registration and naming ------------------------------------------------------------
def test_parameters_and_submodules_are_found_by_attribute_in_assignment_order():
    m = Outer()
    assert [name for name, _ in m.named_parameters()] == OUTER_NAMES
    assert [name for name, _ in m.children()] == ["inner", "head", "drop"]
    assert [name for name, _ in m.named_modules()] == [
        "", "inner", "inner.lin", "inner.norm", "head", "drop"]
    assert all(isinstance(p, Parameter) and p.requires_grad for p in m.parameters())
    assert m.parameters()[1] is m.inner.lin.weight


def test_attributes_assigned_later_are_registered_too():
    m = Outer()
    m.extra = Linear(2, 2)
    m.inner.gain = Parameter(np.ones(4))
    names = [name for name, _ in m.named_parameters()]
    assert names[-2:] == ["extra.weight", "extra.bias"]
    assert "inner.gain" in names


def test_num_parameters_is_the_total_element_count():
    m = Outer()
    # scale 2, lin 3*4 + 4, norm 4 + 4, head 4*2 (no bias)
    assert m.num_parameters() == 2 + 12 + 4 + 4 + 4 + 8
    assert Linear(3, 4, bias=False).num_parameters() == 12
    assert LayerNorm(5, bias=False).num_parameters() == 5


def test_a_tied_parameter_is_listed_once_under_its_first_name():
    m = Tied()
    assert [name for name, _ in m.named_parameters()] == ["emb.weight"]
    assert m.num_parameters() == 6 * 4
    assert list(m.state_dict()) == ["emb.weight"]
    # Tied means the same object: a gradient from either use lands in the one .grad.
    ids = np.array([[1, 2, 2]])
    logits = m.head(m.emb(ids))
    logits.sum().backward()
    emb_only = np.zeros((6, 4))
    np.add.at(emb_only, ids.ravel(), m.emb.weight.data.sum(axis=0))   # d(sum)/dE via lookup
    head_only = np.tile(m.emb.weight.data[ids.ravel()].sum(axis=0), (6, 1))  # via the head
    np.testing.assert_allclose(m.emb.weight.grad, emb_only + head_only, rtol=1e-5)


def test_named_parameters_prefix_is_dotted_like_named_modules():
    m = Outer()
    assert [n for n, _ in m.named_modules("model")][:2] == ["model", "model.inner"]
    assert [n for n, _ in m.named_parameters("model")][:2] == ["model.scale",
                                                               "model.inner.lin.weight"]


def test_module_list_names_by_index_and_behaves_like_a_list():
    layers = ModuleList([Linear(2, 3), Linear(3, 3)])
    assert len(layers) == 2
    assert layers[1] is list(layers)[1]
    layers.append(LayerNorm(3))
    assert len(layers) == 3 and isinstance(layers[2], LayerNorm)
    assert [n for n, _ in layers.named_parameters()] == [
        "0.weight", "0.bias", "1.weight", "1.bias", "2.weight", "2.bias"]

    class Stack(Module):
        def __init__(self):
            self.blocks = layers

    assert [n for n, _ in Stack().named_parameters()][:2] == ["blocks.0.weight", "blocks.0.bias"]
    assert ModuleList().num_parameters() == 0


# ----- state_dict / load_state_dict -------------------------------------------------------
def test_state_dict_round_trip_into_a_fresh_module_is_exact():
    tensor.manual_seed(1)
    a = Outer()
    tensor.manual_seed(2)
    b = Outer()
    assert not np.array_equal(a.inner.lin.weight.data, b.inner.lin.weight.data)
    assert b.load_state_dict(a.state_dict()) == []
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        np.testing.assert_array_equal(pa.data, pb.data, err_msg=name)
    x = Tensor(np.random.default_rng(0).standard_normal((2, 3)))
    a.eval(), b.eval()
    np.testing.assert_array_equal(a(x).data, b(x).data)


def test_load_state_dict_copies_in_place_and_does_not_alias_the_source():
    a, b = Outer(), Outer()
    arrays_before = [p.data for p in b.parameters()]
    state = snapshot(a)
    b.load_state_dict(state)
    assert all(p.data is arr for p, arr in zip(b.parameters(), arrays_before))
    state["head.weight"][...] = 123.0            # changing the source afterwards ...
    assert not np.any(b.head.weight.data == 123.0)  # ... does not reach the module


def test_strict_load_names_every_missing_unexpected_and_wrong_shaped_key_at_once():
    m = Outer()
    before = snapshot(m)
    state = snapshot(Outer())
    del state["scale"], state["inner.norm.bias"]                  # two missing
    state["ghost.weight"] = np.zeros(3)                           # two unexpected
    state["inner.extra"] = np.zeros(1)
    state["head.weight"] = np.zeros((3, 3))                       # one wrong shape
    with pytest.raises(ValueError) as info:
        m.load_state_dict(state)
    msg = str(info.value)
    for key in ("scale", "inner.norm.bias", "ghost.weight", "inner.extra", "head.weight"):
        assert key in msg, f"{key!r} not named in: {msg}"
    assert "(3, 3)" in msg and "(2, 4)" in msg                    # both shapes shown
    after = snapshot(m)                                           # nothing half-loaded
    assert all(np.array_equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("problem", ["missing", "unexpected", "wrong shape"])
def test_strict_load_rejects_each_kind_of_problem_alone(problem):
    m = Outer()
    state = snapshot(Outer())
    if problem == "missing":
        del state["inner.lin.bias"]
    elif problem == "unexpected":
        state["inner.lin.gain"] = np.ones(4)
    else:
        state["inner.lin.bias"] = np.ones(5)
    with pytest.raises(ValueError, match="inner.lin"):
        m.load_state_dict(state)
    assert len(m.load_state_dict(state, strict=False)) == 1


def test_non_strict_load_returns_the_problems_and_loads_what_matches():
    m = Outer()
    before = snapshot(m)
    source = Outer()
    source.inner.lin.weight.data[...] = 5.0
    state = snapshot(source)
    del state["scale"]
    state["unused"] = np.zeros(2)
    state["head.weight"] = np.zeros((1, 1))
    problems = m.load_state_dict(state, strict=False)
    text = " ".join(problems)
    assert len(problems) == 3
    assert "scale" in text and "unused" in text and "head.weight" in text
    np.testing.assert_array_equal(m.inner.lin.weight.data, 5.0)                # loaded
    np.testing.assert_array_equal(m.scale.data, before["scale"])               # missing
    np.testing.assert_array_equal(m.head.weight.data, before["head.weight"])   # bad shape


# ----- modes, gradients, devices ---------------------------------------------------------
def test_train_and_eval_propagate_to_every_submodule_and_switch_dropout():
    m = Outer()
    assert m.eval() is m
    assert all(not mod.training for mod in m.modules())
    x = Tensor(np.random.default_rng(0).standard_normal((64, 3)))
    np.testing.assert_array_equal(m(x).data, m(x).data)           # eval: deterministic
    assert m.train() is m
    assert all(mod.training for mod in m.modules())
    assert m.drop.training
    y1, y2 = m(x).data, m(x).data
    assert np.mean(y1 == 0) > 0.2 and not np.array_equal(y1, y2)  # dropout active
    m.inner.train(False)                                          # a subtree only
    assert not m.inner.lin.training and m.drop.training


def test_zero_grad_clears_every_gradient():
    m = Outer()
    m.train(False)
    m(Tensor(np.ones((2, 3)))).sum().backward()
    assert all(p.grad is not None for p in m.parameters() if p is not m.scale)
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())


def test_to_cpu_keeps_values_and_drops_gradients():
    m = Outer()
    before = snapshot(m)
    m(Tensor(np.ones((2, 3)))).sum().backward()
    assert m.to("cpu") is m
    assert all(p.device == "cpu" and p.grad is None for p in m.parameters())
    after = snapshot(m)
    assert all(np.array_equal(before[k], after[k]) for k in before)
    with pytest.raises(ValueError, match="unknown device"):
        m.to("tpu")


@pytest.mark.skipif(tensor.cuda_available(), reason="a GPU is present")
def test_to_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match="cuda"):
        Outer().to("cuda")


# ----- layers: forward against formulas ---------------------------------------------------
def test_linear_embedding_layernorm_forward_match_their_formulas():
    rng = np.random.default_rng(0)
    lin = Linear(3, 5)
    x = rng.standard_normal((2, 4, 3))
    np.testing.assert_allclose(lin(Tensor(x)).data, x @ lin.weight.data.T + lin.bias.data,
                               rtol=1e-5, atol=1e-6)
    assert lin.weight.shape == (5, 3) and lin.bias.shape == (5,)
    bound = 1 / np.sqrt(3)                                        # PyTorch's default init
    assert np.abs(lin.weight.data).max() <= bound and np.abs(lin.bias.data).max() <= bound

    emb = Embedding(7, 3)
    ids = np.array([[0, 6, 6], [3, 1, 0]])
    np.testing.assert_array_equal(emb(ids).data, emb.weight.data[ids])
    with pytest.raises(IndexError):
        emb(np.array([7]))

    for bias in (True, False):
        ln = LayerNorm(3, bias=bias)
        ln.weight.data[...] = [1.0, 2.0, -1.0]
        if bias:
            ln.bias.data[...] = [0.5, 0.0, 1.0]
        y = ln(Tensor(x)).data
        n = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5)
        expected = n * [1.0, 2.0, -1.0] + ([0.5, 0.0, 1.0] if bias else 0.0)
        np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_dropout_zeroes_and_rescales_in_training_and_is_identity_in_eval():
    p = 0.25
    drop = Dropout(p)
    x = Tensor(np.random.default_rng(0).uniform(1, 2, size=(200, 50)))
    tensor.manual_seed(0)
    y = drop(x).data
    kept = y != 0
    np.testing.assert_allclose(y[kept], x.data[kept] / (1 - p), rtol=1e-6)
    assert abs(1 - kept.mean() - p) < 0.02                        # 10000 draws: +-0.004 sd
    drop.eval()
    assert drop(x) is x
    assert Dropout(0.0).train()(x) is x
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="dropout"):
            Dropout(bad)


def test_dropout_is_reproducible_after_manual_seed():
    x = Tensor(np.ones((8, 8)))
    tensor.manual_seed(3)
    a = Dropout(0.5)(x).data
    tensor.manual_seed(3)
    b = Dropout(0.5)(x).data
    np.testing.assert_array_equal(a, b)


# ----- layers: float64 gradient checks of inputs and parameters ---------------------------
def check(fn, arrays):
    result = gradcheck(fn, arrays)
    assert result.ok, result.report()
    return result


def params64(layer):
    return [p.data.astype(np.float64) for p in layer.parameters()]


def with_params(layer, names):
    """fn(x, *params) for gradcheck: put the checked parameter tensors in the layer, run it."""
    def fn(x, *params):
        for name, p in zip(names, params):
            setattr(layer, name, p)
        return layer(x)
    return fn


@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck_input_weight_bias(bias):
    tensor.manual_seed(0)
    layer = Linear(4, 3, bias=bias)
    x = np.random.default_rng(1).standard_normal((2, 5, 4))
    names = ["weight", "bias"] if bias else ["weight"]
    result = check(with_params(layer, names), [x] + params64(layer))
    assert len(result.analytic) == 1 + len(names)
    assert all(np.abs(a).max() > 0 for a in result.analytic)     # every gradient is nonzero


def test_embedding_gradcheck_weight_with_repeated_ids():
    tensor.manual_seed(0)
    layer = Embedding(6, 3)
    ids = np.array([[0, 2, 2, 5], [2, 0, 1, 1]])                  # repeats must accumulate

    def fn(w):
        layer.weight = w
        return layer(ids)
    result = check(fn, params64(layer))
    assert np.all(result.analytic[0][3] == 0) and np.abs(result.analytic[0][2]).min() > 0


@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_gradcheck_input_weight_bias(bias):
    layer = LayerNorm(5, bias=bias)
    rng = np.random.default_rng(2)
    layer.weight.data[...] = rng.standard_normal(5)              # not all ones: a real test
    x = rng.standard_normal((3, 2, 5))
    names = ["weight", "bias"] if bias else ["weight"]
    check(with_params(layer, names), [x] + params64(layer))


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_gradcheck(approximate):
    x = np.random.default_rng(3).standard_normal((4, 6)) * 2
    check(GELU(approximate), [x])


def test_dropout_gradcheck_with_a_fixed_mask():
    layer = Dropout(0.3)
    x = np.random.default_rng(4).standard_normal((5, 6))

    def fn(t):
        tensor.manual_seed(11)                                   # the same mask every call
        return layer(t)
    result = check(fn, [x])
    assert np.any(result.analytic[0] == 0) and np.any(result.analytic[0] != 0)


def test_gradcheck_catches_a_wrong_gradient():
    """The checks above can fail: a backward off by a factor is reported."""
    def wrong_square(t):
        return tensor.tensor.make(t.data ** 2, (t,), "bad", lambda dy: (dy * t.data,))
    assert not gradcheck(wrong_square, [np.array([1.0, 2.0])]).ok


# ----- layers against torch.nn ------------------------------------------------------------
def torch_grads(module, x_np, upstream):
    x = torch.tensor(x_np, requires_grad=x_np.dtype.kind == "f")
    y = module(x)
    y.backward(torch.tensor(upstream))
    grads = {n: p.grad.numpy() for n, p in module.named_parameters()}
    return y.detach().numpy(), (x.grad.numpy() if x.grad is not None else None), grads


def our_grads(layer, x_np, upstream):
    x = Tensor(x_np, requires_grad=x_np.dtype.kind == "f",
               dtype=np.float64 if x_np.dtype.kind == "f" else None)
    y = layer(x)
    y.backward(upstream)
    return y.data, x.grad, {n: p.grad for n, p in layer.named_parameters()}


def as_float64(layer):
    for p in layer.parameters():
        p.data = p.data.astype(np.float64)
    return layer


def compare_with_torch(ours, theirs, x):
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            p.copy_(torch.tensor(dict(ours.named_parameters())[name].data))
    upstream = np.random.default_rng(9).standard_normal(
        theirs(torch.tensor(x)).shape).astype(np.float64)
    y_ours, dx_ours, dp_ours = our_grads(ours, x, upstream)
    y_t, dx_t, dp_t = torch_grads(theirs, x, upstream)
    np.testing.assert_allclose(y_ours, y_t, rtol=1e-10, atol=1e-12)
    if dx_t is not None:
        np.testing.assert_allclose(dx_ours, dx_t, rtol=1e-10, atol=1e-12)
    assert set(dp_ours) == set(dp_t)
    for name in dp_t:
        np.testing.assert_allclose(dp_ours[name], dp_t[name], rtol=1e-10, atol=1e-12,
                                   err_msg=name)


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(bias):
    x = np.random.default_rng(0).standard_normal((2, 3, 4))
    compare_with_torch(as_float64(Linear(4, 5, bias=bias)),
                       torch.nn.Linear(4, 5, bias=bias, dtype=torch.float64), x)


@needs_torch
def test_embedding_matches_torch():
    ids = np.array([[1, 4, 4], [0, 1, 6]])
    compare_with_torch(as_float64(Embedding(7, 3)),
                       torch.nn.Embedding(7, 3, dtype=torch.float64), ids)


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
def test_layernorm_matches_torch(bias):
    rng = np.random.default_rng(1)
    ours = as_float64(LayerNorm(6, bias=bias))
    ours.weight.data[...] = rng.standard_normal(6)
    if bias:
        ours.bias.data[...] = rng.standard_normal(6)
    compare_with_torch(ours, torch.nn.LayerNorm(6, bias=bias, dtype=torch.float64),
                       rng.standard_normal((3, 4, 6)))


@needs_torch
@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_matches_torch(approximate):
    x = np.random.default_rng(2).standard_normal((5, 7)) * 3
    compare_with_torch(GELU(approximate), torch.nn.GELU(approximate=approximate), x)


def test_nn_exports():
    for name in ("Module", "ModuleList", "Parameter", "Linear", "Embedding", "LayerNorm",
                 "Dropout", "GELU", "AdamW", "SGD", "clip_grad_norm", "decay_groups", "get_lr"):
        assert hasattr(nn, name), name
