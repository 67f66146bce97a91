"""LoRA: the fused op F.lora_linear (tensor/lora.py) and the modules of nn/lora.py.

The op's backward against float64 central differences with any subset of its inputs
frozen (frozen ones must get no gradient and cost none); a wrapped GPT starts exactly as
its base, trains only lora_A/lora_B (the optimizer holding state for nothing else), and
merges back into a plain GPT with the same logits; the initialisation and every bad
argument; and, where PyTorch is installed, the same formula under torch's autograd.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import gpt
import nn
import tensor
import tensor.functional as F
from gpt.attention import CausalSelfAttention
from strategies import normal, rng_for, seeds, shapes
from tensor import Tensor
from tensor.finite_differences import gradcheck

NAMES = ("x", "weight", "bias", "A", "B")
TINY = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)


def reference(x, w, b, a, bb, scale):
    """y = x W^T + b + s (x A^T) B^T in NumPy."""
    return x @ w.T + (0.0 if b is None else b) + scale * (x @ a.T) @ bb.T


def tiny_gpt(seed=0, dtype=np.float64, **overrides):
    tensor.manual_seed(seed)
    model = gpt.GPT(gpt.GPTConfig(**{**TINY, **overrides}))
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def batch(seed=0, B=2, T=8, V=13):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def trainable(model):
    return [p for p in model.parameters() if p.requires_grad]


# ----- the op -------------------------------------------------------------------------------
@given(lead=shapes(max_dims=3, max_side=3), n_in=st.integers(1, 4), n_out=st.integers(1, 4),
       rank=st.integers(1, 4), with_bias=st.booleans(),
       needs_grad=st.tuples(*[st.booleans()] * 5), seed=seeds)
def test_lora_linear_gradcheck_with_any_inputs_frozen(lead, n_in, n_out, rank, with_bias,
                                                      needs_grad, seed):
    """Trainable inputs match central differences; frozen ones (constants of fn) get None
    from the backward itself, not just from the engine: the product is never computed."""
    flags = dict(zip(NAMES, needs_grad))
    if not with_bias:
        flags["bias"] = False
    assume(any(flags.values()))
    rng = rng_for(seed)
    scale = float(rng.uniform(0.25, 4.0))
    arrays = {"x": normal(rng, lead + (n_in,)), "weight": normal(rng, (n_out, n_in)),
              "bias": normal(rng, (n_out,)) if with_bias else None,
              "A": normal(rng, (rank, n_in)), "B": normal(rng, (n_out, rank))}
    checked = [n for n in NAMES if flags[n]]
    frozen = {n: None if arrays[n] is None else Tensor(arrays[n], dtype=np.float64)
              for n in NAMES if not flags[n]}

    def fn(*tensors):
        given_ = {**frozen, **dict(zip(checked, tensors))}
        return F.lora_linear(*(given_[n] for n in NAMES), scale)

    result = gradcheck(fn, [arrays[n] for n in checked], atol=1e-8, rtol=1e-7)
    assert result.ok, result.report()
    assert any(np.any(g != 0) for g in result.numeric)

    leaves = {**frozen, **{n: Tensor(arrays[n], requires_grad=True, dtype=np.float64)
                           for n in checked}}
    out = F.lora_linear(*(leaves[n] for n in NAMES), scale)
    np.testing.assert_allclose(out.numpy(), reference(*(arrays[n] for n in NAMES), scale),
                               rtol=1e-12, atol=1e-12)
    parents = [n for n in NAMES if arrays[n] is not None]
    grads = out._backward(rng.standard_normal(out.shape))
    for name, grad in zip(parents, grads):
        assert (grad is None) == (not flags[name]), name
        if grad is not None:
            assert grad.shape == arrays[name].shape, name


def test_frozen_weight_and_bias_get_no_gradient_and_the_adapter_does():
    rng = rng_for(0)
    x = Tensor(normal(rng, (2, 3, 5)), requires_grad=True)
    w, b = Tensor(normal(rng, (4, 5))), Tensor(normal(rng, (4,)))          # frozen
    a = Tensor(normal(rng, (2, 5)), requires_grad=True)
    bb = Tensor(normal(rng, (4, 2)), requires_grad=True)
    F.lora_linear(x, w, b, a, bb, 2.0).sum().backward()
    assert w.grad is None and b.grad is None
    assert x.grad.shape == (2, 3, 5) and a.grad.shape == (2, 5) and bb.grad.shape == (4, 2)


def test_float32_stays_float32_whatever_the_type_of_scale():
    rng = rng_for(1)
    x, w = Tensor(normal(rng, (3, 4)), requires_grad=True), Tensor(normal(rng, (2, 4)))
    a = Tensor(normal(rng, (1, 4)), requires_grad=True)
    bb = Tensor(normal(rng, (2, 1)), requires_grad=True)
    out = F.lora_linear(x, w, None, a, bb, np.float64(0.5))
    out.sum().backward()
    assert out.dtype == np.float32
    assert {x.grad.dtype, a.grad.dtype, bb.grad.dtype} == {np.dtype(np.float32)}


@pytest.mark.parametrize("x_shape, a_shape, b_shape, message", [
    ((2, 3), (2, 4), (5, 2), "has 3 features"),
    ((2, 4), (2, 3), (5, 2), "A must be"),
    ((2, 4), (2, 4), (5, 3), "B must be"),
    ((2, 4), (2, 4), (4, 2), "B must be"),
])
def test_mismatched_shapes_are_named(x_shape, a_shape, b_shape, message):
    args = [Tensor(np.zeros(s)) for s in (x_shape, (5, 4), a_shape, b_shape)]
    with pytest.raises(ValueError, match=message):
        F.lora_linear(args[0], args[1], None, args[2], args[3], 1.0)


# ----- the module ---------------------------------------------------------------------------
def test_lora_linear_module_wraps_the_linear_it_is_given():
    tensor.manual_seed(3)
    base = nn.Linear(64, 32)
    layer = nn.LoRALinear(base, rank=64, alpha=16)
    assert layer.weight is base.weight and layer.bias is base.bias
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    assert [n for n, _ in layer.named_parameters()] == ["weight", "bias", "lora_A", "lora_B"]
    assert layer.lora_A.shape == (64, 64) and layer.lora_B.shape == (32, 64)
    assert layer.lora_A.requires_grad and layer.lora_B.requires_grad
    assert layer.scale == 16 / 64 and not np.any(layer.lora_B.data)
    # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)), std bound / sqrt(3)
    bound, A = 1 / math.sqrt(64), layer.lora_A.numpy()
    assert np.abs(A).max() <= bound and np.abs(A).max() > 0.95 * bound
    assert abs(A.std() - bound / math.sqrt(3)) < 0.05 * bound / math.sqrt(3)
    assert abs(A.mean()) < 0.05 * bound


def test_initialisation_is_reproducible_and_follows_dtype():
    def draw(seed):
        tensor.manual_seed(seed)
        return nn.LoRALinear(nn.Linear(6, 5), rank=3, alpha=6)
    np.testing.assert_array_equal(draw(7).lora_A.numpy(), draw(7).lora_A.numpy())
    assert not np.array_equal(draw(7).lora_A.numpy(), draw(8).lora_A.numpy())
    base = nn.Linear(6, 5)
    base.weight.data = base.weight.data.astype(np.float64)
    layer = nn.LoRALinear(base, rank=2, alpha=1)
    assert layer.lora_A.dtype == layer.lora_B.dtype == np.float64


def test_kaiming_uniform_bound_is_pytorchs():
    """Our documented bound is what torch's kaiming_uniform_(a=sqrt(5)) draws (PEFT's A)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t = torch.empty(64, 256, dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    bound = 1 / math.sqrt(256)
    assert t.abs().max().item() <= bound and t.abs().max().item() > 0.99 * bound


def test_merge_folds_the_update_into_the_weight():
    rng = rng_for(2)
    base = nn.Linear(5, 4)
    for p in base.parameters():
        p.data = p.data.astype(np.float64)
    layer = nn.LoRALinear(base, rank=3, alpha=6)
    layer.lora_B.data[...] = normal(rng, (4, 3))
    merged = layer.merge()
    assert type(merged) is nn.Linear
    np.testing.assert_allclose(merged.weight.numpy(), base.weight.numpy()
                               + 2.0 * layer.lora_B.numpy() @ layer.lora_A.numpy(), rtol=1e-14)
    assert merged.bias is not base.bias and np.array_equal(merged.bias.numpy(), base.bias.numpy())
    assert not merged.weight.requires_grad and not merged.bias.requires_grad
    x = Tensor(normal(rng, (2, 3, 5)), dtype=np.float64)
    np.testing.assert_allclose(merged(x).numpy(), layer(x).numpy(), rtol=1e-12, atol=1e-13)
    assert type(nn.merge_lora(layer)) is nn.Linear


# ----- a GPT with LoRA ----------------------------------------------------------------------
@pytest.mark.parametrize("targets, per_layer, wrapped", [
    (("attn", "mlp"), 18, 6), ("attn", 8, 4), ("mlp", 10, 2), ("mlp,attn", 18, 6)])
def test_apply_lora_wraps_the_named_layers_and_freezes_the_rest(targets, per_layer, wrapped):
    """Trainable count = n_layer r (4 (C + C) + (C + 4C) + (4C + C)) = 18 n_layer r C."""
    model = tiny_gpt()
    base_names = list(model.state_dict())
    names = nn.apply_lora(model, rank=3, alpha=6, targets=targets)
    layers = [name for name, m in model.named_modules() if isinstance(m, nn.LoRALinear)]
    assert names == layers and len(names) == 2 * wrapped           # n_layer = 2
    assert all(n.startswith("blocks.") for n in names)
    lora = [n for n, p in model.named_parameters() if p.requires_grad]
    assert lora == [f"{n}.lora_{ab}" for n in names for ab in "AB"]
    assert sum(p.size for p in trainable(model)) == per_layer * 2 * 3 * 16
    assert [k for k in model.state_dict() if "lora_" not in k] == base_names


def test_a_lora_model_starts_exactly_as_its_base():
    model = tiny_gpt(dtype=np.float32)
    idx, _ = batch()
    before = model(idx)[0].numpy()
    nn.apply_lora(model, rank=4, alpha=8)
    np.testing.assert_array_equal(model(idx)[0].numpy(), before)


def test_training_moves_only_the_adapters_and_merging_keeps_the_logits(tmp_path):
    model = tiny_gpt()
    nn.apply_lora(model, rank=2, alpha=4)
    frozen = {k: v.copy() for k, v in model.state_dict().items() if "lora_" not in k}
    adapters = {k: v.copy() for k, v in model.state_dict().items() if "lora_" in k}
    params = trainable(model)
    optimizer = nn.AdamW(params, lr=1e-2)
    idx, targets = batch()
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        losses.append(nn.forward_backward(model, idx, targets))
        assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
        optimizer.step()
    assert losses[-1] < losses[0]
    state = model.state_dict()
    for k, v in frozen.items():
        np.testing.assert_array_equal(state[k], v, err_msg=k)
    assert all(not np.array_equal(state[k], v) for k, v in adapters.items())
    assert set(optimizer.state) == {id(p) for p in params}
    assert sum(a.size for s in optimizer.state.values() for a in s.values()) \
        == 2 * sum(p.size for p in params)

    logits = model(idx)[0].numpy()
    merged = nn.merge_lora(model)
    assert merged is model
    assert not any(isinstance(m, nn.LoRALinear) for m in model.modules())
    assert list(model.state_dict()) == list(frozen)
    np.testing.assert_allclose(model(idx)[0].numpy(), logits, rtol=1e-10, atol=1e-12)
    model.save_pretrained(tmp_path)                      # a plain GPT-2 again (float32 file)
    loaded = gpt.GPT.from_pretrained(tmp_path)
    np.testing.assert_allclose(loaded(idx)[0].numpy(), logits, rtol=1e-4, atol=1e-4)


def test_adapter_gradients_in_a_gpt_match_finite_differences():
    """The op wired into a model: d loss / d lora_A and lora_B by central differences on a
    few elements of every adapter (B made nonzero so dA is too)."""
    model = tiny_gpt(n_layer=1)
    for p in model.parameters():                         # order-one values, not GPT-2's init
        p.data[...] = normal(rng_for(5), p.shape, 0.3) + (1.0 if p.ndim == 1 else 0.0)
    nn.apply_lora(model, rank=2, alpha=3)
    rng = rng_for(6)
    for layer in (m for m in model.modules() if isinstance(m, nn.LoRALinear)):
        layer.lora_B.data[...] = normal(rng, layer.lora_B.shape, 0.3)
    idx, targets = batch(1)
    model(idx, targets)[1].backward()
    eps = 1e-6
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        for j in rng.choice(p.size, 3, replace=False):
            original = p.data.flat[j]
            p.data.flat[j] = original + eps
            plus = float(model(idx, targets)[1].item())
            p.data.flat[j] = original - eps
            minus = float(model(idx, targets)[1].item())
            p.data.flat[j] = original
            numeric = (plus - minus) / (2 * eps)
            assert abs(p.grad.flat[j] - numeric) <= 1e-8 + 1e-6 * abs(numeric), (name, j)


class OnlyAttention(nn.Module):
    """A model with attention layers and no MLP: "attn" applies, "mlp" does not."""

    def __init__(self):
        self.attn = CausalSelfAttention(gpt.GPTConfig(**TINY))


@pytest.mark.parametrize("kwargs, message", [
    (dict(targets=("attn", "embedding")), r"unknown LoRA target 'embedding'.*attn, mlp"),
    (dict(targets=""), "at least one of: attn, mlp"),
    (dict(targets=()), "at least one of"),
    (dict(rank=0), "rank must be an integer >= 1"),
    (dict(rank=2.5), "rank must be"),
    (dict(rank=True), "rank must be"),
    (dict(alpha=0), "alpha must be a number > 0"),
    (dict(alpha=-1.0), "alpha must be"),
    (dict(alpha=float("nan")), "alpha must be"),
    (dict(alpha="16"), "alpha must be"),
])
def test_bad_arguments_are_one_clear_error_and_change_nothing(kwargs, message):
    model = tiny_gpt()
    with pytest.raises(ValueError, match=message):
        nn.apply_lora(model, **{"rank": 2, "alpha": 4, **kwargs})
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, nn.LoRALinear) for m in model.modules())


