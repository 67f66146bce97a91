"""tensor: a small reverse-mode autograd engine on NumPy (CPU) or CuPy (CUDA).

Reading order: backend.py (numpy or cupy), tensor.py (the Tensor and backward), then the
ops: elementwise.py, reduce.py, movement.py, matmul.py, and the fused ops gathered in
functional.py (softmax.py, layernorm.py, gelu.py, embedding.py, cross_entropy.py,
attention.py); threads.py is how the biggest of those use both CPU cores. gradcheck.py
checks every backward against finite differences.

    from tensor import Tensor, no_grad
    import tensor.functional as F
"""
import os

# Before NumPy loads OpenBLAS (so import tensor before numpy): OpenBLAS's idle threads then
# sleep right after a matmul instead of spinning for ~0.1 s, which leaves the second core
# free for the elementwise work that threads.py splits over both cores.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

from . import functional  # noqa: E402  (after the environment line above)
from .backend import cuda_available, manual_seed
from .tensor import Tensor, detect_anomaly, no_grad, observe_ops

__all__ = ["Tensor", "no_grad", "detect_anomaly", "observe_ops", "functional", "manual_seed",
           "cuda_available"]
