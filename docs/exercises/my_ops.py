"""Exercise 1, your version: write the backward passes yourself, then check them.

Copy this file anywhere (or edit it here), fill in each `backward`, and run

    python -m tinygrad_gpt.gradcheck --op layer_norm --function docs/exercises/my_ops.py:layer_norm
    python -m tinygrad_gpt.gradcheck --op softmax --function docs/exercises/my_ops.py:softmax
    python -m tinygrad_gpt.gradcheck --op gelu --function docs/exercises/my_ops.py:gelu

Each check compares your forward with the engine's op on random inputs, and your backward
with central finite differences (float64): "ok" means right, "FAIL" shows the worst element.
Until you fill them in, the backward passes raise NotImplementedError and the checks FAIL.

The rules: the forward is given (NumPy on x.data). `backward(dy)` receives the gradient of
the loss with respect to the output (same shape as the output) and returns one gradient per
input, each with that input's shape. `make(out, parents, name, backward)` records the op.
Worked answers: tinygrad_gpt/exercises.py (try first!). Derivations: docs/backprop.md.
"""
import math

import numpy as np

from tensor.tensor import make


def layer_norm(x, weight, bias, eps=1e-5):
    """y = n * w + b, n = (x - mean) * rstd, over the last axis;   dx = ?, dw = ?, db = ?"""
    mu = x.data.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x.data - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    n = (x.data - mu) * rstd

    def backward(dy):
        # Hints: dn = dy * w. n depends on x directly, through mu and through rstd.
        # w and b are shared by every row: their gradients sum over all axes but the last.
        raise NotImplementedError("layer_norm backward: your turn (return dx, dw, db)")
    return make(n * weight.data + bias.data, (x, weight, bias), "layer_norm", backward)


def softmax(x, axis=-1):
    """y = exp(x) / sum(exp(x)) along axis;   dx = ?"""
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))
    y = e / e.sum(axis=axis, keepdims=True)

    def backward(dy):
        # Hint: dy_i/dx_k = y_i ([i = k] - y_k). Apply it to dy without building a matrix.
        raise NotImplementedError("softmax backward: your turn (return a 1-tuple: (dx,))")
    return make(y, (x,), "softmax", backward)


def gelu(x):
    """y = 0.5 x (1 + tanh(s (x + k x^3))), s = sqrt(2 / pi), k = 0.044715;   dx = ?"""
    s, k, a = math.sqrt(2.0 / math.pi), 0.044715, x.data
    t = np.tanh(s * (a + k * a ** 3))

    def backward(dy):
        # Hint: product rule on 0.5 x (1 + t), and tanh' = 1 - tanh^2.
        raise NotImplementedError("gelu backward: your turn (return a 1-tuple: (dx,))")
    return make(0.5 * a * (1 + t), (x,), "gelu", backward)
