"""Loss masking: cross_entropy(logits, targets, ignore_index=-100) as PyTorch defines it.

A target equal to ignore_index counts for nothing: the loss is the mean over the counted
targets, an ignored row's logits get exactly zero gradient, and a batch with no counted
target is a ValueError (PyTorch returns NaN there). Checked for the reference op
(tensor/cross_entropy.py) and the fast kernel (tensor/fast/cross_entropy.py): the
hand-derived backward against float64 central differences (tensor.finite_differences),
masking against dropping the ignored rows, and, when torch is installed, loss and gradient
against torch.nn.functional.cross_entropy in float64.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tensor.fast
import tensor.functional as F
from gpt import GPT, GPTConfig
from strategies import seeds
from tensor import Tensor
from tensor.cross_entropy import cross_entropy as reference_cross_entropy
from tensor.fast.cross_entropy import cross_entropy as fast_cross_entropy
from tensor.finite_differences import gradcheck

OPS = {"reference": reference_cross_entropy, "fast": fast_cross_entropy}
ops = pytest.mark.parametrize("which", sorted(OPS))


@st.composite
def masked_case(draw, max_rows=12, max_vocab=7):
    """(logits, targets, ignore_index): (..., V) logits with 1 to 3 leading axes, a random
    fraction of the targets (0 to all but one) set to ignore_index, at least one counted."""
    lead = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)
                      .filter(lambda s: int(np.prod(s)) <= max_rows)))
    vocab = draw(st.integers(1, max_vocab))
    fraction = draw(st.floats(0.0, 1.0))
    ignore_index = draw(st.sampled_from([-100, -1, -7]))
    rng = np.random.default_rng(draw(seeds))
    logits = rng.standard_normal(lead + (vocab,)) * 2.0
    targets = rng.integers(0, vocab, lead)
    targets[rng.random(lead) < fraction] = ignore_index
    if (targets == ignore_index).all():
        targets.flat[rng.integers(targets.size)] = rng.integers(vocab)   # one counted
    return logits, targets, ignore_index


def numpy_loss(logits, targets, ignore_index):
    """The definition, written out: mean over counted rows of logsumexp(x) - x[t]."""
    x = logits.reshape(-1, logits.shape[-1])
    t = targets.reshape(-1)
    kept = np.flatnonzero(t != ignore_index)
    top = x.max(axis=1)
    logsumexp = top + np.log(np.exp(x - top[:, None]).sum(axis=1))
    return float(np.mean(logsumexp[kept] - x[kept, t[kept]]))


def loss_and_grad(op, logits, targets, ignore_index, upstream=1.0):
    x = Tensor(logits, requires_grad=True, dtype=np.float64)
    loss = op(x, targets, ignore_index)
    loss.backward(np.asarray(upstream))
    return loss.item(), x.grad


# ----- the backward against central differences ------------------------------------------
@ops
@given(case=masked_case(), seed=seeds)
def test_masked_gradient_matches_central_differences(which, case, seed):
    logits, targets, ignore_index = case
    result = gradcheck(lambda x, t: OPS[which](x, t, ignore_index), [logits, targets],
                       seed=seed)
    assert result.ok, result.report()
    grad = result.analytic[0]
    assert not grad[targets == ignore_index].any(), "an ignored row got a gradient"


@ops
@given(case=masked_case(), upstream=st.floats(-3.0, 3.0))
def test_masking_equals_dropping_the_ignored_rows(which, case, upstream):
    """The loss over counted rows only, and the gradient of the kept rows alone put back in
    place (zeros elsewhere): the mean is over N_kept, not N."""
    logits, targets, ignore_index = case
    V = logits.shape[-1]
    kept = targets != ignore_index
    loss, grad = loss_and_grad(OPS[which], logits, targets, ignore_index, upstream)
    kept_loss, kept_grad = loss_and_grad(OPS[which], logits[kept].reshape(-1, V),
                                         targets[kept].reshape(-1), ignore_index, upstream)
    assert np.isclose(loss, numpy_loss(logits, targets, ignore_index), rtol=1e-12, atol=1e-14)
    assert np.isclose(loss, kept_loss, rtol=1e-12, atol=1e-14)
    expected = np.zeros_like(grad)
    expected[kept] = kept_grad
    np.testing.assert_allclose(grad, expected, rtol=1e-12, atol=1e-15)


# ----- every target ignored ----------------------------------------------------------------
@ops
@pytest.mark.parametrize("shape", [(1,), (4,), (2, 3)])
def test_every_target_ignored_is_a_value_error_not_nan(which, shape):
    logits = Tensor(np.zeros(shape + (5,)), requires_grad=True)
    with pytest.raises(ValueError) as raised:
        OPS[which](logits, np.full(shape, -100))
    message = str(raised.value)
    assert message.startswith("cross_entropy: every target equals ignore_index (-100): "
                              "nothing to average; ")
    assert "\n" not in message


@pytest.mark.parametrize("fast", [False, True])
def test_the_functional_default_is_minus_100_with_and_without_the_fast_layer(fast):
    """F.cross_entropy (what GPT.forward calls) ignores -100 without being told, through
    whichever kernel is registered, and raises on an all-ignored batch."""
    if fast and not tensor.fast.enable(tune_malloc=False):
        pytest.skip("TINYGRAD_GPT_FAST=0")
    logits = np.random.default_rng(3).standard_normal((2, 3, 4))
    targets = np.array([[1, -100, 2], [-100, -100, 0]])
    loss = F.cross_entropy(Tensor(logits, dtype=np.float64), targets).item()
    assert np.isclose(loss, numpy_loss(logits, targets, -100), rtol=1e-12)
    with pytest.raises(ValueError, match=r"every target equals ignore_index \(-100\)"):
        F.cross_entropy(Tensor(logits), np.full((2, 3), -100))


def test_a_gpt_loss_counts_only_the_unmasked_positions():
    """model(idx, targets) with -100 at padding/prompt positions: the mean over the rest,
    and the masked positions' logits get no gradient."""
    tensor.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 11, (2, 6))
    targets = rng.integers(0, 11, (2, 6))
    targets[0, :4] = -100                                   # a "prompt"
    targets[1, 3:] = -100                                   # "padding"
    logits, loss = model(idx, targets)
    assert np.isclose(loss.item(), numpy_loss(logits.numpy().astype(np.float64), targets, -100),
                      rtol=1e-5)
    logits_leaf = Tensor(logits.numpy(), requires_grad=True)
    F.cross_entropy(logits_leaf, targets).backward()
    assert not logits_leaf.grad[targets == -100].any()
    assert logits_leaf.grad[targets != -100].any()


