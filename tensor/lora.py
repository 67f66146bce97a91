"""LoRA's affine map, one fused op: y = x @ W^T + b + s (x @ A^T) @ B^T (Hu et al. 2021).

A frozen weight W (out, in) plus a trainable low-rank update B @ A, A (r, in), B (out, r),
scaled by s = alpha / r. With x (..., in), dy (..., out), leading axes flattened into N
rows and u = x @ A^T (N, r) saved from the forward:

    dx = dy @ W + s (dy @ B) @ A      dA = s (dy @ B)^T @ x      dB = s dy^T @ u
    dW = dy^T @ x                     db = sum(dy)           (only if W, b require grad)

The update is never formed as an (out, in) matrix: both passes go through the r-wide
bottleneck, so the LoRA terms cost O(N r (in + out)) against the frozen product's
O(N in out). In LoRA W and b are frozen, so dW (the largest product of the backward) and db
are skipped, which is where LoRA saves time; nn/lora.py builds the module around this op.
"""
import math

from .tensor import make


def lora_linear(x, weight, bias, A, B, scale):
    """y = x W^T + b + s u B^T, u = x A^T;  dx = dy W + s (dy B) A, dA = s (dy B)^T x, dB = s dy^T u

    and, only when W and b require grad: dW = dy^T x, db = sum(dy) over the leading axes.
    x (..., in), W (out, in), b (out,) or None, A (r, in), B (out, r), s = scale = alpha / r.
    """
    out_features, in_features = weight.shape
    rank = A.shape[0]
    if x.shape[-1] != in_features:
        raise ValueError(f"lora_linear: input of shape {x.shape} has {x.shape[-1]} "
                         f"features, but the weight {weight.shape} expects {in_features}")
    if A.ndim != 2 or A.shape[1] != in_features:
        raise ValueError(f"lora_linear: A must be (rank, {in_features}) for the weight "
                         f"{weight.shape}, got {A.shape}")
    if B.shape != (out_features, rank):
        raise ValueError(f"lora_linear: B must be ({out_features}, {rank}) for the weight "
                         f"{weight.shape} and A {A.shape}, got {B.shape}")
    scale = float(scale)      # a Python float keeps float32 arrays float32 (NumPy 2's rules)
    lead = x.shape[:-1]                                           # (B, T) or any leading axes
    N = math.prod(lead)                                           # (not -1: in may be 0)
    x2 = x.data.reshape(N, in_features)                           # (N, in)
    y = x2 @ weight.data.T                                        # (N, in) @ (in, out) -> (N, out)
    if bias is not None:
        y += bias.data
    su = (x2 @ A.data.T) * scale                                  # (N, in) @ (in, r) -> (N, r)
    y += su @ B.data.T                                            # (N, r) @ (r, out) -> (N, out)
    parents = (x, weight, A, B) if bias is None else (x, weight, bias, A, B)

    def backward(dy):
        dy2 = dy.reshape(N, out_features)                         # (N, out)
        sg = None
        if x.requires_grad or A.requires_grad:
            sg = (dy2 @ B.data) * scale                           # (N, out) @ (out, r) -> (N, r)
        dx = None
        if x.requires_grad:
            dx = dy2 @ weight.data                                # (N, out) @ (out, in) -> (N, in)
            dx += sg @ A.data                                     # (N, r) @ (r, in) -> (N, in)
            dx = dx.reshape(x.shape)
        dw = dy2.T @ x2 if weight.requires_grad else None         # (out, N) @ (N, in)
        da = sg.T @ x2 if A.requires_grad else None               # (r, N) @ (N, in) -> (r, in)
        db_lora = dy2.T @ su if B.requires_grad else None         # (out, N) @ (N, r) -> (out, r)
        if bias is None:
            return dx, dw, da, db_lora
        dbias = dy2.sum(axis=0) if bias.requires_grad else None   # (out,)
        return dx, dw, dbias, da, db_lora
    return make(y.reshape(lead + (out_features,)), parents, "lora_linear", backward)
