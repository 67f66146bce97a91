"""The bigram baseline: the next token's logits are a learned function of the current token
only, a (V, V) table. The first milestone of every GPT-from-scratch course: it learns which
character tends to follow which (val loss about 2.5 on Shakespeare), and nothing more.
"""
import tensor.functional as F
from nn import Embedding, Module
from tensor import Tensor, backend

from .generate import generate


class Bigram(Module):
    """logits[b, t] = table[idx[b, t]]: row v of the (V, V) table scores every next token."""

    def __init__(self, config):
        self.config = config
        self.table = Embedding(config.vocab_size, config.vocab_size)     # (V, V)
        self.table.weight.data[...] = backend.generator("cpu").normal(
            0, 0.02, self.table.weight.shape)

    def forward(self, idx, targets=None, caches=None, last_only=False):
        idx = idx.data if isinstance(idx, Tensor) else idx
        if last_only:
            idx = idx[:, -1:]                                             # (B, 1)
        logits = self.table(self.table.weight.xp.asarray(idx))           # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits, targets)
        return logits, loss

    def new_caches(self):
        return [_NoCache()]          # nothing to cache: each step looks at one token

    def generate(self, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None,
                 rng=None, use_cache=True, on_token=None, stop_token=None):
        return generate(self, idx, max_new_tokens, temperature, top_k, top_p, rng, use_cache,
                        on_token, stop_token=stop_token)


class _NoCache:
    def __len__(self):
        return 0
