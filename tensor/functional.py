"""tensor.functional (import tensor.functional as F): the fused ops a model is built from.

Each lives in its own file with its forward and hand-derived backward side by side:
    softmax, log_softmax  -> softmax.py        layer_norm    -> layernorm.py
    gelu                  -> gelu.py           embedding     -> embedding.py
    cross_entropy         -> cross_entropy.py  linear        -> linear.py
    scaled_dot_product_attention -> attention.py                  dropout -> here
"""
from . import backend
from .attention import scaled_dot_product_attention
from .cross_entropy import cross_entropy
from .embedding import embedding
from .gelu import gelu
from .layernorm import layer_norm
from .linear import linear
from .softmax import log_softmax, softmax
from .tensor import make


def dropout(x, p=0.1, training=True):
    """y = x * m / (1 - p), m_i ~ Bernoulli(1 - p);   dx = dy * m / (1 - p)

    Identity when not training or p == 0. The mask is drawn from the generator seeded by
    tensor.manual_seed, so runs are reproducible.
    """
    if not 0 <= p <= 1:
        raise ValueError(f"dropout probability must be in [0, 1], got {p}")
    if not training or p == 0:
        return x
    keep = backend.generator(x.device).random(x.shape, dtype=x.dtype) >= p
    scale = keep * x.dtype.type(1.0 / (1.0 - p)) if p < 1 else keep * x.dtype.type(0)
    return make(x.data * scale, (x,), "dropout", lambda dy: (dy * scale,))


__all__ = ["softmax", "log_softmax", "layer_norm", "gelu", "embedding", "cross_entropy",
           "linear", "scaled_dot_product_attention", "dropout"]
