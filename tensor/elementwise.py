"""Elementwise ops: + - * / ** neg exp log tanh sqrt relu, each with its backward beside it.

Binary ops broadcast exactly as NumPy does. Broadcasting copies an input along some axes,
so in backward the gradient is summed back over those axes: that is `unbroadcast`, the one
helper every binary backward uses.

Notation in the docstrings: y is the output, dy = dL/dy the gradient arriving from above,
da = dL/da the gradient we return for input a. Products are elementwise.
"""
from .tensor import Tensor, lift, make


def unbroadcast(grad, shape):
    """Sum `grad` down to `shape`, undoing NumPy broadcasting.

    (B, T, C) gradient for a (C,) input: sum over axes 0 and 1 -> (C,)
    (B, T, C) gradient for a (B, 1, C) input: sum over axis 1, keepdims -> (B, 1, C)
    """
    if grad.shape == shape:
        return grad
    extra = grad.ndim - len(shape)                 # leading axes the input did not have
    if extra:
        grad = grad.sum(axis=tuple(range(extra)))
    size_one = tuple(i for i, n in enumerate(shape) if n == 1 and grad.shape[i] != 1)
    if size_one:
        grad = grad.sum(axis=size_one, keepdims=True)
    return grad


def add(a, b):
    """y = a + b;   da = dy,  db = dy   (each summed back to its own shape)"""
    a, b = as_operands(a, b)

    def backward(dy):
        return (unbroadcast(dy, a.shape) if a.requires_grad else None,
                unbroadcast(dy, b.shape) if b.requires_grad else None)
    return make(a.data + b.data, (a, b), "add", backward)


def sub(a, b):
    """y = a - b;   da = dy,  db = -dy"""
    a, b = as_operands(a, b)

    def backward(dy):
        return (unbroadcast(dy, a.shape) if a.requires_grad else None,
                unbroadcast(-dy, b.shape) if b.requires_grad else None)
    return make(a.data - b.data, (a, b), "sub", backward)


def mul(a, b):
    """y = a * b;   da = dy * b,  db = dy * a"""
    a, b = as_operands(a, b)

    def backward(dy):
        return (unbroadcast(dy * b.data, a.shape) if a.requires_grad else None,
                unbroadcast(dy * a.data, b.shape) if b.requires_grad else None)
    return make(a.data * b.data, (a, b), "mul", backward)


def div(a, b):
    """y = a / b;   da = dy / b,  db = -dy * a / b^2 = -dy * y / b"""
    a, b = as_operands(a, b)
    y = a.data / b.data

    def backward(dy):
        dy_over_b = dy / b.data
        return (unbroadcast(dy_over_b, a.shape) if a.requires_grad else None,
                unbroadcast(-dy_over_b * y, b.shape) if b.requires_grad else None)
    return make(y, (a, b), "div", backward)


def pow(a, b):
    """y = a ** b;   da = dy * b * a^(b-1) (0 at b = 0),  db = dy * y * log(a) (0 at a = 0 <= b)"""
    a, b = as_operands(a, b)
    xp = a.xp
    y = a.data ** b.data

    def backward(dy):
        da = db = None
        if a.requires_grad:
            # b = 0: y = a^0 = 1 whatever a, so da = 0 (the formula's 0 * 0^-1 is NaN at a = 0)
            slope = xp.where(b.data == 0, 0, b.data * a.data ** (b.data - 1))
            da = unbroadcast(dy * slope, a.shape)
        if b.requires_grad:
            # a = 0, b >= 0: 0^b = 0 for b > 0, so db = 0 (PyTorch's 0 at b = 0 too), not 0 * log 0
            dlog = xp.where((a.data == 0) & (b.data >= 0), 0, y * xp.log(a.data))
            db = unbroadcast(dy * dlog, b.shape)
        return da, db
    return make(y, (a, b), "pow", backward)


def neg(a):
    """y = -a;   da = -dy"""
    return make(-a.data, (a,), "neg", lambda dy: (-dy,))


def exp(a):
    """y = exp(a);   da = dy * y"""
    y = a.xp.exp(a.data)
    return make(y, (a,), "exp", lambda dy: (dy * y,))


def log(a):
    """y = log(a);   da = dy / a"""
    return make(a.xp.log(a.data), (a,), "log", lambda dy: (dy / a.data,))


def tanh(a):
    """y = tanh(a);   da = dy * (1 - y^2)"""
    y = a.xp.tanh(a.data)
    return make(y, (a,), "tanh", lambda dy: (dy * (1 - y * y),))


def sqrt(a):
    """y = sqrt(a);   da = dy / (2 y)"""
    y = a.xp.sqrt(a.data)
    return make(y, (a,), "sqrt", lambda dy: (dy / (2 * y),))


def relu(a):
    """y = max(a, 0);   da = dy * [a > 0]"""
    positive = a.data > 0
    return make(a.xp.maximum(a.data, 0), (a,), "relu", lambda dy: (dy * positive,))


def as_operands(a, b):
    """Both operands as Tensors on one device (Python numbers and arrays become constants)."""
    if isinstance(a, Tensor):
        return a, lift(b, a)
    return lift(a, b), b
