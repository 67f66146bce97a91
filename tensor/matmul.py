"""Matrix product: 2-D, batched, with NumPy's broadcasting of the batch dimensions.

For y = a @ b with a (..., n, k) and b (..., k, m), each output element is
y[i, j] = sum_p a[i, p] b[p, j], so dL/da[i, p] = sum_j dy[i, j] b[p, j] and
dL/db[p, j] = sum_i a[i, p] dy[i, j], that is:

    da = dy @ b^T        db = a^T @ dy        (then summed over broadcast batch dims)

A 1-D a is treated as one row (1, k) and a 1-D b as one column (k, 1), as in NumPy.
"""
import math

from .elementwise import as_operands, unbroadcast
from .tensor import make


def matmul(a, b):
    """y = a @ b;   da = dy @ b^T,  db = a^T @ dy"""
    a, b = as_operands(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ValueError(f"matmul needs at least 1-D operands, got shapes {a.shape} and {b.shape}")
    a2 = a.data if a.ndim > 1 else a.data.reshape(1, -1)   # (..., n, k)
    b2 = b.data if b.ndim > 1 else b.data.reshape(-1, 1)   # (..., k, m)
    if a2.shape[-1] != b2.shape[-2]:
        raise ValueError(f"matmul of {a.shape} by {b.shape}: inner dimensions "
                         f"{a2.shape[-1]} and {b2.shape[-2]} differ")
    try:
        y2 = a2 @ b2                                       # (..., n, m)
    except ValueError:
        raise ValueError(f"matmul of {a.shape} by {b.shape}: batch dimensions "
                         f"{a.shape[:-2]} and {b.shape[:-2]} do not broadcast") from None
    y = y2
    if a.ndim == 1:
        y = y.reshape(y.shape[:-2] + y.shape[-1:])         # drop the row added for a 1-D a
    if b.ndim == 1:
        y = y.reshape(y.shape[:-1])                        # drop the column added for a 1-D b

    def backward(dy):
        dy2 = dy.reshape(y2.shape)                         # (..., n, m)
        da = db = None
        if a.requires_grad:
            da = unbroadcast(dy2 @ b2.swapaxes(-1, -2), a2.shape).reshape(a.shape)
        if b.requires_grad:
            if b2.ndim == 2 and a2.ndim > 2:
                # A shared weight (k, m) times a batch: one big GEMM over all rows at once,
                # (k, B*n) @ (B*n, m) -> (k, m), instead of B small ones summed afterwards.
                k, m = b2.shape
                N = math.prod(a2.shape[:-1])               # B*n rows (not -1: k may be 0)
                db = a2.reshape(N, k).T @ dy2.reshape(N, m)
            else:
                db = unbroadcast(a2.swapaxes(-1, -2) @ dy2, b2.shape)
            db = db.reshape(b.shape)
        return da, db
    return make(y, (a, b), "matmul", backward)
