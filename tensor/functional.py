"""tensor.functional (import tensor.functional as F): the fused ops a model is built from.

Each lives in its own file with its forward and hand-derived backward side by side:
    softmax, log_softmax  -> softmax.py        layer_norm    -> layernorm.py
    gelu                  -> gelu.py           embedding     -> embedding.py
    cross_entropy         -> cross_entropy.py  linear        -> linear.py
    lora_linear (LoRA: linear + a low-rank update) -> lora.py
    scaled_dot_product_attention -> attention.py                  dropout -> here

Those files are the reference: what runs unless tensor.fast has registered a faster kernel
for the op (dispatch.py), which computes the same thing, tested against the reference.
"""
from . import backend, dispatch
from .attention import scaled_dot_product_attention as reference_attention
from .cross_entropy import cross_entropy as reference_cross_entropy
from .embedding import embedding as reference_embedding
from .gelu import gelu as reference_gelu
from .layernorm import layer_norm as reference_layer_norm
from .linear import linear
from .lora import lora_linear
from .softmax import log_softmax, softmax
from .tensor import make


def embedding(ids, weight):
    """Rows of weight picked by integer ids (embedding.py)."""
    return dispatch.kernel("embedding", reference_embedding)(ids, weight)


def gelu(x, approximate="tanh"):
    """GELU (gelu.py)."""
    return dispatch.kernel("gelu", reference_gelu)(x, approximate)


def layer_norm(x, weight=None, bias=None, eps=1e-5):
    """Layer norm over the last axis (layernorm.py)."""
    return dispatch.kernel("layer_norm", reference_layer_norm)(x, weight, bias, eps)


def cross_entropy(logits, targets, ignore_index=-100):
    """Mean cross-entropy of logits against integer targets (cross_entropy.py)."""
    return dispatch.kernel("cross_entropy", reference_cross_entropy)(logits, targets,
                                                                     ignore_index)


def scaled_dot_product_attention(q, k, v, is_causal=True, offset=0, dropout_p=0.0,
                                 training=False):
    """softmax(q k^T / sqrt(hs) + causal mask) v as one op (attention.py)."""
    return dispatch.kernel("attention", reference_attention)(q, k, v, is_causal, offset,
                                                             dropout_p, training)


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
           "linear", "lora_linear", "scaled_dot_product_attention", "dropout"]
