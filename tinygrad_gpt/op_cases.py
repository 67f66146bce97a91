"""The op table behind `python -m tinygrad_gpt.gradcheck`: for every op, how to build a
random but well-conditioned example of it.

Each case is (name, the op's Python function, build). `build(rng)` returns (fn, inputs):
`fn` takes Tensors and returns a Tensor; `inputs` are NumPy arrays (float ones are checked,
integer ones such as token ids pass through). The formula printed beside each op comes from
the second half of its function's docstring, so the table and the code cannot disagree.
The four ops with a fast kernel (tensor/dispatch.py) are checked as their reference
functions, the hand-derived code that tensor/ spells out, whether or not tensor.fast is on.

`learner_build(name, fn)` makes the same random cases with a learner's own function in
place of the op (`python -m tinygrad_gpt.gradcheck --function mymodule:myfn --op NAME`);
SIGNATURES says how that function is called.
"""
import numpy as np

import tensor
import tensor.functional as F
from tensor import Tensor, elementwise, matmul, movement, reduce
from tensor.attention import scaled_dot_product_attention
from tensor.cross_entropy import cross_entropy
from tensor.gelu import gelu, gelu_erf
from tensor.layernorm import layer_norm


def shape(rng, ndim=None, low=1, high=4):
    """A random shape; sizes start at 1 so size-1 dims (and broadcasting) come up often."""
    ndim = int(rng.integers(1, 4)) if ndim is None else ndim
    return tuple(int(n) for n in rng.integers(low, high + 1, size=ndim))


def broadcast_partner(rng, shp):
    """A shape that broadcasts against shp: some dims set to 1, some leading dims dropped."""
    partner = [1 if rng.random() < 0.4 else n for n in shp]
    return tuple(partner[int(rng.integers(0, len(partner) + 1)):]) or (1,)


def normal(rng, shp):
    return rng.standard_normal(shp)


def positive(rng, shp):
    return rng.uniform(0.5, 2.0, shp)


def away_from_zero(rng, shp):
    """Values with |x| >= 0.1, so finite differences never cross relu's kink."""
    return rng.choice([-1.0, 1.0], shp) * rng.uniform(0.1, 2.0, shp)


def distinct(rng, shp):
    """Values at least 0.05 apart (no near-ties), so max has a unique winner."""
    n = int(np.prod(shp))
    return (rng.permutation(n) * 0.05 + rng.uniform(0, 0.01)).reshape(shp) - 0.025 * n


def binary(op):
    def build(rng):
        a = shape(rng)
        return op, [normal(rng, a), normal(rng, broadcast_partner(rng, a))]
    return build


def unary(op, values=normal):
    return lambda rng: (op, [values(rng, shape(rng))])


def reduction(op, values=normal):
    def build(rng):
        shp = shape(rng, ndim=int(rng.integers(1, 4)))
        axis = [None, -1, 0, tuple(range(len(shp)))][int(rng.integers(0, 4))]
        keepdims = bool(rng.integers(0, 2))
        return (lambda a: op(a, axis=axis, keepdims=keepdims)), [values(rng, shp)]
    return build


def build_div(op):
    def build(rng):
        a = shape(rng)
        return op, [normal(rng, a), positive(rng, broadcast_partner(rng, a))]
    return build


def build_pow(op):
    def build(rng):
        a = shape(rng)
        return op, [positive(rng, a), normal(rng, broadcast_partner(rng, a))]
    return build


def build_matmul(op):
    def build(rng):
        n, k, m = shape(rng, ndim=3)
        batch = shape(rng, ndim=int(rng.integers(0, 3)))
        return op, [normal(rng, batch + (n, k)),
                    normal(rng, broadcast_partner(rng, batch)[:len(batch)] + (k, m))]
    return build


def build_transpose(rng):
    shp = shape(rng, ndim=3)
    return (lambda a: a.transpose(-1, 0)), [normal(rng, shp)]


def build_permute(rng):
    shp = shape(rng, ndim=3)
    axes = tuple(int(i) for i in rng.permutation(3))
    return (lambda a: a.permute(*axes)), [normal(rng, shp)]


def build_getitem(rng):
    shp = shape(rng, ndim=2, low=2)
    rows = rng.integers(0, shp[0], size=4)                   # repeats are likely
    return (lambda a: a[rows][:, 1:] * a[None, -1, 1:]), [normal(rng, shp)]


