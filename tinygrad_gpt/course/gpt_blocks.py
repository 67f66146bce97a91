"""Checks and worked answers for docs/notebooks/04_gpt_block_by_block.ipynb.

    1. check_layer_norm(fn):       fn(x, w, b, eps) -> y, layer norm over the last axis in
                                   NumPy, x (..., C), w and b (C,)
    2. check_gelu(fn):             fn(x) -> GPT-2's tanh GELU in NumPy
    3. check_block_parameters(fn): fn(C, bias) -> the parameter count of one Block of width C

Each check prints "Exercise N: not answered yet (hint)" and returns False for the
placeholder (None, or a function that returns None), raises AssertionError naming what is
wrong, or prints "Exercise N: correct" and returns True. The references are the project's
own: tensor/layernorm.py, tensor/gelu.py (through tensor.functional) and gpt/model.py's Block.
"""
import math

import numpy as np

import tensor.functional as F
from gpt import GPTConfig
from gpt.model import Block
from tensor import Tensor

from . import correct, not_answered


def _compare(n, name, mine, ref, atol=1e-9):
    mine = np.asarray(mine, dtype=np.float64)
    assert mine.shape == ref.shape, \
        f"Exercise {n}: {name} has shape {mine.shape}, expected {ref.shape}"
    err = np.abs(mine - ref)
    where = tuple(int(i) for i in np.unravel_index(err.argmax(), err.shape))
    assert err.max() <= atol, f"Exercise {n}: {name} is off by up to {err.max():.3g} (at " \
                              f"index {where})"


# Exercise 1: layer norm's forward

def answer_layer_norm(x, w, b, eps=1e-5):
    """y = (x - mean) / sqrt(var + eps) * w + b over the last axis (var with 1 / C)."""
    mean = x.mean(axis=-1, keepdims=True)                       # (..., 1)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)        # (..., 1), biased
    return (x - mean) / np.sqrt(var + eps) * w + b              # (..., C)


def wrong_layer_norm_unbiased(x, w, b, eps=1e-5):
    n = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, ddof=1, keepdims=True) + eps)
    return n * w + b                                            # var divided by C - 1


def wrong_layer_norm_no_eps(x, w, b, eps=1e-5):
    return (x - x.mean(-1, keepdims=True)) / x.std(-1, keepdims=True) * w + b


def wrong_layer_norm_axis0(x, w, b, eps=1e-5):
    n = (x - x.mean(0, keepdims=True)) / np.sqrt(x.var(0, keepdims=True) + eps)
    return n * w + b                                            # normalizes across the batch


def check_layer_norm(fn):
    hint = "mean and variance over the last axis (keepdims=True), then * w + b"
    if fn is None:
        return not_answered(1, hint)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 8))                          # (B, T, C)
    x[0, 0] *= 1e-2                  # a row of small variance, where eps matters
    w, b = rng.standard_normal(8), rng.standard_normal(8)       # (C,)
    got = fn(x.copy(), w.copy(), b.copy(), 1e-5)
    if got is None:
        return not_answered(1, hint)
    ref = F.layer_norm(Tensor(x, dtype=np.float64), Tensor(w, dtype=np.float64),
                       Tensor(b, dtype=np.float64), 1e-5).numpy()
    _compare(1, "y", got, ref)
    return correct(1)


# Exercise 2: GELU

def answer_gelu(x):
    """GPT-2's tanh form: 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))."""
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def wrong_gelu_relu(x):
    return np.maximum(x, 0.0)


def wrong_gelu_no_cube(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * x))


def check_gelu(fn):
    hint = "0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))"
    if fn is None:
        return not_answered(2, hint)
    x = np.linspace(-5.0, 5.0, 41)
    got = fn(x.copy())
    if got is None:
        return not_answered(2, hint)
    ref = F.gelu(Tensor(x, dtype=np.float64), "tanh").numpy()
    _compare(2, "gelu(x)", got, ref)
    return correct(2)


# Exercise 3: the parameters of one block

def answer_block_parameters(C, bias):
    """ln_attn, ln_mlp: C gains (+ C biases) each; query, key, value, attn_out: C^2 (+ C)
    each; mlp_in: 4C^2 (+ 4C); mlp_out: 4C^2 (+ C). Total 12 C^2 + 2 C (+ 11 C)."""
    return 12 * C * C + 2 * C + (11 * C if bias else 0)


def wrong_block_parameters_no_norms(C, bias):
    return 12 * C * C + (9 * C if bias else 0)


def wrong_block_parameters_mlp_2x(C, bias):
    return 8 * C * C + 2 * C + (9 * C if bias else 0)


def check_block_parameters(fn):
    hint = "two LayerNorms, four C x C Linears, C -> 4C and 4C -> C; biases when bias"
    if fn is None:
        return not_answered(3, hint)
    for C in (8, 48, 128):
        for bias in (False, True):
            got = fn(C, bias)
            if got is None:
                return not_answered(3, hint)
            expected = Block(GPTConfig(n_embd=C, n_head=4, bias=bias)).num_parameters()
            assert got == expected, f"Exercise 3: a Block with C={C}, bias={bias} has " \
                                    f"{expected:,} parameters, not {got!r}"
    return correct(3)


CHECKS = [
    (check_layer_norm, answer_layer_norm,
     [wrong_layer_norm_unbiased, wrong_layer_norm_no_eps, wrong_layer_norm_axis0]),
    (check_gelu, answer_gelu, [wrong_gelu_relu, wrong_gelu_no_cube]),
    (check_block_parameters, answer_block_parameters,
     [wrong_block_parameters_no_norms, wrong_block_parameters_mlp_2x]),
]
