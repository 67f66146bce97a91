"""The Tensor: an array plus the record of how it was computed, and reverse-mode backward.

Every op (elementwise.py, reduce.py, movement.py, matmul.py, and the fused ops gathered in
functional.py) computes its output array and, when any input needs a gradient, hands `make`
a `backward(dy)` closure that maps the output's gradient `dy` to one gradient per input.
`Tensor.backward()` then visits the graph from the output back to the leaves and calls
those closures in reverse topological order, summing gradients for tensors that were used
more than once. A backward only returns gradients; the engine alone writes `.grad`.

What it does not do: higher-order gradients (a backward pass is not itself recorded), or
in-place ops on tensors that are part of a graph.
"""
from . import backend
from .graph import (accumulate_grad, check_forward, check_grads, is_fresh, leaves_done_after,
                    topological_order, wrong_gradients)

_grad_enabled = True   # switched off inside `with no_grad():`
_anomaly_mode = False  # switched on inside `with detect_anomaly():`
_observers = []        # functions called with (out, parents) for every op; see observe_ops


class no_grad:
    """`with no_grad():` computes values only: no graph is recorded, nothing keeps inputs."""

    def __enter__(self):
        global _grad_enabled
        self._previous, _grad_enabled = _grad_enabled, False

    def __exit__(self, *exc):
        global _grad_enabled
        _grad_enabled = self._previous


class detect_anomaly:
    """`with detect_anomaly():` checks every op's output and every gradient for NaN/inf and
    raises FloatingPointError naming the first op that produced one, with its input shapes.
    Slower (one extra pass over every array); meant for debugging."""

    def __enter__(self):
        global _anomaly_mode
        self._previous, _anomaly_mode = _anomaly_mode, True

    def __exit__(self, *exc):
        global _anomaly_mode
        _anomaly_mode = self._previous


class observe_ops:
    """`with observe_ops(fn):` calls fn(out, parents) after every op's forward.

    A debugging and teaching hook (the tracer and the shape tables use it); ops run exactly
    as usual. Outside the block, nothing is called.
    """

    def __init__(self, fn):
        self.fn = fn

    def __enter__(self):
        _observers.append(self.fn)
        return self

    def __exit__(self, *exc):
        _observers.remove(self.fn)


def _freed_graph(dy):
    raise RuntimeError("backward() through a graph that was already freed: pass "
                       "retain_graph=True to the first backward() to call it twice")


