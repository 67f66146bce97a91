"""Graph helpers for Tensor.backward(): the visiting order, and detect_anomaly's checks."""
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
