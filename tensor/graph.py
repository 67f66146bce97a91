"""Graph helpers for Tensor.backward(): the visiting order, how a gradient is added into a
leaf's .grad, and detect_anomaly's checks."""
from . import backend


def topological_order(root):
    """Every tensor in root's recorded graph, inputs first (only an op whose output needs a
    gradient records its inputs, so this is exactly what backward() must visit).

    Iterative depth-first search (an explicit stack, no recursion), so a graph thousands
    of ops deep does not hit Python's recursion limit.
    """
    order, visited = [], set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if children_done:
            order.append(node)
            continue
        if id(node) in visited:
            continue
        visited.add(id(node))
        stack.append((node, True))
        for parent in node._parents:
            if id(parent) not in visited:
                stack.append((parent, False))
    return order


def leaves_done_after(order):
    """{i: the leaves needing a gradient whose last consumer is order[i]}, order output
    first: after visiting order[i], nothing adds to those leaves' .grad any more."""
    last = {}
    for i, node in enumerate(order):
        for parent in node._parents:
            if parent.requires_grad and parent._backward is None:
                last[id(parent)] = (i, parent)
    if order and order[0]._backward is None and order[0].requires_grad:
        last[id(order[0])] = (0, order[0])   # backward() on a leaf itself
    done = {}
    for i, leaf in last.values():
        done.setdefault(i, []).append(leaf)
    return done


def finite(array):
    array = getattr(array, "rows", array)        # a RowGradient (tensor/fast/embedding.py)
    return bool(backend.xp_of(array).isfinite(array).all())


def check_forward(out, parents):
    """NaN or inf in an op's output is an anomaly, except the -inf that masked_fill writes on
    purpose (the causal mask)."""
    if out.data.dtype.kind != "f":
        return
    xp = backend.xp_of(out.data)
    bad = bool(xp.isnan(out.data).any()) if out.op == "masked_fill" else not finite(out.data)
    if bad:
        shapes = ", ".join(str(p.shape) for p in parents)
        raise FloatingPointError(f"detect_anomaly: forward of op '{out.op}' produced NaN/inf "
                                 f"(input shapes {shapes})")


def check_grads(node, input_grads):
    for i, g in enumerate(input_grads):
        if g is not None and not finite(g):
            shapes = ", ".join(str(p.shape) for p in node._parents)
            raise FloatingPointError(f"detect_anomaly: backward of op '{node.op}' produced "
                                     f"NaN/inf in the gradient of input {i} "
                                     f"(input shapes {shapes})")


def wrong_gradients(node, input_grads):
    """The message for a backward that did not return one gradient per input, each of its
    input's shape (a learner's op forgetting to sum a broadcast gradient back, say)."""
    want = ", ".join(str(tuple(p.shape)) for p in node._parents)
    got = ", ".join("None" if g is None else str(tuple(getattr(g, "shape", ())))
                    for g in input_grads)
    return (f"backward of op '{node.op}' returned gradients of shapes ({got}) for inputs of "
            f"shapes ({want}): return one gradient per input, each with its input's shape "
            "(a broadcast input's gradient summed back: elementwise.unbroadcast)")


def accumulate_grad(leaf, g, fresh):
    """leaf.grad += g: the only place a gradient is written into a tensor.

    The first gradient becomes .grad as it is when it is `fresh` (a new array that nothing
    else holds, see is_fresh), else a copy of it, so .grad never aliases another array.
    g may also be a gradient kept sparse, as its rows (tensor/fast/embedding.py's
    RowGradient): it adds itself into .grad in place, or is made dense if it comes first."""
    if hasattr(g, "add_into"):
        if leaf.grad is None:
            leaf.grad = g.dense().astype(leaf.dtype, copy=False)
        else:
            g.add_into(leaf.grad)
    elif leaf.grad is not None:
        leaf.grad += g
    elif fresh and g.dtype == leaf.dtype and g.shape == leaf.shape:
        leaf.grad = g
    else:
        leaf.grad = leaf.xp.array(g, dtype=leaf.dtype, copy=True)


def is_fresh(g, dy, input_grads):
    """True when a backward made g itself: not the incoming dy passed on, not a view of
    another array, and not also given to another parent (add gives dy to both). A backward
    returns new arrays or dy (and its views); it never returns an array it keeps."""
    return (g is not dy and getattr(g, "base", g) is None
            and sum(other is g for other in input_grads) == 1)