class Tensor:
    """An n-dimensional array (numpy on 'cpu', cupy on 'cuda') that can track gradients.

    Tensor(data, requires_grad=False, dtype=None, device=None): floats become float32
    unless dtype says otherwise ('float64' for gradient checks); integer and bool data
    keep their kind (token ids are int64). `.grad` holds d(loss)/d(self) after backward().
    """
    __slots__ = ("data", "grad", "requires_grad", "device", "op", "_parents", "_backward",
                 "__weakref__")
    # Bug fix: without this, `ndarray @ Tensor` (and ndarray * Tensor, np.float64 * Tensor)
    # was run by NumPy itself, treating the Tensor as an opaque object and returning an
    # object array. None tells NumPy to defer, so Python calls Tensor.__rmatmul__ etc.
    __array_ufunc__ = None

    def __init__(self, data, requires_grad=False, dtype=None, device=None):
        if isinstance(data, Tensor):
            data = data.data
        device = backend.check_device(device if device is not None else backend.device_of(data))
        xp = backend.get_xp(device)
        data = backend.to_device(data, device) if hasattr(data, "shape") else xp.asarray(data)
        if dtype is None:
            kind = data.dtype.kind
            dtype = data.dtype if kind in "iub" else xp.float32
        self.data = xp.asarray(data, dtype=dtype)
        if requires_grad and self.data.dtype.kind != "f":
            raise TypeError(f"requires_grad=True needs a float tensor, got {self.data.dtype}")
        self.grad = None
        self.requires_grad = bool(requires_grad)
        self.device = device
        self.op = None          # name of the op that made this tensor (None for a leaf)
        self._parents = ()      # the tensors this one was computed from
        self._backward = None   # dy -> (d parent for each parent); None for a leaf

    # ----- properties and conversions -------------------------------------------------
    @property
    def shape(self): return self.data.shape

    @property
    def dtype(self): return self.data.dtype

    @property
    def ndim(self): return self.data.ndim

    @property
    def size(self): return self.data.size

    @property
    def xp(self):
        """The array module (numpy or cupy) that holds this tensor's data."""
        return backend.get_xp(self.device)

    def __len__(self): return self.data.shape[0]

    def __repr__(self):
        grad = ", requires_grad=True" if self.requires_grad else ""
        op = f", op={self.op}" if self.op else ""
        return f"Tensor(shape={self.shape}, dtype={self.dtype}, device='{self.device}'{grad}{op})"

    def numpy(self):
        """The data as a NumPy array (copied from the GPU when on 'cuda')."""
        return backend.to_numpy(self.data)

    def item(self):
        """The value of a one-element tensor as a Python number."""
        if self.data.size != 1:
            raise ValueError(f"item() needs a tensor with one element, got shape {self.shape}")
        return self.data.reshape(()).item()

    def tolist(self): return self.numpy().tolist()

    def to(self, device):
        """A copy on another device (a detached leaf that keeps requires_grad)."""
        device = backend.check_device(device)
        if device == self.device:
            return self
        return Tensor(backend.to_device(self.data, device), self.requires_grad, device=device)

    def detach(self):
        """The same data, cut from the graph: no gradient flows back through the result."""
        return Tensor(self.data, device=self.device)

    def astype(self, dtype):
        """A detached copy in another dtype (e.g. 'float64' for a gradient check)."""
        return Tensor(self.data.astype(dtype), self.requires_grad, device=self.device)

    def zero_grad(self): self.grad = None

    # ----- reverse mode -----------------------------------------------------------------
    def backward(self, grad=None, retain_graph=False, leaf_done=None):
        """Compute d(self)/d(leaf) for every leaf with requires_grad, into leaf.grad.

        Gradients accumulate: calling backward twice without zeroing .grad adds the second
        gradient to the first (as in PyTorch), which is what gradient accumulation over
        micro-batches relies on. The graph is freed afterwards unless retain_graph=True.
        leaf_done(leaf), when given, is called for each such leaf as soon as its .grad is
        final, while backward goes on with the rest (nn.GradientReducer starts sending the
        last layers' gradients to the other ranks then, as PyTorch DDP's hooks do).
        """
        if not self.requires_grad:
            raise RuntimeError("backward() on a tensor that does not require grad: no input "
                               "had requires_grad=True, or it was computed under no_grad()")
        xp = self.xp
        if grad is None:
            if self.data.size != 1:
                raise RuntimeError(f"backward() on a non-scalar tensor of shape {self.shape} "
                                   "needs a gradient argument of the same shape")
            grad = xp.ones_like(self.data)
        else:
            grad = xp.asarray(grad.data if isinstance(grad, Tensor) else grad, dtype=self.dtype)
            if grad.shape != self.shape:
                raise ValueError(f"backward(): gradient of shape {grad.shape} does not match "
                                 f"the tensor's shape {self.shape}")
        order = topological_order(self)[::-1]       # the output first, the leaves last
        done_after = leaves_done_after(order) if leaf_done is not None else {}
        grads = {id(self): grad}   # id(tensor) -> gradient summed over every path so far
        for i, node in enumerate(order):
            dy = grads.pop(id(node), None)
            if dy is not None:
                visit(node, dy, grads, retain_graph)
            for leaf in done_after.get(i, ()):      # no later node reaches these leaves:
                leaf_done(leaf)                     # their .grad is final for this backward

    # ----- operators and methods: each delegates to the op that holds its math ----------
    def __add__(self, other): return elementwise.add(self, other)
    def __radd__(self, other): return elementwise.add(other, self)
    def __sub__(self, other): return elementwise.sub(self, other)
    def __rsub__(self, other): return elementwise.sub(other, self)
    def __mul__(self, other): return elementwise.mul(self, other)
    def __rmul__(self, other): return elementwise.mul(other, self)
    def __truediv__(self, other): return elementwise.div(self, other)
    def __rtruediv__(self, other): return elementwise.div(other, self)
    def __pow__(self, other): return elementwise.pow(self, other)
    def __rpow__(self, other): return elementwise.pow(other, self)
    def __neg__(self): return elementwise.neg(self)
    def __matmul__(self, other): return matmul.matmul(self, other)
    def __rmatmul__(self, other): return matmul.matmul(other, self)
    def __getitem__(self, index): return movement.getitem(self, index)

    def exp(self): return elementwise.exp(self)
    def log(self): return elementwise.log(self)
    def tanh(self): return elementwise.tanh(self)
    def sqrt(self): return elementwise.sqrt(self)
    def relu(self): return elementwise.relu(self)

    def sum(self, axis=None, keepdims=False): return reduce.sum(self, axis, keepdims)
    def mean(self, axis=None, keepdims=False): return reduce.mean(self, axis, keepdims)
    def max(self, axis=None, keepdims=False): return reduce.max(self, axis, keepdims)
    def var(self, axis=None, keepdims=False, ddof=0): return reduce.var(self, axis, keepdims, ddof)

    def reshape(self, *new_shape): return movement.reshape(self, *new_shape)
    def transpose(self, ax1, ax2): return movement.transpose(self, ax1, ax2)
    def permute(self, *axes): return movement.permute(self, *axes)
    def masked_fill(self, mask, value): return movement.masked_fill(self, mask, value)
    def split(self, size, axis=0): return movement.split(self, size, axis)

    @property
    def T(self):
        """The last two axes swapped (a 1-D tensor is returned as is)."""
        return movement.transpose(self, -2, -1) if self.ndim > 1 else self

    @staticmethod
    def cat(tensors, axis=0): return movement.cat(tensors, axis)

    @staticmethod
    def stack(tensors, axis=0): return movement.stack(tensors, axis)


