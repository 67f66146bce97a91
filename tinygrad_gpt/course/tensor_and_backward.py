"""Checks, worked answers and the graph drawing of docs/notebooks/01_tensor_and_backward.ipynb.

    trace_graph(fn, **leaves)   fn run under observe_ops -> (a tinygrad_gpt.trace.Trace, out),
                                so trace_views.to_dot draws it as `trace --dot` draws a GPT
    parse_dot(dot), draw_dot(dot)  that DOT as boxes and arrows in matplotlib (no Graphviz)
    render_dot(dot)             Graphviz's own drawing when the `dot` program is installed

The exercises (each check prints "not answered yet" for the placeholder and returns False,
raises AssertionError naming what is wrong, or prints "correct" and returns True):

1. check_chain_rule((da, db)): the gradient of f(a, b) = log(a * b + a) at a = 2, b = 3.
2. check_sigmoid(fn): an op made with `make`, y = 1 / (1 + exp(-x)); its backward gradchecked.
3. check_mul(fn): y = a * b with broadcasting, on the random cases of
   `python -m tinygrad_gpt.gradcheck --op mul --function ...` (tinygrad_gpt/gradcheck.py).
"""
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from tensor import Tensor, observe_ops
from tensor.elementwise import unbroadcast
from tensor.finite_differences import gradcheck
from tensor.tensor import make

from ..gradcheck import check_learner
from ..trace import OpRecord, Trace
from . import correct, not_answered

# ----- the graph: recorded, written as DOT, drawn ---------------------------------------------


def trace_graph(fn, **leaves):
    """(Trace, out) for out = fn(**leaves): each op recorded as the tracer records a model's
    (tinygrad_gpt/trace.py), labelled fn's name + op, the leaves named by their keywords."""
    records = []

    def record(out, parents):
        records.append(OpRecord(len(records), fn.__name__, out.op, out, tuple(parents)))
    with observe_ops(record):
        out = fn(**leaves)
    return Trace(records, [], list(leaves.items()), None, float(out.numpy().sum())), out


NODE = re.compile(r'^\s*(\w+) \[shape=(\w+), label="(.*)"\];$')
EDGE = re.compile(r"^\s*(\w+) -> (\w+);$")


def parse_dot(dot):
    """The DOT of trace_views.to_dot -> ({node: (label, shape)}, [(source, target)])."""
    if not isinstance(dot, str):
        raise TypeError(f"parse_dot needs the DOT text (a str), got {type(dot).__name__}")
    nodes, edges = {}, []
    for line in dot.splitlines():
        if m := NODE.match(line):
            nodes[m[1]] = (m[3].replace("\\n", "\n"), m[2])
        elif m := EDGE.match(line):
            edges.append((m[1], m[2]))
    unknown = {n for edge in edges for n in edge} - nodes.keys()
    if unknown:
        raise ValueError(f"parse_dot: edges name undeclared nodes {sorted(unknown)}")
    return nodes, edges


def layout(nodes, edges):
    """{node: (x, y)}, top to bottom: an op's row is its longest path from a leaf, a leaf
    sits one row above its first use; a row's nodes are ordered by their inputs' mean x
    (fewer crossings) and spaced by their labels' widths."""
    inputs, users = {n: [] for n in nodes}, {n: [] for n in nodes}
    for source, target in edges:
        inputs[target].append(source)
        users[source].append(target)
    depth = {n: 0 for n in nodes if not inputs[n]}
    for n in _forward_order(nodes, inputs):
        if inputs[n]:
            depth[n] = 1 + max(depth[p] for p in inputs[n])
    for n in nodes:
        if not inputs[n] and users[n]:
            depth[n] = min(depth[u] for u in users[n]) - 1
    rows, where = {}, {}
    for n in nodes:
        rows.setdefault(depth[n], []).append(n)
    for d in sorted(rows):
        key = {n: np.mean([where[p][0] for p in inputs[n]]) if inputs[n] and all(
            p in where for p in inputs[n]) else -1e9 + i for i, n in enumerate(rows[d])}
        row = sorted(rows[d], key=key.get)
        widths = [(0.12 if nodes[n][1] == "box" else 0.16)
                  * max(len(s) for s in nodes[n][0].split("\n")) + 0.6 for n in row]
        x = -sum(widths) / 2
        for n, w in zip(row, widths):
            where[n] = (x + w / 2, -d)
            x += w
    return where