def build_masked_fill(rng):
    shp = shape(rng, ndim=2)
    mask = rng.random(shp[-1:]) < 0.5                         # broadcasts over rows
    return (lambda a: a.masked_fill(mask, -3.0)), [normal(rng, shp)]


def build_cat(rng):
    a, b = shape(rng, ndim=2), int(rng.integers(1, 4))
    return (lambda x, y: Tensor.cat([x, y], axis=1)), [normal(rng, a), normal(rng, (a[0], b))]


def build_stack(rng):
    a = shape(rng, ndim=2)
    return (lambda x, y: Tensor.stack([x, y], axis=1)), [normal(rng, a), normal(rng, a)]


def build_split(rng):
    shp = shape(rng, ndim=2, low=2)
    return (lambda a: a.split(1, axis=1)[-1] * a.split(1, axis=1)[0]), [normal(rng, shp)]


def build_reshape(rng):
    shp = shape(rng, ndim=3)
    return (lambda a: a.reshape(shp[0], -1)), [normal(rng, shp)]


def build_softmax(fn):
    def build(rng):
        shp = shape(rng, ndim=int(rng.integers(1, 4)))
        axis = int(rng.integers(-len(shp), len(shp)))
        return (lambda x: fn(x, axis=axis)), [normal(rng, shp)]
    return build


def build_layer_norm(op):
    def build(rng):
        shp = shape(rng, ndim=int(rng.integers(1, 4)), low=3)  # C = 2 normalizes to +-1 exactly
        C = shp[-1]
        return op, [normal(rng, shp), normal(rng, (C,)), normal(rng, (C,))]
    return build


def build_linear(op):
    def build(rng):
        lead, (n_in, n_out) = shape(rng, ndim=int(rng.integers(1, 3))), shape(rng, ndim=2)
        return op, [normal(rng, lead + (n_in,)), normal(rng, (n_out, n_in)),
                    normal(rng, (n_out,))]
    return build


def build_lora_linear(rng):
    lead, (n_in, n_out) = shape(rng, ndim=int(rng.integers(1, 3))), shape(rng, ndim=2)
    rank = int(rng.integers(1, 4))
    fn = lambda x, w, b, a, bb: F.lora_linear(x, w, b, a, bb, 2.0)       # noqa: E731
    return fn, [normal(rng, lead + (n_in,)), normal(rng, (n_out, n_in)), normal(rng, (n_out,)),
                normal(rng, (rank, n_in)), normal(rng, (n_out, rank))]


def build_attention(rng):
    B, nh, T, hs = shape(rng, ndim=4)
    past = int(rng.integers(0, 3))                             # keys from an earlier cache
    qs, kv = (B, nh, T, hs), (B, nh, past + T, hs)
    fn = lambda q, k, v: scaled_dot_product_attention(q, k, v, offset=past)  # noqa: E731
    return fn, [normal(rng, qs), normal(rng, kv), normal(rng, kv)]


def build_causal_attention(op):
    """Attention without a cache (queries and keys the same length), for learners."""
    def build(rng):
        qkv = shape(rng, ndim=4)
        return op, [normal(rng, qkv), normal(rng, qkv), normal(rng, qkv)]
    return build


def build_embedding(op):
    def build(rng):
        V, C = shape(rng, ndim=2, low=2)
        ids = rng.integers(0, V, size=shape(rng, ndim=2))      # repeated ids are likely
        return (lambda w, i: op(i, w)), [normal(rng, (V, C)), ids]
    return build


def build_cross_entropy(op):
    def build(rng):
        B, T, V = shape(rng, ndim=3, low=2)
        targets = rng.integers(0, V, size=(B, T))
        targets[0, 0] = -100                                    # one ignored position
        return op, [normal(rng, (B, T, V)), targets]
    return build


def build_dropout(rng):
    def fn(x):
        tensor.manual_seed(1234)                               # the same mask every call
        return F.dropout(x, p=0.3, training=True)
    return fn, [normal(rng, shape(rng))]


