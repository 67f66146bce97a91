"""Freezing: `requires_grad = False` on a parameter, Module.freeze / unfreeze by name.

Every op with parameters returns None, computing nothing, for a parent that needs no
gradient (linear, layer_norm and embedding; the reference ops and tensor.fast's kernels);
a frozen parameter's .grad stays None and its value fixed, while the trainable ones follow
exactly the run where the frozen ones were constants; with only the last block and the
final layer norm trainable, backward never reaches an earlier block and the gradients are
the full model's; the optimizers keep state for trainable parameters only.
"""
import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nn
import tensor
import tensor.fast
from gpt import GPT, GPTConfig
from nn import SGD, AdamW, Linear, Module, ModuleList, clip_grad_norm, decay_groups
from strategies import seeds
from tensor import Tensor, observe_ops
from tensor.embedding import embedding as reference_embedding
from tensor.fast.embedding import embedding as fast_embedding
from tensor.fast.layernorm import layer_norm as fast_layer_norm
from tensor.layernorm import layer_norm as reference_layer_norm
from tensor.linear import linear

TINY = dict(vocab_size=13, block_size=8, n_layer=3, n_head=2, n_embd=8)


def dense(g):
    return g.dense() if hasattr(g, "dense") else g       # a fast embedding's RowGradient


def returned_grads(op, arrays, requires, dy_seed=0):
    """op(*tensors) with requires_grad per input; what its backward returns for a random
    dy (None when no input needs a gradient: then no backward was recorded at all)."""
    tensors = [Tensor(a, requires_grad=r, dtype=np.float64) if a.dtype.kind == "f" else a
               for a, r in zip(arrays, requires)]
    out = op(*tensors)
    if out._backward is None:
        return None
    dy = np.random.default_rng(dy_seed).standard_normal(out.shape)
    return [None if g is None else dense(g) for g in out._backward(dy)]


def check_each_subset(op, arrays, n_params):
    """For every requires_grad pattern of the first n_params inputs: a gradient exactly where
    one is required (equal to the all-trainable run's), None elsewhere."""
    full = returned_grads(op, arrays, [True] * n_params)
    assert all(g is not None for g in full)
    for requires in itertools.product([False, True], repeat=n_params):
        got = returned_grads(op, arrays, list(requires))
        if not any(requires):
            assert got is None, "an op with no input needing a gradient recorded a backward"
            continue
        for i, (g, r) in enumerate(zip(got, requires)):
            if r:
                np.testing.assert_array_equal(g, full[i], err_msg=f"input {i}")
            else:
                assert g is None, f"input {i} needs no gradient, but got one: {requires}"


# ----- the ops skip what nobody needs --------------------------------------------------------
@pytest.mark.parametrize("which", ["reference", "fast"])
@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), C=st.integers(1, 6),
       affine=st.sampled_from(["weight+bias", "weight"]), seed=seeds)
def test_layer_norm_computes_only_the_gradients_required(which, lead, C, affine, seed):
    op = {"reference": reference_layer_norm, "fast": fast_layer_norm}[which]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(lead) + (C,))
    w, b = rng.standard_normal(C), rng.standard_normal(C)
    if affine == "weight+bias":
        check_each_subset(op, [x, w, b], 3)
    else:
        check_each_subset(lambda x, w: op(x, w, None), [x, w], 2)


@pytest.mark.parametrize("which", ["reference", "fast"])
@given(V=st.sampled_from([3, 2000]), C=st.integers(1, 4), n=st.integers(1, 6), seed=seeds)
def test_embedding_of_a_frozen_table_records_no_backward(which, V, C, n, seed):
    """V = 2000 takes the sorted scatter-add path, V = 3 the one-hot product."""
    op = {"reference": reference_embedding, "fast": fast_embedding}[which]
    rng = np.random.default_rng(seed)
    weight, ids = rng.standard_normal((V, C)), rng.integers(0, V, n)
    check_each_subset(lambda w: op(ids, w), [weight], 1)


@given(lead=st.lists(st.integers(1, 3), min_size=1, max_size=2), n_in=st.integers(1, 4),
       n_out=st.integers(1, 4), seed=seeds)
