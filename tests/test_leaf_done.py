"""Tensor.backward(leaf_done=fn): fn(leaf) once per leaf that needs a gradient, as soon as no
later step of backward adds to its .grad (what nn.GradientReducer's overlap relies on:
tensor/graph.py leaves_done_after).

Random programs over a pool of leaves (some reused, some not needing a gradient, some not
reached at all): at the call, .grad already holds its final value; every reached leaf is
called exactly once; the gradients are the same bits as a backward without the hook."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tensor import Tensor

OPS = ("add", "mul", "sub", "tanh", "exp_neg_square", "sum_keep")


def apply(op, a, b):
    if op == "add":
        return a + b
    if op == "mul":
        return a * b
    if op == "sub":
        return a - b
    if op == "tanh":
        return a.tanh()
    if op == "exp_neg_square":
        return (-(a * a)).exp()
    return a.sum(axis=-1, keepdims=True) * b             # (2, 1) * (2, 3): broadcasting


programs = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 10 ** 6),
                              st.integers(0, 10 ** 6)), min_size=1, max_size=12)


def run(program, n_leaves, needs, seed, hook):
    """The program's leaves and, after backward(leaf_done=hook), their gradients."""
    rng = np.random.default_rng(seed)
    leaves = [Tensor(rng.standard_normal((2, 3)), requires_grad=needs[i % len(needs)],
                     dtype="float64") for i in range(n_leaves)]
    pool = list(leaves)
    for op, i, j in program:
        pool.append(apply(op, pool[i % len(pool)], pool[j % len(pool)]))
    out = pool[-1]
    if not out.requires_grad:
        return leaves, None
    (out * out).sum().backward(leaf_done=hook)
    return leaves, [None if leaf.grad is None else leaf.grad.copy() for leaf in leaves]


@settings(max_examples=60, deadline=None)
@given(program=programs, n_leaves=st.integers(1, 4),
       needs=st.lists(st.booleans(), min_size=1, max_size=4), seed=st.integers(0, 2 ** 16))
def test_each_reached_leaf_is_called_once_with_its_final_gradient(program, n_leaves, needs,
                                                                  seed):
    seen = []
    leaves, grads = run(program, n_leaves, needs, seed,
                        lambda leaf: seen.append((id(leaf), leaf.grad.copy())))
    if grads is None:
        return
    _, plain = run(program, n_leaves, needs, seed, None)
    ids = [i for i, _ in seen]
    assert len(ids) == len(set(ids))                                # once each
    reached = {id(leaf) for leaf, g in zip(leaves, grads) if g is not None}
    assert set(ids) == reached                                      # every reached one, only
    final = {id(leaf): g for leaf, g in zip(leaves, grads)}
    for i, at_call in seen:
        assert np.array_equal(at_call, final[i])                    # already final
    for g, p in zip(grads, plain):
        assert (g is None) == (p is None) and (g is None or np.array_equal(g, p))


def test_a_leaf_used_only_early_is_done_before_the_end():
    a = Tensor(np.ones((2, 3)), requires_grad=True, dtype="float64")   # used first
    b = Tensor(np.ones((2, 3)), requires_grad=True, dtype="float64")   # used at every step
    x = a * b
    for _ in range(5):
        x = (x * b).tanh()
    order = []
    x.sum().backward(leaf_done=lambda leaf: order.append("a" if leaf is a else "b"))
    # b's last consumer is a * b (the first op) as well, so a and b finish together there;
    # a leaf used only by the last op finishes first:
    c = Tensor(np.ones((2, 3)), requires_grad=True, dtype="float64")
    y = (a * 2.0).tanh().tanh().tanh() * c
    done = []
    y.sum().backward(leaf_done=lambda leaf: done.append(leaf))
    assert sorted(order) == ["a", "b"]
    assert done[0] is c and done[1] is a


def test_backward_on_a_leaf_calls_the_hook_for_it():
    a = Tensor(np.ones(3), requires_grad=True)
    seen = []
    a.backward(np.full(3, 2.0), leaf_done=seen.append)
    assert seen == [a] and np.array_equal(a.grad, np.full(3, 2.0))