# ----- PyTorch, the definition's owner (optional) ------------------------------------------
@ops
@given(case=masked_case(max_rows=40, max_vocab=30), upstream=st.floats(0.1, 3.0))
def test_loss_and_gradient_equal_torch_in_float64(which, case, upstream):
    torch = pytest.importorskip("torch")
    logits, targets, ignore_index = case
    V = logits.shape[-1]
    loss, grad = loss_and_grad(OPS[which], logits, targets, ignore_index, upstream)
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    kwargs = {} if ignore_index == -100 else {"ignore_index": ignore_index}   # its default
    expected = torch.nn.functional.cross_entropy(x.reshape(-1, V),
                                                 torch.tensor(targets.reshape(-1)), **kwargs)
    (expected * upstream).backward()
    assert np.isclose(loss, expected.item(), rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_where_torch_returns_nan_we_raise():
    """The one deliberate difference: every target ignored."""
    torch = pytest.importorskip("torch")
    logits = np.zeros((3, 4))
    targets = np.full(3, -100)
    assert np.isnan(torch.nn.functional.cross_entropy(torch.tensor(logits),
                                                      torch.tensor(targets)).item())
    for op in OPS.values():
        with pytest.raises(ValueError, match="nothing to average"):
            op(Tensor(logits), targets)
