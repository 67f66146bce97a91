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


# ----- command lines and corpora (tests/test_cli_properties*.py) ------------------------
# Text a command line can hold: no NUL (a process's argv cannot carry one) and no lone
# surrogates (what Python makes of argv bytes that are not UTF-8).
ARG_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
                   max_size=10)
# Values no setting can take, whatever its type, and that never parse as a large number
# (a junk max_iters must not become a long run): no digits but in the fixed ones.
NOT_NUMBERS = ["", " ", "abc", "nan", "NaN", "inf", "-inf", "+inf", "Infinity", "1e400",
               "-1e400", "0x10", "1,5", "None", "[]", "--", "-", "=", "\t", "é", "1.5", "☃"]
junk = st.one_of(st.sampled_from(NOT_NUMBERS),
                 ARG_TEXT.filter(lambda s: not any(c.isdigit() for c in s)))
# Integers at the edges of a count, and written oddly ("2.0", " 2", "1e1" are 2, 2, 10).
SMALL_INTS = ["0", "-1", "1", "2", "-0", "+2", " 2", "2.0", "1e1", "-5"]
HUGE_INTS = [str(10**15), str(2**63), str(10**30), "1e15", str(-10**15), str(2**31)]
FLOATS = ["0", "-0.0", "5e-324", "1e-320", "1", "0.5", "0.999999", "1.0", "1.5", "-1",
          "1e300", "1e308", "-1e308", "3e-5"]
BOOLS = ["true", "false", "True", "0", "1", "yes", "off", "maybe", "", "2"]

# A value that parses two times in three, so that runs get past the parsing often.
work_counts = st.sampled_from(SMALL_INTS) | st.sampled_from(SMALL_INTS) | junk  # iterations
counts = st.sampled_from(SMALL_INTS + HUGE_INTS) | st.sampled_from(SMALL_INTS + HUGE_INTS) | junk
reals = st.sampled_from(FLOATS) | st.sampled_from(FLOATS) | junk
flags = st.sampled_from(BOOLS)


def choices(*valid):
    """One of the valid words, or junk (and the words in the wrong case)."""
    return st.one_of(st.sampled_from(valid + tuple(v.upper() for v in valid)), junk)


UNKNOWN_KEYS = ["bogus", "max_iter", "maxiters", "Max_Iters", "", "-", "x=1", "☃", "help me"]


@st.composite
def command_lines(draw, base, values, keep=(), max_edits=3):
    """A command line: base ({key: value}, a run that works) after up to max_edits edits:
    a key set to a drawn values[key] (wrong type, boundary, huge, empty), a key given twice,
    an unknown or misspelt key, a key without its value, a stray word, a key of base left
    out (not those in keep: their defaults may be long runs). Each pair is written
    "--key=value" or "--key", "value" (dashes for underscores now and then)."""
    pairs = [[k, v] for k, v in base.items()]
    for _ in range(draw(st.integers(0, max_edits))):
        edit = draw(st.sampled_from(["set"] * 5 + ["twice", "unknown", "bare", "stray",
                                                   "drop"]))
        key = draw(st.sampled_from(sorted(values)))
        if edit == "set":
            pairs = [p for p in pairs if p[0] != key] + [[key, draw(values[key])]]
        elif edit == "twice":
            pairs.append([key, draw(values[key])])
        elif edit == "unknown":
            pairs.append([draw(st.sampled_from(UNKNOWN_KEYS)), draw(ARG_TEXT)])
        elif edit == "bare":
            pairs.append([key, None])
        elif edit == "stray":
            pairs.append([None, draw(ARG_TEXT)])
        elif [p for p in pairs if p[0] not in keep]:
            pairs.remove(draw(st.sampled_from([p for p in pairs if p[0] not in keep])))
    argv = []
    for key, value in pairs:
        if key is None:
            argv.append(value)
            continue
        flag = "--" + (key.replace("_", "-") if draw(st.integers(0, 5)) == 0 else key)
        if value is None:
            argv.append(flag)
        elif draw(st.booleans()):
            argv.append(f"{flag}={value}")
        else:
            argv += [flag, value]
    return argv


# Small corpora: each a {relative path: bytes} to write, and the path to pass as --data
# ("." for the folder holding them). block_size + 1 is the shortest a split may be.
TEXT = "To be, or not to be: that is the question.\n"


@st.composite
def corpora(draw, block_size):
    kind = draw(st.sampled_from([
        "empty", "one char", "newlines", "nul bytes", "crlf", "not utf-8", "bom", "mixed",
        "exactly block_size + 1", "val exactly block_size + 1", "val one short",
        "folder of empty files", "folder mixed", "empty folder", "random"]))
    long_enough = (TEXT * 30).encode()
    n = block_size + 1

    def val_chars(m):           # the total length whose last 10% (data.py's val) is m long
        return next(k for k in range(m, 20 * m + 20) if k - int(k * 0.9) == m)

    files = {
        "empty": {"c.txt": b""},
        "one char": {"c.txt": draw(st.sampled_from([b"a", b"\n", b"\0", "é".encode()]))},
        "newlines": {"c.txt": draw(st.sampled_from([b"\n", b"\r\n"])) * draw(st.integers(1, 400))},
        "nul bytes": {"c.txt": b"\0" * draw(st.integers(1, 400))},
        "crlf": {"c.txt": long_enough.replace(b"\n", b"\r\n")},
        "not utf-8": {"c.txt": long_enough[:draw(st.integers(0, 200))] + b"\xff\xfe"
                      + long_enough},
        "bom": {"c.txt": b"\xef\xbb\xbf" + long_enough},
        "mixed": {"c.txt": long_enough + "café\n".encode("latin-1") + "café\n".encode()},
        "exactly block_size + 1": {"c.txt": (TEXT * 9)[:n].encode()},
        "val exactly block_size + 1": {"c.txt": (TEXT * 99)[:val_chars(n)].encode()},
        "val one short": {"c.txt": (TEXT * 99)[:val_chars(n - 1)].encode()},
        "folder of empty files": {"d/a.txt": b"", "d/b.txt": b""},
        "folder mixed": {"d/a.txt": b"", "d/b.txt": long_enough, "d/c.md": b"not read"},
        "empty folder": {"d/.keep": b""},
        "random": {"c.txt": draw(st.binary(max_size=600))},
    }[kind]
    return kind, files, "d" if any(p.startswith("d/") for p in files) else "c.txt"