def visit(node, dy, grads, retain_graph):
    """One step of backward: dy = d(output)/d(node) in, the node's backward called, each
    parent's gradient added into grads (an op's output) or into .grad (a leaf)."""
    if node._backward is None:               # backward() called on a leaf itself
        accumulate_grad(node, dy, fresh=False)
        return
    input_grads = node._backward(dy)         # one gradient (or None) per parent
    if len(input_grads) != len(node._parents):
        raise ValueError(wrong_gradients(node, input_grads))
    if _anomaly_mode:
        check_grads(node, input_grads)
    for parent, dparent in zip(node._parents, input_grads):
        if dparent is None or not parent.requires_grad:
            continue
        if dparent.shape != parent.data.shape:   # a broadcast input's gradient summed back?
            raise ValueError(wrong_gradients(node, input_grads))
        if parent._backward is None:         # a leaf (a parameter): add into its .grad
            accumulate_grad(parent, dparent, fresh=is_fresh(dparent, dy, input_grads))
            continue
        key = id(parent)
        grads[key] = dparent if key not in grads else grads[key] + dparent
    if not retain_graph:
        node._parents, node._backward = (), _freed_graph


def make(data, parents, op, backward):
    """Wrap an op's output array; record the graph edge when some input needs a gradient.

    data: the output array. parents: the input Tensors. backward: dy -> tuple of one
    gradient (or None, for a parent that needs none) per parent, each with that parent's
    shape. A backward only returns gradients: the engine adds them up (accumulate_grad).
    """
    out = Tensor.__new__(Tensor)
    out.data, out.grad, out.op = data, None, op
    out.device = parents[0].device
    out.requires_grad = _grad_enabled and any(p.requires_grad for p in parents)
    if out.requires_grad:
        out._parents, out._backward = parents, backward
    else:
        out._parents, out._backward = (), None
    if _anomaly_mode:
        check_forward(out, parents)
    for observer in _observers:
        observer(out, parents)
    return out


def lift(x, like):
    """Turn a Python number or array into a constant Tensor matching `like`'s device/dtype."""
    if isinstance(x, Tensor):
        if x.device != like.device:
            raise RuntimeError(f"tensors on different devices: {x.device} and {like.device}; "
                               "move one with .to(device)")
        return x
    dtype = like.dtype if like.dtype.kind == "f" else None
    data = like.xp.asarray(x, dtype=dtype)
    # Bug fix: pass dtype on, or Tensor() turns the float64 constant into float32 and a
    # float64 tensor's `t + 0.1` adds 0.1 rounded to float32 (wrong values at ~1e-8).
    return Tensor(data, dtype=dtype, device=like.device)


# The ops need the Tensor class, so they are imported after it is defined.
from . import elementwise, matmul, movement, reduce  # noqa: E402
