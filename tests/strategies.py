"""Shared pieces of the engine's test suite: the list of public ops, Hypothesis strategies for
small shapes, well-conditioned random values, and a look into a result's graph.

Values are built from a drawn integer seed with NumPy's default_rng rather than drawn
element by element: Hypothesis still explores (and shrinks) the seed and the shapes, while
the values stay in the ranges where central finite differences are valid:
positive bases for log/sqrt/pow, relu inputs away from its kink, max inputs without ties.
"""
import math

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

# Every public op of the engine: the Tensor operators and methods that record a graph node,
# and tensor.functional. The gradcheck suite has to cover exactly this list, and the list
# has to name every op the engine defines (test_ops_gradcheck.py checks both directions).
PUBLIC_OPS = (
    # elementwise.py
    "add", "sub", "mul", "div", "pow", "neg", "exp", "log", "tanh", "sqrt", "relu",
    # reduce.py
    "sum", "mean", "max", "var",
    # movement.py
    "reshape", "transpose", "permute", "getitem", "masked_fill", "cat", "stack", "split",
    # matmul.py and the fused ops of tensor.functional
    "matmul", "linear", "lora_linear", "softmax", "log_softmax", "layer_norm", "gelu", "gelu_erf",
    "embedding", "cross_entropy", "scaled_dot_product_attention", "dropout",
)

# The few public ops whose graph node has another name (split's pieces are getitems).
GRAPH_NAMES = {"split": "getitem", "scaled_dot_product_attention": "attention"}

MAX_SIZE = 60          # elements per input: keeps every finite-difference check fast

seeds = st.integers(0, 2**32 - 1)


def rng_for(seed):
    return np.random.default_rng(seed)


def size_of(shape):
    return math.prod(shape)


# ----- shapes ---------------------------------------------------------------------------
def shapes(min_dims=0, max_dims=3, min_side=1, max_side=4):
    """Small shapes; sides start at 1 so size-1 dims come up often."""
    return hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side,
                            max_side=max_side).filter(lambda s: size_of(s) <= MAX_SIZE)


def broadcast_pairs(max_dims=3, max_side=4):
    """Two shapes that broadcast against each other, e.g. (3, 1, 4) and (2, 1)."""
    return (hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=max_dims,
                                              min_side=1, max_side=max_side)
            .map(lambda b: b.input_shapes)
            .filter(lambda pair: all(size_of(s) <= MAX_SIZE for s in pair)))


def matmul_shapes():
    """Operand shapes under np.matmul's signature (n?,k),(k,m?)->(n?,m?): 1-D operands,
    2-D, and batch dims that broadcast, like (2, 1, 3, 4) @ (5, 4, 2)."""
    return (hnp.mutually_broadcastable_shapes(signature=np.matmul.signature, max_dims=2,
                                              min_side=1, max_side=3)
            .map(lambda b: b.input_shapes)
            .filter(lambda pair: all(size_of(s) <= MAX_SIZE for s in pair)))


@st.composite
def axes_for(draw, ndim):
    """An axis argument for a reduction: None, an int, or a tuple, negatives included."""
    kind = draw(st.sampled_from(["none", "int", "tuple"] if ndim else ["none", "tuple"]))
    if kind == "none":
        return None
    if ndim == 0:
        return ()
    if kind == "int":
        return draw(st.integers(-ndim, ndim - 1))
    chosen = draw(st.lists(st.integers(0, ndim - 1), unique=True, max_size=ndim))
    return tuple(ax - ndim if draw(st.booleans()) else ax for ax in chosen)


def reduced_count(shape, axis):
    """How many elements a reduction over `axis` combines into each output."""
    if axis is None:
        return size_of(shape)
    axes = (axis,) if isinstance(axis, int) else axis
    return size_of([shape[ax] for ax in axes])


# ----- values ---------------------------------------------------------------------------
def normal(rng, shape, scale=1.0):
    return rng.standard_normal(shape) * scale


def positive(rng, shape, low=0.5, high=2.0):
    """Bases for log, sqrt and pow: away from 0, where their derivatives blow up."""
    return rng.uniform(low, high, shape)


def away_from_zero(rng, shape, low=0.1, high=2.0):
    """|x| >= low, so a finite-difference step never crosses relu's kink at 0."""
    return np.asarray(rng.choice([-1.0, 1.0], shape) * rng.uniform(low, high, shape))


def distinct(rng, shape, gap=0.05):
    """Values at least `gap` apart in a random order: max has one clear winner per slice."""
    n = size_of(shape)
    spread = rng.permutation(n) * gap + rng.uniform(0.0, gap / 4)
    return (spread - spread.mean()).reshape(shape)


# ----- graphs ---------------------------------------------------------------------------
def graph_ops(out):
    """The names of every op in the graph that produced `out` (before backward frees it)."""
    seen, stack, ops = set(), [out], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.op is not None:
            ops.add(node.op)
        stack.extend(node._parents)
    return ops