CASES = [  # (name, function whose docstring holds the math, builder)
    ("add", elementwise.add, binary(elementwise.add)),
    ("sub", elementwise.sub, binary(elementwise.sub)),
    ("mul", elementwise.mul, binary(elementwise.mul)),
    ("div", elementwise.div, build_div(elementwise.div)),
    ("pow", elementwise.pow, build_pow(elementwise.pow)),
    ("neg", elementwise.neg, unary(elementwise.neg)),
    ("exp", elementwise.exp, unary(elementwise.exp)),
    ("log", elementwise.log, unary(elementwise.log, positive)),
    ("tanh", elementwise.tanh, unary(elementwise.tanh)),
    ("sqrt", elementwise.sqrt, unary(elementwise.sqrt, positive)),
    ("relu", elementwise.relu, unary(elementwise.relu, away_from_zero)),
    ("sum", reduce.sum, reduction(reduce.sum)),
    ("mean", reduce.mean, reduction(reduce.mean)),
    ("max", reduce.max, reduction(reduce.max, distinct)),
    ("var", reduce.var, reduction(reduce.var)),
    ("reshape", movement.reshape, build_reshape),
    ("transpose", movement.transpose, build_transpose),
    ("permute", movement.permute, build_permute),
    ("getitem", movement.getitem, build_getitem),
    ("masked_fill", movement.masked_fill, build_masked_fill),
    ("cat", movement.cat, build_cat),
    ("stack", movement.stack, build_stack),
    ("split", movement.split, build_split),
    ("matmul", matmul.matmul, build_matmul(matmul.matmul)),
    ("linear", F.linear, build_linear(F.linear)),
    ("lora_linear", F.lora_linear, build_lora_linear),
    ("softmax", F.softmax, build_softmax(F.softmax)),
    ("log_softmax", F.log_softmax, build_softmax(F.log_softmax)),
    ("layer_norm", layer_norm, build_layer_norm(layer_norm)),
    ("attention", scaled_dot_product_attention, build_attention),
    ("gelu", gelu, unary(gelu)),                             # tanh form, GPT-2's default
    ("gelu_erf", gelu_erf, unary(gelu_erf)),
    ("embedding", F.embedding, build_embedding(F.embedding)),
    ("cross_entropy", cross_entropy, build_cross_entropy(cross_entropy)),
    ("dropout", F.dropout, build_dropout),
]


# The learner hook: op name -> (how the learner's function is called, factory fn -> build).
# Each factory is the one behind CASES, so a learner's function meets the same random cases.
_ELEMENTWISE = {"neg": normal, "exp": normal, "log": positive, "tanh": normal,
                "sqrt": positive, "relu": away_from_zero, "gelu": normal, "gelu_erf": normal}
_REDUCTIONS = {"sum": normal, "mean": normal, "max": distinct, "var": normal}
LEARNER_OPS = {
    **{n: ("fn(a, b)   (shapes broadcast)", binary) for n in ("add", "sub", "mul")},
    "div": ("fn(a, b)   (b > 0, shapes broadcast)", build_div),
    "pow": ("fn(a, b)   (a > 0, shapes broadcast)", build_pow),
    **{n: ("fn(x)", lambda f, v=v: unary(f, v)) for n, v in _ELEMENTWISE.items()},
    **{n: ("fn(x, axis=..., keepdims=...)", lambda f, v=v: reduction(f, v))
       for n, v in _REDUCTIONS.items()},
    "matmul": ("fn(a, b)   (a (..., n, k), b (..., k, m))", build_matmul),
    "linear": ("fn(x, weight, bias)   (y = x @ weight^T + bias)", build_linear),
    "softmax": ("fn(x, axis=...)", build_softmax),
    "log_softmax": ("fn(x, axis=...)", build_softmax),
    "layer_norm": ("fn(x, weight, bias)   (over the last axis, eps 1e-5)", build_layer_norm),
    "attention": ("fn(q, k, v)   (causal; q, k, v all (B, nh, T, hs))",
                  build_causal_attention),
    "embedding": ("fn(ids, weight)", build_embedding),
    "cross_entropy": ("fn(logits, targets)   (targets == -100 are ignored)",
                      build_cross_entropy),
}


def learner_build(name, fn):
    """The random cases of op `name`, with `fn` called exactly where the op would be."""
    return LEARNER_OPS[name][1](fn)


def reference_function(name):
    """The engine's own function for op `name` (what a learner's version should match)."""
    return next(function for n, function, _ in CASES if n == name)


def formula(function):
    """The backward half of an op's one-line docstring ('y = a * b;   da = dy * b, ...')."""
    first = ((function.__doc__ or "").strip().splitlines() or [""])[0]   # "" without one
    return first.split(";", 1)[1].strip() if ";" in first else first
