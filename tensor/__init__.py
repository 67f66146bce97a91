"""tensor: a small reverse-mode autograd engine on NumPy (CPU) or CuPy (CUDA).

Reading order: backend.py (numpy or cupy), tensor.py (the Tensor and backward), then the
ops: elementwise.py, reduce.py, movement.py, matmul.py, and the fused ops gathered in
functional.py (linear.py, softmax.py, layernorm.py, gelu.py, embedding.py,
cross_entropy.py, attention.py). finite_differences.py checks every backward against
central differences.

Speed lives apart, in tensor/fast/ (kernels for the biggest ops on both CPU cores, malloc
tuning), switched on by `tensor.fast.enable()`; importing tensor changes nothing in the
process (no environment variable, no malloc setting, no thread).

    from tensor import Tensor, no_grad
    import tensor.functional as F
"""
from . import functional
from .backend import cuda_available, manual_seed
from .tensor import Tensor, detect_anomaly, no_grad, observe_ops

__all__ = ["Tensor", "no_grad", "detect_anomaly", "observe_ops", "functional", "manual_seed",
           "cuda_available"]
