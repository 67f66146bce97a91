"""Worked answers to the exercises in docs/README.md, written the way a learner would.

tests/test_exercises.py checks every answer, so the answers cannot rot:

1. layer_norm, softmax and gelu with hand-derived backwards, built with `make`. Check one:
       python -m tinygrad_gpt.gradcheck --op layer_norm \
           --function tinygrad_gpt.exercises:layer_norm
   `layer_norm_wrong` is the classic mistake (the path through rstd forgotten): the check
   reports FAIL. docs/exercises/my_ops.py is the blank version to fill in.
2. softmax_shift_gap: softmax(x + c) == softmax(x), and why its gradient rows sum to zero.
3. tied_embedding_gradient: the token embedding's gradient is the sum of two gradients.
4. bigram_count_loss and train_bigram: gradient descent finds what counting finds.
5. gpt_parameter_count: GPT-2 small's 124,439,808 parameters, from the formula.
"""
import math

import numpy as np

import nn
import tensor
from gpt import GPT, GPTConfig
from gpt.bigram import Bigram
from tensor import Tensor
from tensor.tensor import make

# ----- exercise 1: backward passes by hand ------------------------------------------------


def layer_norm(x, weight, bias, eps=1e-5):
    """y = n * w + b;   dx = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dy * w"""
    mu = x.data.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x.data - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    n = (x.data - mu) * rstd                          # the normalized input

    def backward(dy):
        rows = tuple(range(dy.ndim - 1))              # w and b are shared by every row
        dn = dy * weight.data
        # n depends on x directly, through mu, and through rstd: the two means are the last two
        dx = rstd * (dn - dn.mean(axis=-1, keepdims=True)
                     - n * (dn * n).mean(axis=-1, keepdims=True))
        return dx, (dy * n).sum(axis=rows), dy.sum(axis=rows)
    return make(n * weight.data + bias.data, (x, weight, bias), "layer_norm", backward)


def layer_norm_wrong(x, weight, bias, eps=1e-5):
    """y = n * w + b;   dx = rstd * (dn - mean(dn))   (WRONG: forgets the path through rstd)"""
    mu = x.data.mean(axis=-1, keepdims=True)
    rstd = 1.0 / np.sqrt(((x.data - mu) ** 2).mean(axis=-1, keepdims=True) + eps)
    n = (x.data - mu) * rstd

    def backward(dy):
        rows = tuple(range(dy.ndim - 1))
        dn = dy * weight.data
        dx = rstd * (dn - dn.mean(axis=-1, keepdims=True))   # treats rstd as a constant
        return dx, (dy * n).sum(axis=rows), dy.sum(axis=rows)
    return make(n * weight.data + bias.data, (x, weight, bias), "layer_norm", backward)


def softmax(x, axis=-1):
    """y = exp(x) / sum(exp(x));   dx = y * (dy - sum(dy * y))"""
    e = np.exp(x.data - x.data.max(axis=axis, keepdims=True))   # shifted: no overflow
    y = e / e.sum(axis=axis, keepdims=True)

    def backward(dy):
        # Jacobian dy_i/dx_k = y_i ([i = k] - y_k), applied to dy without forming it
        return (y * (dy - (dy * y).sum(axis=axis, keepdims=True)),)
    return make(y, (x,), "softmax", backward)


def gelu(x):
    """y = 0.5 x (1 + t), t = tanh(u);   dx = dy * (0.5 (1 + t) + 0.5 x (1 - t^2) u')

    u = s (x + k x^3), s = sqrt(2 / pi), k = 0.044715, so u' = s (1 + 3 k x^2).
    """
    s, k, a = math.sqrt(2.0 / math.pi), 0.044715, x.data
    t = np.tanh(s * (a + k * a ** 3))

    def backward(dy):
        du = s * (1 + 3 * k * a ** 2)                 # u'(x)
        return (dy * (0.5 * (1 + t) + 0.5 * a * (1 - t * t) * du),)
    return make(0.5 * a * (1 + t), (x,), "gelu", backward)


# ----- exercise 2: softmax does not see a constant shift ------------------------------------


