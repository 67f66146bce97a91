"""GPT: the GPT-2 architecture, built from nn modules (and so from tensor ops only).

    ids (B, T) --token_embedding--> (B, T, C)  +  position_embedding (T, C)
      -> dropout -> n_layer x Block -> ln_final -> @ token_embedding^T -> logits (B, T, V)

    Block:  x = x + attn(ln_attn(x))      (tokens look at earlier tokens)
            x = x + mlp(ln_mlp(x))        (each position thinks on its own)

Dimension names as in config.py: B batch, T time, C n_embd, nh heads, hs head_size, V vocab.
GPT-2's own parameter names (wte, c_attn, c_fc, ...) appear only in hf.py.
"""
import dataclasses
import math

import numpy as np

import tensor.functional as F
from nn import GELU, Dropout, Embedding, LayerNorm, Linear, Module, ModuleList
from tensor import Tensor, backend

from .attention import CausalSelfAttention, KVCache
from .config import GPTConfig
from .generate import generate
from .hf import load_pretrained, save_pretrained


class MLP(Module):
    """Position-wise feed-forward: C -> 4C -> GELU -> C."""

    def __init__(self, config):
        C = config.n_embd
        self.mlp_in = Linear(C, 4 * C, bias=config.bias)
        self.gelu = GELU("tanh")
        self.mlp_out = Linear(4 * C, C, bias=config.bias)
        self.dropout = Dropout(config.dropout)

    def forward(self, x):
        h = self.gelu(self.mlp_in(x))                     # (B, T, 4C)
        return self.dropout(self.mlp_out(h))              # (B, T, C)


class Block(Module):
    """One transformer block, pre-norm as in GPT-2."""

    def __init__(self, config):
        self.ln_attn = LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_mlp = LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, cache=None):
        x = x + self.attn(self.ln_attn(x), cache)         # (B, T, C)
        x = x + self.mlp(self.ln_mlp(x))                  # (B, T, C)
        return x


class GPT(Module):
    """A GPT-2 language model. `logits, loss = model(ids, targets)`, as in nanoGPT."""

    def __init__(self, config):
        self.config = config
        self.token_embedding = Embedding(config.vocab_size, config.n_embd)     # (V, C)
        self.position_embedding = Embedding(config.block_size, config.n_embd)  # (block, C)
        self.dropout = Dropout(config.dropout)
        self.blocks = ModuleList([Block(config) for _ in range(config.n_layer)])
        self.ln_final = LayerNorm(config.n_embd, bias=config.bias)
        # The LM head is tied to the token embedding: logits = x @ token_embedding.weight^T,
        # so no separate (V, C) matrix exists, and that weight gets gradient from both uses.
        self.init_weights()

    def init_weights(self):
        """GPT-2 initialisation: weights ~ N(0, 0.02), biases 0, LayerNorm gain 1, and the
        projections that write into the residual stream (attn_out, mlp_out) scaled down by
        1/sqrt(2 n_layer), since each of the 2 n_layer blocks adds to the same stream."""
        rng = backend.generator("cpu")
        residual_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith(("attn_out.weight", "mlp_out.weight")):
                p.data[...] = backend.to_device(rng.normal(0, residual_std, p.shape), p.device)
            elif name.endswith("weight") and p.ndim == 2:
                p.data[...] = backend.to_device(rng.normal(0, 0.02, p.shape), p.device)
            elif name.endswith("bias"):
                p.data[...] = 0

    def num_parameters(self, non_embedding=False):
        """Parameter count; non_embedding=True leaves out the position embedding (as nanoGPT
        reports it; the token embedding stays in, since it is also the LM head)."""
        n = super().num_parameters()
        return n - self.position_embedding.weight.size if non_embedding else n

    def hidden_states(self, idx, caches=None):
        """idx (B, T) int -> the final hidden states (B, T, C), after ln_final: what the LM
        head reads (and a classification head, for fine-tuning).

        caches: one KVCache per block, for generation (positions continue after the cached
        ones).
        """
        idx = idx.data if isinstance(idx, Tensor) else np.asarray(idx)
        B, T = idx.shape
        past = len(caches[0]) if caches else 0
        if past + T > self.config.block_size:
            raise ValueError(f"sequence of {past + T} tokens is longer than block_size "
                             f"{self.config.block_size}: crop the context")
        xp = self.token_embedding.weight.xp
        idx = xp.asarray(idx)
        positions = xp.arange(past, past + T)                                # (T,)
        x = self.token_embedding(idx) + self.position_embedding(positions)  # (B, T, C)
        x = self.dropout(x)
        for i, block in enumerate(self.blocks):
            x = block(x, caches[i] if caches else None)                      # (B, T, C)
        return self.ln_final(x)                                              # (B, T, C)

    def forward(self, idx, targets=None, caches=None, last_only=False):
        """idx (B, T) int -> logits (B, T, V), and the mean cross-entropy when targets given.

        caches: as in hidden_states. last_only: compute logits for the last position only
        (generation needs no more).
        """
        x = self.hidden_states(idx, caches)                                  # (B, T, C)
        if last_only:
            x = x[:, -1:, :]                                                 # (B, 1, C)
        logits = F.linear(x, self.token_embedding.weight)                    # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss

    def crop_block_size(self, block_size):
        """Shorten the context to block_size positions, as nanoGPT's crop_block_size: keep
        the first block_size rows of the position embedding (block, C) -> (block_size, C),
        and config.block_size. For training a pretrained model on shorter sequences (less
        memory per step); positions beyond block_size are gone for good."""
        if isinstance(block_size, bool) or not isinstance(block_size, int) or \
                not 0 < block_size <= self.config.block_size:
            raise ValueError(f"crop_block_size({block_size!r}): the new block_size must be a "
                             f"positive integer <= the current {self.config.block_size}")
        weight = self.position_embedding.weight
        weight.data = weight.data[:block_size].copy()                       # (block_size, C)
        weight.grad = None
        self.config = dataclasses.replace(self.config, block_size=block_size)
        return self

    def new_caches(self):
        """Empty key/value caches, one per block, for `forward(..., caches=...)`."""
        return [KVCache() for _ in self.blocks]

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 rng=None, use_cache=True, on_token=None, stop_token=None):
        """Continue each row of idx (B, T) by up to max_new_tokens tokens (fewer once every
        row has produced stop_token); see gpt/generate.py."""
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, rng, use_cache,
                        on_token, stop_token=stop_token)

    @classmethod
    def from_pretrained(cls, path, device="cpu"):
        """Load a Hugging Face GPT-2 directory (config.json + model.safetensors)."""
        return load_pretrained(cls, path, device)

    def save_pretrained(self, path):
        """Write config.json + model.safetensors in Hugging Face's GPT-2 layout."""
        save_pretrained(self, path)


__all__ = ["GPT", "GPTConfig", "Block", "MLP"]