def test_a_model_without_the_target_layer_is_named():
    model = OnlyAttention()
    with pytest.raises(ValueError, match=r"'mlp' matches no Linear.*mlp\.mlp_in.*attn, mlp"):
        nn.apply_lora(model, rank=2, alpha=4, targets=("attn", "mlp"))
    assert all(p.requires_grad for p in model.parameters())
    assert nn.apply_lora(model, 2, 4, targets="attn") == [
        "attn.query", "attn.key", "attn.value", "attn.attn_out"]


def test_applying_twice_is_an_error_and_merging_a_plain_model_changes_nothing():
    model = tiny_gpt()
    nn.apply_lora(model, rank=2, alpha=4, targets="attn")
    with pytest.raises(ValueError, match="already applied to blocks.0.attn.query"):
        nn.apply_lora(model, rank=2, alpha=4)
    plain = tiny_gpt()
    before = {k: v.copy() for k, v in plain.state_dict().items()}
    assert nn.merge_lora(plain) is plain
    assert all(np.array_equal(v, before[k]) for k, v in plain.state_dict().items())
    with pytest.raises(TypeError, match="wraps an nn.Linear"):
        nn.LoRALinear(nn.LayerNorm(4), rank=2, alpha=4)


# ----- against PyTorch ----------------------------------------------------------------------
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("weight_trainable", [True, False])
def test_gradients_match_torch_autograd(with_bias, weight_trainable):
    torch = pytest.importorskip("torch")
    rng = rng_for(4)
    scale = 1.5
    arrays = [normal(rng, (2, 3, 5)), normal(rng, (4, 5)), normal(rng, (4,)),
              normal(rng, (3, 5)), normal(rng, (4, 3))]                 # x, W, b, A, B
    needs = [True, weight_trainable, weight_trainable, True, True]
    ours = [Tensor(a, requires_grad=g, dtype=np.float64) for a, g in zip(arrays, needs)]
    theirs = [torch.tensor(a, requires_grad=g) for a, g in zip(arrays, needs)]
    if not with_bias:
        ours[2] = theirs[2] = None
    out = F.lora_linear(*ours, scale)
    x, w, b, a, bb = theirs
    expected = x @ w.T + (0 if b is None else b) + scale * (x @ a.T) @ bb.T
    np.testing.assert_allclose(out.numpy(), expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    upstream = rng.standard_normal(out.shape)
    out.backward(upstream)
    expected.backward(torch.from_numpy(upstream))
    for name, mine, reference_ in zip(NAMES, ours, theirs):
        if mine is None:
            continue
        if not mine.requires_grad:
            assert mine.grad is None and reference_.grad is None, name
            continue
        np.testing.assert_allclose(mine.grad, reference_.grad.numpy(), rtol=1e-10,
                                   atol=1e-12, err_msg=name)