def _forward_order(nodes, inputs):
    """The nodes, every input before its user (an iterative depth-first search)."""
    order, seen = [], set()
    for root in nodes:
        stack = [(root, False)]
        while stack:
            n, expanded = stack.pop()
            if expanded:
                order.append(n)
            elif n not in seen:
                seen.add(n)
                stack.append((n, True))
                stack.extend((p, False) for p in inputs[n] if p not in seen)
    return order


def draw_dot(dot, ax=None, fontsize=8):
    """Draw the DOT's graph with matplotlib: boxes for ops, ellipses for leaves, an arrow
    from each input to the op that uses it. Returns the axes."""
    import matplotlib.pyplot as plt
    nodes, edges = parse_dot(dot)
    where = layout(nodes, edges)
    if ax is None:
        xs, ys = zip(*where.values())
        _, ax = plt.subplots(figsize=(min(12, 2 + 1.1 * (max(xs) - min(xs))),
                                      min(16, 1 + 0.8 * (max(ys) - min(ys)))))
    for source, target in edges:
        skips = where[source][1] - where[target][1] > 1     # bend it round the rows between
        ax.annotate("", xy=where[target], xytext=where[source],
                    arrowprops=dict(arrowstyle="->", shrinkA=14, shrinkB=14, color="0.4",
                                    connectionstyle=f"arc3,rad={-0.4 if skips else 0}"))
    for n, (label, shape) in nodes.items():
        style = "round,pad=0.3" if shape == "box" else "ellipse,pad=0.2"
        color = "#dde8f7" if shape == "box" else "#f6e3c8"
        ax.text(*where[n], label, ha="center", va="center", fontsize=fontsize,
                family="monospace", bbox=dict(boxstyle=style, fc=color, ec="0.3"))
    xs, ys = zip(*where.values())
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(min(ys) - 0.6, max(ys) + 0.6)
    ax.axis("off")
    return ax


def render_dot(dot):
    """Graphviz's drawing of the DOT as an image array (for plt.imshow); None when the
    `dot` program is not installed."""
    import matplotlib.pyplot as plt
    program = shutil.which("dot")
    if program is None:
        return None
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "graph.png"
        subprocess.run([program, "-Tpng", "-o", str(path)], input=dot, text=True, check=True)
        return plt.imread(path)


# ----- helpers of the checks ------------------------------------------------------------------


def _backward_of(op, inputs, number):
    """Build op on float64 Tensors and call its recorded backward once; None when that
    backward is still the placeholder (returns None). Asserts it returns one per input."""
    ts = [Tensor(x, requires_grad=True, dtype=np.float64) for x in inputs]
    out = op(*ts)
    assert isinstance(out, Tensor) and out._backward is not None, \
        f"Exercise {number}: the op must return the Tensor made by make(data, parents, ...)"
    grads = out._backward(np.ones_like(out.data))
    if grads is None:
        return None
    assert isinstance(grads, (tuple, list)) and len(grads) == len(inputs), \
        f"Exercise {number}: backward must return a tuple of {len(inputs)} gradient(s), one " \
        f"per input (e.g. `return (dx,)`), got {type(grads).__name__}"
    for i, (x, g) in enumerate(zip(inputs, grads)):
        assert np.shape(g) == x.shape, f"Exercise {number}: the gradient of input {i} has " \
            f"shape {np.shape(g)}, the input {x.shape}: a broadcast input's gradient is " \
            "summed over the axes it was copied along (tensor/elementwise.py, unbroadcast)"
    return grads


# ----- exercise 1: the chain rule by hand ------------------------------------------------------


def chain_rule_reference(a=2.0, b=3.0):
    """(df/da, df/db) of f = log(a * b + a) from the engine's backward()."""
    ta, tb = Tensor(a, requires_grad=True, dtype=np.float64), Tensor(b, requires_grad=True,
                                                                     dtype=np.float64)
    (ta * tb + ta).log().backward()
    return float(ta.grad), float(tb.grad)


def answer_chain_rule():
    """s = a b + a = 8;  df/ds = 1 / s;  ds/da = b + 1 (two paths);  ds/db = a."""
    a, b = 2.0, 3.0
    s = a * b + a
    return (b + 1) / s, a / s          # (0.5, 0.25)


