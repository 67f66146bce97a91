"""The affine map of a Linear layer, one fused op: y = x @ W^T + b.

W is (out, in), PyTorch's layout, so a weight row is one output unit and a tied token
embedding (V, C) can serve as the LM head directly. With x (..., in) and dy (..., out):

    dx = dy @ W          dW = dy^T @ x  (summed over every leading axis)     db = sum(dy)

Fusing the bias add into the matmul saves a graph node and a pass over the output, and
the leading axes (B, T) are flattened so each product is one large GEMM.
"""
import math

from .tensor import make


def linear(x, weight, bias=None):
    """y = x @ W^T + b;   dx = dy @ W,  dW = dy^T @ x,  db = sum(dy) over leading axes"""
    out_features, in_features = weight.shape
    if x.shape[-1] != in_features:
        raise ValueError(f"linear: input of shape {x.shape} has {x.shape[-1]} features, "
                         f"but the weight {weight.shape} expects {in_features}")
    lead = x.shape[:-1]                                           # (B, T) or any leading axes
    N = math.prod(lead)                                           # (not -1: in may be 0)
    x2 = x.data.reshape(N, in_features)                           # (N, in)
    y = x2 @ weight.data.T                                        # (N, in) @ (in, out) -> (N, out)
    if bias is not None:
        y += bias.data
    parents = (x, weight) if bias is None else (x, weight, bias)

    def backward(dy):
        dy2 = dy.reshape(N, out_features)                         # (N, out)
        dx = (dy2 @ weight.data).reshape(x.shape) if x.requires_grad else None
        dw = dy2.T @ x2 if weight.requires_grad else None        # (out, N) @ (N, in)
        if bias is None:
            return dx, dw
        return dx, dw, (dy2.sum(axis=0) if bias.requires_grad else None)
    return make(y.reshape(lead + (out_features,)), parents, "linear", backward)
