"""How python -m tinygrad_gpt.trace shows a trace (trace.py records it): norms and
statistics of arrays, one op up close with its backward's formula (from docs/backprop.md,
else its function's docstring), and the whole graph in Graphviz DOT."""
import re
from pathlib import Path

import numpy as np

import tensor.functional as F
from tensor import backend

from .op_cases import CASES, formula
from .settings import UserError

BACKPROP_MD = Path(__file__).resolve().parents[1] / "docs" / "backprop.md"
DOC_NAMES = {"attention": "scaled_dot_product_attention"}   # op name -> its name in the docs
ARG_NAMES = {"attention": ("q", "k", "v"), "layer_norm": ("x", "weight", "bias"),
             "linear": ("x", "weight", "bias"), "embedding": ("weight",),
             "lora_linear": ("x", "weight", "bias", "lora_A", "lora_B"),
             "cross_entropy": ("logits",), "matmul": ("a", "b")}


def norm(a):
    return float(np.linalg.norm(backend.to_numpy(a).astype(np.float64).ravel()))


def stats(a):
    """mean/std/min/max of the finite entries (masked scores hold -inf), and how many are not."""
    a = backend.to_numpy(a).astype(np.float64)
    finite = a[np.isfinite(a)]
    text = (f"mean {finite.mean():+.2e}  std {finite.std():.2e}  min {finite.min():+.2e}  "
            f"max {finite.max():+.2e}") if finite.size else "no finite entries"
    return text + (f"  ({a.size - finite.size} entries -inf/inf/nan)" if finite.size < a.size
                   else "")


def op_function(op):
    """The function whose docstring holds op's math: the reference op (F.reference_gelu, ...)
    where F.gelu etc. are thin dispatch wrappers, else the function gradcheck tests."""
    reference = getattr(F, f"reference_{op}", None)
    if reference is not None:
        return reference
    return next((function for name, function, _ in CASES if name == op), None)


def backprop_formula(op, path=BACKPROP_MD):
    """(formula, where it came from) for an op: its `**backward:**` line in docs/backprop.md
    (the op's name is the first code span of that line), else its op_function's docstring."""
    wanted = {op, DOC_NAMES.get(op, op)}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = ""
    for line in text.splitlines():
        if "**backward:**" not in line:
            continue
        name = re.search(r"`([^`]+)`", line)
        if not name or name.group(1) not in wanted:
            continue
        if line.lstrip().startswith("|"):                   # a table row: the marked cell
            cell = next(c for c in line.split("|") if "**backward:**" in c)
            found = cell.split("**backward:**", 1)[1]
        else:                                                # "**backward:** `op`: formula"
            found = line.split("**backward:**", 1)[1].split(name.group(0), 1)[1].lstrip(": ")
        return found.replace("`", "").strip(), "docs/backprop.md"
    function = op_function(op)
    if function is None:
        return "(no formula found)", "nowhere"
    return formula(function), f"the docstring of {function.__module__}.{function.__name__}"


def op_lines(t, name, index=0):
    """One op up close: its inputs, output, upstream gradient and produced gradients."""
    matches = [r for r in t.ops if name in (r.op, r.label)]
    if not matches:
        known = ", ".join(sorted({r.op for r in t.ops}))
        raise UserError(f"--op {name}: no such op in this trace; ops: {known}")
    if not 0 <= index < len(matches):
        raise UserError(f"--index {index}: --op {name} ran {len(matches)} time(s), so "
                        f"--index goes from 0 to {len(matches) - 1}")
    r = matches[index]
    text, where = backprop_formula(r.op)
    names = ARG_NAMES.get(r.op, ("x",) if len(r.parents) == 1 else ("a", "b", "c"))
    arg = [names[i] if i < len(names) else f"input{i}" for i in range(len(r.parents))]
    rows = [(f"  {a}", t.source(p), p.shape, "", stats(p.data)) for a, p in zip(arg, r.parents)]
    rows.append(("output", "", r.out.shape, "", stats(r.out.data)))
    if r.dy is not None:
        rows.append(("upstream dy", "", r.dy.shape, f"|dy| {norm(r.dy):.3e}", stats(r.dy)))
        rows += [(f"  d{a}", f"-> {t.source(p)}", p.shape,
                  "None: not needed" if g is None else f"|d| {norm(g):.3e}",
                  "" if g is None else stats(g)) for a, p, g in zip(arg, r.parents, r.grads)]
    width = max(len(row[1]) for row in rows)
    table = [f"{a:12s} {src:{width}s} {str(tuple(shp)):15s} {n:15s} {st}".rstrip()
             for a, src, shp, n, st in rows]
    lines = [f"op [{r.index}] {r.label}  (--index {index}; --op {name} ran {len(matches)} "
             "time(s))", f"backward ({where}): {text}", "", "inputs:"] + table[:len(arg) + 1]
    if r.dy is None:
        return lines + ["backward never reached this op (its output does not affect the loss)"]
    return lines + [table[len(arg) + 1], "gradients it produces:"] + table[len(arg) + 2:]


def to_dot(t):
    """The graph in Graphviz DOT: one box per op (op0, op1...), one ellipse per leaf tensor
    (leaf0...: parameters and constants), an edge from every input to the op using it."""
    lines = ["digraph trace {", '  node [fontname="monospace"];']
    leaves = {}
    for r in t.ops:
        lines.append(f'  op{r.index} [shape=box, label="[{r.index}] {r.label}\\n'
                     f'{tuple(r.out.shape)}"];')
    edges = []
    for r in t.ops:
        for p in r.parents:
            src = t.source(p)
            if src.startswith("["):
                edges.append(f"  op{src[1:-1]} -> op{r.index};")
                continue
            if id(p) not in leaves:
                leaves[id(p)] = f"leaf{len(leaves)}"
                lines.append(f'  {leaves[id(p)]} [shape=ellipse, label="{src}\\n'
                             f'{tuple(p.shape)}"];')
            edges.append(f"  {leaves[id(p)]} -> op{r.index};")
    return "\n".join(lines + edges + ["}"]) + "\n"