def check_chain_rule(answer):
    """answer: (df/da, df/db) for f(a, b) = log(a * b + a) at a = 2, b = 3."""
    if answer is None:
        return not_answered(1, "write s = a*b + a, then df/da and df/db; a appears twice")
    assert np.shape(answer) == (2,), "Exercise 1: give two numbers, (df/da, df/db)"
    da, db = chain_rule_reference()
    assert abs(answer[1] - db) < 1e-6, f"Exercise 1: df/db = {answer[1]} is wrong: " \
        "df/db = (df/ds) (ds/db) with s = a*b + a"
    assert abs(answer[0] - da) < 1e-6, f"Exercise 1: df/da = {answer[0]} is wrong" + \
        (": a reaches s along two paths (a*b and + a): add both" if abs(answer[0] - 3 / 8)
         < 1e-6 else ": df/da = (df/ds) (ds/da)")
    return correct(1, f"backward() gives df/da = {da:.4f}, df/db = {db:.4f}")


# ----- exercise 2: a new op, sigmoid --------------------------------------------------------


def answer_sigmoid(x):
    """y = 1 / (1 + exp(-x));   dx = dy * y * (1 - y)"""
    y = 1 / (1 + np.exp(-x.data))
    return make(y, (x,), "sigmoid", lambda dy: (dy * y * (1 - y),))


def _wrong_sigmoid(x):
    """y = 1 / (1 + exp(-x));   dx = dy * y   (WRONG: the 1 - y factor is missing)"""
    y = 1 / (1 + np.exp(-x.data))
    return make(y, (x,), "sigmoid", lambda dy: (dy * y,))


def _untupled_sigmoid(x):
    """dx returned bare instead of as (dx,)   (WRONG: one gradient per input, in a tuple)"""
    y = 1 / (1 + np.exp(-x.data))
    return make(y, (x,), "sigmoid", lambda dy: dy * y * (1 - y))


def check_sigmoid(fn):
    """fn(x) -> Tensor: y = 1 / (1 + exp(-x)) made with make; gradchecked on random shapes."""
    rng = np.random.default_rng(0)
    if fn is None or _backward_of(fn, [rng.standard_normal(3)], 2) is None:
        return not_answered(2, "d sigmoid/dx can be written with y alone; return (dx,)")
    for shape in [(1,), (5,), (2, 3)]:
        x = 3 * rng.standard_normal(shape)
        out = fn(Tensor(x, dtype=np.float64))
        assert np.allclose(out.numpy(), 1 / (1 + np.exp(-x))), \
            "Exercise 2: the forward changed: keep y = 1 / (1 + exp(-x))"
        result = gradcheck(fn, [x])
        assert result.ok, "Exercise 2: backward disagrees with finite differences:\n" + \
            result.report()
    return correct(2, "gradcheck agrees on shapes (1,), (5,), (2, 3)")


# ----- exercise 3: mul with broadcasting, through the gradcheck CLI's learner hook -------------


def answer_mul(a, b):
    """y = a * b;   da = dy * b,  db = dy * a   (each summed back to its input's shape)"""
    def backward(dy):
        return unbroadcast(dy * b.data, a.shape), unbroadcast(dy * a.data, b.shape)
    return make(a.data * b.data, (a, b), "mul", backward)


def _wrong_mul_swapped(a, b):
    """da = dy * a   (WRONG: the other input is the slope)"""
    def backward(dy):
        return unbroadcast(dy * a.data, a.shape), unbroadcast(dy * b.data, b.shape)
    return make(a.data * b.data, (a, b), "mul", backward)


def _wrong_mul_no_unbroadcast(a, b):
    """da = dy * b with dy's shape   (WRONG: a broadcast input needs its gradient summed)"""
    def backward(dy):
        return dy * b.data, dy * a.data
    return make(a.data * b.data, (a, b), "mul", backward)


def check_mul(fn, examples=20):
    """fn(a, b) -> Tensor: y = a * b; checked as `gradcheck --op mul --function` checks it."""
    rng = np.random.default_rng(0)
    if fn is None or _backward_of(fn, [rng.standard_normal((2, 3)), rng.standard_normal(3)],
                                  3) is None:
        return not_answered(3, "da = dy * b and db = dy * a, each unbroadcast to its shape")
    checks, abs_err, _, ok, note = check_learner("mul", fn, examples, 0, "cpu")
    assert ok, f"Exercise 3: case {checks} failed: {note}"
    return correct(3, f"{checks} random broadcast cases, max abs err {abs_err:.1e}")


CHECKS = [
    (check_chain_rule, answer_chain_rule(), [(3 / 8, 0.25), (0.5, 1 / 3), (1.0,)]),
    (check_sigmoid, answer_sigmoid, [_wrong_sigmoid, _untupled_sigmoid]),
    (check_mul, answer_mul, [_wrong_mul_swapped, _wrong_mul_no_unbroadcast]),
]