def softmax_shift_gap(x, c):
    """max |softmax(x + c) - softmax(x)| along the last axis: exp(c) cancels, so ~1e-16."""
    xs = Tensor(np.asarray(x, dtype=np.float64), dtype=np.float64)
    shifted = Tensor(np.asarray(x, dtype=np.float64) + c, dtype=np.float64)
    return float(np.abs(softmax(shifted).data - softmax(xs).data).max())


def softmax_grad_row_sums(x, dy):
    """sum along the axis of softmax's dx for upstream dy: zero, because moving every input
    by the same amount changes nothing (the gradient is orthogonal to (1, 1, ..., 1))."""
    xt = Tensor(np.asarray(x, dtype=np.float64), requires_grad=True, dtype=np.float64)
    softmax(xt).backward(np.asarray(dy, dtype=np.float64))
    return xt.grad.sum(axis=-1)


# ----- exercise 3: the tied embedding gets two gradients ------------------------------------


def tied_embedding_gradient(text="To be, or not to be", seed=0):
    """(engine's dW, dW rebuilt by hand) for the token embedding W of a tiny GPT.

    W is used twice: as a lookup table (x = W[ids] + positions) and as the LM head
    (logits = h @ W^T). So dW = scatter-add of d(W[ids]) into the rows ids   (lookup)
                              + dlogits^T @ h                                (head)
    The tracer (tinygrad_gpt.trace) hands us d(W[ids]), dlogits and h.
    """
    from .trace import build_tiny, trace
    model, tok = build_tiny(text, seed=seed)
    t = trace(model, tok.encode(text))
    lookup = next(r for r in t.ops if r.module == "token_embedding" and r.op == "embedding")
    head = [r for r in t.ops if r.op == "linear"][-1]          # the last linear: the LM head
    V, C = model.token_embedding.weight.shape
    d_lookup = np.zeros((V, C))
    np.add.at(d_lookup, t.ids[:, :-1].reshape(-1), lookup.dy.reshape(-1, C))
    h = head.parents[0].data.reshape(-1, C)                     # ln_final's output
    d_head = head.dy.reshape(-1, V).T @ h
    return model.token_embedding.weight.grad, d_lookup + d_head


# ----- exercise 4: a bigram model learns the counts ------------------------------------------


def bigram_count_loss(ids, vocab_size):
    """Cross-entropy of the best possible bigram table on `ids`: p(b | a) = count(a b) /
    count(a), the maximum-likelihood estimate. Training can approach it, never beat it."""
    ids = np.asarray(ids)
    counts = np.zeros((vocab_size, vocab_size))
    np.add.at(counts, (ids[:-1], ids[1:]), 1)
    probs = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return float(-np.log(probs[ids[:-1], ids[1:]]).mean())


def train_bigram(ids, vocab_size, steps=300, lr=0.3, seed=0):
    """Train gpt.bigram.Bigram on all of `ids` at once with AdamW; return the final loss."""
    tensor.manual_seed(seed)
    model = Bigram(GPTConfig(vocab_size=vocab_size, block_size=8, n_layer=1, n_head=1,
                             n_embd=1))
    optimizer = nn.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    ids = np.asarray(ids)[None, :]
    loss = None
    for _ in range(steps):
        _, loss = model(ids[:, :-1], targets=ids[:, 1:])
        model.zero_grad()
        loss.backward()
        optimizer.step()
    return loss.item()


# ----- exercise 5: counting parameters --------------------------------------------------------


def gpt_parameter_count(config):
    """V C + block C + n_layer (12 C^2 + 13 C) + 2 C, for a GPT with biases.

    Per block: two LayerNorms (2 C each), query/key/value/attn_out (C^2 + C each),
    mlp_in (4 C^2 + 4 C), mlp_out (4 C^2 + C): 12 C^2 + 13 C. Plus the final LayerNorm
    (2 C); the LM head is the token embedding again, so it adds nothing. Without biases
    (bias=False) a block has 12 C^2 + 2 C (the LayerNorm gains) and the final one C.
    """
    V, C, L = config.vocab_size, config.n_embd, config.n_layer
    embeddings = V * C + config.block_size * C
    if config.bias:
        return embeddings + L * (12 * C * C + 13 * C) + 2 * C
    return embeddings + L * (12 * C * C + 2 * C) + C


def check_parameter_count(config):
    """(formula, counted) for a config small enough to build."""
    return gpt_parameter_count(config), GPT(config).num_parameters()