def test_linear_computes_only_the_gradients_required(lead, n_in, n_out, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(tuple(lead) + (n_in,))
    check_each_subset(linear, [x, rng.standard_normal((n_out, n_in)),
                               rng.standard_normal(n_out)], 3)


# ----- Module.freeze / unfreeze -------------------------------------------------------------
class Stack(Module):
    """Twelve layers, so "blocks.1" and "blocks.11" both exist."""

    def __init__(self):
        tensor.manual_seed(0)
        self.blocks = ModuleList([Linear(3, 3) for _ in range(12)])
        self.head = Linear(3, 2, bias=False)

    def forward(self, x):
        for block in self.blocks:
            x = block(x).tanh()
        return self.head(x)


def frozen_names(model):
    return [name for name, p in model.named_parameters() if not p.requires_grad]


def test_a_prefix_matches_whole_dotted_components():
    model = Stack()
    assert model.freeze("blocks.1") == 3 * 3 + 3
    assert frozen_names(model) == ["blocks.1.weight", "blocks.1.bias"]
    assert model.freeze("blocks.11.weight", "head") == 9 + 6
    assert frozen_names(model) == ["blocks.1.weight", "blocks.1.bias", "blocks.11.weight",
                                   "head.weight"]
    assert model.freeze("blocks.1") == 0                       # already frozen: no change
    assert model.unfreeze("blocks") == 2 * 9 + 3
    assert frozen_names(model) == ["head.weight"]


def test_no_names_is_every_parameter_and_the_counts_follow():
    model = Stack()
    total = model.num_parameters()
    assert model.num_trainable_parameters() == total == 12 * 12 + 6
    assert model.freeze() == total
    assert model.num_trainable_parameters() == 0 and model.num_parameters() == total
    assert model.unfreeze("head") == 6
    assert model.num_trainable_parameters() == 6
    assert model.unfreeze() == total - 6
    assert model.num_trainable_parameters() == total


@pytest.mark.parametrize("name, suggestion", [("blocks.12", "blocks.1"),
                                              ("blokcs", "blocks"),
                                              ("heads.weight", "head.weight")])
def test_an_unknown_name_lists_close_valid_ones_and_changes_nothing(name, suggestion):
    model = Stack()
    with pytest.raises(ValueError) as raised:
        model.freeze("blocks.0", name)
    message = str(raised.value)
    assert message.startswith(f"freeze: no parameter is named {name!r}")
    assert suggestion in message.split("did you mean", 1)[1]
    assert "\n" not in message
    assert frozen_names(model) == []                           # blocks.0 was not frozen


def test_a_name_far_from_everything_lists_the_top_level_names():
    with pytest.raises(ValueError, match="under: blocks, head$"):
        Stack().unfreeze("zzzzzzzz")
    with pytest.raises(TypeError, match="names are strings"):
        Stack().freeze(1)


def test_freezing_drops_a_gradient_and_backward_leaves_it_none():
    model = Stack()
    x = Tensor(np.random.default_rng(0).standard_normal((4, 3)))
    model(x).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.freeze("blocks.3")
    assert model.blocks[3].weight.grad is None and model.blocks[3].bias.grad is None
    model.zero_grad()
    model(x).sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == name.startswith("blocks.3."), name


def test_a_tied_weight_is_one_parameter_under_its_first_name():
    model = GPT(GPTConfig(**TINY))
    tied = model.token_embedding.weight
    assert model.freeze("token_embedding") == tied.size
    assert not tied.requires_grad                               # the LM head's weight too


# ----- optimizers keep state for trainable parameters only ----------------------------------
def test_optimizer_state_covers_exactly_the_trainable_parameters():
    model = Stack()
    model.freeze("blocks")
    x = Tensor(np.random.default_rng(1).standard_normal((5, 3)))
    for make in (lambda ps: AdamW(decay_groups(ps, 0.1), lr=1e-2),
                 lambda ps: SGD(ps, lr=1e-2, momentum=0.9)):
        optimizer = make(model.parameters())
        assert optimizer.params == [model.head.weight]
        model.zero_grad()
        model(x).sum().backward()
        optimizer.step()
        assert len(optimizer.state) == 1 and id(model.head.weight) in optimizer.state
        state = optimizer.state_dict()
        for name in optimizer.state_names:
            assert state[name].shape == (model.num_trainable_parameters(),)


def test_an_optimizer_of_only_frozen_parameters_is_a_clear_error():
    model = Stack()
    model.freeze()
    n = len(model.parameters())
    for make in (AdamW, SGD, lambda ps: AdamW(decay_groups(ps, 0.1))):
        with pytest.raises(ValueError, match=rf"only frozen parameters \({n} of them, .*"
                                             r"nothing to train; unfreeze some"):
            make(model.parameters())
    with pytest.raises(ValueError, match="empty parameter list"):
        AdamW([])


def test_decay_groups_leave_frozen_parameters_out():
    model = Stack()
    model.freeze("blocks.0", "head")
    groups = decay_groups(model.parameters(), 0.1)
    listed = [id(p) for group in groups for p in group["params"]]
    assert len(listed) == 11 * 2
    assert id(model.blocks[0].weight) not in listed and id(model.head.weight) not in listed


def test_clip_grad_norm_ignores_parameters_without_a_gradient():
    model = Stack()
    model.freeze("blocks.0", "blocks.5")
    model(Tensor(np.random.default_rng(2).standard_normal((3, 3)))).sum().backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    expected = float(np.sqrt(sum((p.grad.astype(np.float64) ** 2).sum() for p in trainable)))
    before = [p.grad.copy() for p in trainable]
    norm = clip_grad_norm(model.parameters(), max_norm=expected / 2)
    assert np.isclose(norm, expected, rtol=1e-6)
    for p, g in zip(trainable, before):
        np.testing.assert_allclose(p.grad, g * (expected / 2) / (expected + 1e-6), rtol=1e-6)
    assert model.blocks[0].weight.grad is None


def test_a_state_dict_from_another_freezing_is_rejected():
    model = Stack()
    full = AdamW(model.parameters()).state_dict()
    model.freeze("blocks")
    with pytest.raises(ValueError, match="other parameters frozen"):
        AdamW(model.parameters()).load_state_dict(full)


def test_unfreezing_later_and_a_new_optimizer_trains_everything():
    model = Stack()
    x = Tensor(np.random.default_rng(3).standard_normal((4, 3)))
    model.freeze()
    model.unfreeze("head")
    optimizer = AdamW(model.parameters(), lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).sum().backward()
        optimizer.step()
    before = {name: p.data.copy() for name, p in model.named_parameters()}
    assert model.unfreeze() == model.num_parameters() - 6
    optimizer = AdamW(model.parameters(), lr=1e-2)
    optimizer.zero_grad()
    model(x).sum().backward()
    optimizer.step()
    assert optimizer.state_dict()["m"].shape == (model.num_parameters(),)
    for name, p in model.named_parameters():
        assert not np.array_equal(p.data, before[name]), f"{name} did not train"


# ----- frozen parameters behave as constants ---------------------------------------------------
def make_gpt(dtype=np.float64, seed=0):
    tensor.manual_seed(seed)
    model = GPT(GPTConfig(**TINY))
    rng = np.random.default_rng(seed)
    for p in model.parameters():                      # weights of order one: real gradients
        p.data = (p.data + rng.standard_normal(p.shape) * 0.3).astype(dtype)
    return model


def batch(seed=0, B=2, T=6):
    rng = np.random.default_rng(seed)
    return rng.integers(0, TINY["vocab_size"], (B, T)), rng.integers(0, TINY["vocab_size"], (B, T))


def as_constants(model, prefixes):
    """The parameters under prefixes replaced by plain Tensors (no longer parameters)."""
    modules = dict(model.named_modules())
    for name, p in model.named_parameters():
        if any(name == q or name.startswith(q + ".") for q in prefixes):
            owner, attr = name.rsplit(".", 1)
            setattr(modules[owner], attr, Tensor(p.data.copy()))
    return model


@pytest.mark.parametrize("fast", [False, True])
def test_frozen_parameters_stay_put_and_the_rest_trains_as_with_constants(fast):
    if fast and not tensor.fast.enable(tune_malloc=False):
        pytest.skip("TINYGRAD_GPT_FAST=0")
    frozen = ("token_embedding", "blocks.0", "blocks.1.attn")
    runs = {}
    for kind in ("frozen", "constants"):
        model = make_gpt(np.float32)
        if kind == "frozen":
            model.freeze(*frozen)
        else:
            as_constants(model, frozen)
        start = {name: p.data.copy() for name, p in model.named_parameters()}
        optimizer = AdamW(decay_groups(model.parameters(), 0.1), lr=1e-2)
        for step in range(3):
            optimizer.zero_grad()
            x, y = batch(step)
            nn.forward_backward(model, x, y)
            clip_grad_norm(model.parameters(), 1.0)
            for name, p in model.named_parameters():
                assert (p.grad is None) == (not p.requires_grad), name
            optimizer.step()
        runs[kind] = model, start, optimizer
    model, start, optimizer = runs["frozen"]
    constants, _, constant_optimizer = runs["constants"]
    params = dict(model.named_parameters())
    trained = dict(constants.named_parameters())
    assert set(trained) == {n for n, p in params.items() if p.requires_grad}
    for name, p in params.items():
        if p.requires_grad:
            np.testing.assert_array_equal(p.data, trained[name].data, err_msg=name)
        else:
            np.testing.assert_array_equal(p.data, start[name], err_msg=name)
            assert p.grad is None
    assert len(optimizer.state) == len(trained) == len(constant_optimizer.state)
    assert sum(a["m"].size for a in optimizer.state.values()) == \
        model.num_trainable_parameters() == constants.num_parameters()


# ----- only the last block trains: the backward stops there ------------------------------------
class BackwardCalls:
    """Wraps every recorded backward to note (module scope, op, what it returned)."""

    def __init__(self, model):
        self.scopes = nn.module_scopes(model)
        self.calls, self.recorded = [], []

    def __call__(self, out, parents):
        scope = self.scopes.current()
        self.recorded.append((scope, out.op, out._backward is not None))
        if out._backward is None:
            return
        inner = out._backward

        def counted(dy):
            grads = inner(dy)
            self.calls.append((scope, out.op, grads))
            return grads
        out._backward = counted


def run_traced(model, x, y):
    calls = BackwardCalls(model)
    with calls.scopes, observe_ops(calls):
        _, loss = model(x, y)
    loss.backward()
    return calls


@pytest.mark.parametrize("fast", [False, True])
def test_only_the_last_block_trains_and_the_backward_stops_at_it(fast):
    if fast and not tensor.fast.enable(tune_malloc=False):
        pytest.skip("TINYGRAD_GPT_FAST=0")
    last = f"blocks.{TINY['n_layer'] - 1}"
    x, y = batch(7)
    full = make_gpt()
    full_calls = run_traced(full, x, y)
    model = make_gpt()
    model.freeze()
    model.unfreeze(last, "ln_final")
    calls = run_traced(model, x, y)

    allowed = (f"model.{last}", "model.ln_final")
    scopes = {scope for scope, _, _ in calls.calls}
    assert scopes - {"model"} and all(s == "model" or s.startswith(allowed) for s in scopes), \
        scopes
    for scope, op, has_backward in calls.recorded:             # not even recorded below it
        if not (scope == "model" or scope.startswith(allowed)):
            assert not has_backward, f"{op} in {scope} recorded a backward"
    top = [(op, grads) for scope, op, grads in calls.calls if scope == "model"]
    assert [op for op, _ in top] == ["cross_entropy", "linear"]
    assert top[1][1][1] is None                 # the LM head's dW (frozen tied weight): none
    assert len(calls.calls) < len(full_calls.calls)

    full_params = dict(full.named_parameters())
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert name.startswith((last + ".", "ln_final.")), name
            np.testing.assert_array_equal(p.grad, full_params[name].grad, err_msg=name)
        else:
            assert p.grad is None, name
