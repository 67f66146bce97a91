"""Layers: Linear, Embedding, LayerNorm, Dropout, GELU. Each is a thin Module around one
fused op from tensor.functional, holding its parameters.

Initialisation draws from the generator seeded by tensor.manual_seed (on the CPU, then
moved), so a model built after manual_seed(s) is the same on every run and every device.
Defaults follow PyTorch; GPT re-initialises its weights the GPT-2 way.
"""
import math

import numpy as np

import tensor.functional as F
from tensor import backend

from .module import Module, Parameter


def uniform(shape, bound):
    return backend.generator("cpu").uniform(-bound, bound, size=shape)


def normal(shape, std):
    return backend.generator("cpu").normal(0.0, std, size=shape)


class Linear(Module):
    """y = x @ W^T + b, with W of shape (out_features, in_features) as in PyTorch."""

    def __init__(self, in_features, out_features, bias=True):
        bound = 1.0 / math.sqrt(in_features)
        self.weight = Parameter(uniform((out_features, in_features), bound))
        self.bias = Parameter(uniform((out_features,), bound)) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        out_features, in_features = self.weight.shape
        return f"{in_features}, {out_features}, bias={self.bias is not None}"


class Embedding(Module):
    """A lookup table: ids (...) -> rows of weight (num_embeddings, dim) -> (..., dim)."""

    def __init__(self, num_embeddings, dim):
        self.weight = Parameter(normal((num_embeddings, dim), 1.0))

    def forward(self, ids):
        return F.embedding(ids, self.weight)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, {self.weight.shape[1]}"


class LayerNorm(Module):
    """Normalize the last axis to mean 0, variance 1, then scale (weight) and shift (bias)."""

    def __init__(self, dim, bias=True, eps=1e-5):
        self.weight = Parameter(np.ones(dim))
        self.bias = Parameter(np.zeros(dim)) if bias else None
        self.eps = eps

    def forward(self, x):
        return F.layer_norm(x, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.weight.shape[0]}, bias={self.bias is not None}"


class Dropout(Module):
    """Zero each element with probability p while training; identity in eval mode."""

    def __init__(self, p=0.0):
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class GELU(Module):
    """GELU activation; approximate='tanh' is GPT-2's, 'none' the exact erf form."""

    def __init__(self, approximate="tanh"):
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, self.approximate)
