"""A GPT turned into a text classifier (Raschka, "Build a Large Language Model", ch. 6).

    ids (B, T) --GPT body--> hidden states (B, T, C) --pick each row's last real token-->
      (B, C) --head: Linear(C, K), no bias--> class logits (B, K)

Causal attention lets only the last position see the whole text, so its hidden state is
the one that summarises it; with batches padded on the right, "last" is each row's last
real (non-padding) token, given as an index per row. The LM head is not used (no (B, T, V)
logits at all), and the classification head is a new bias-free Linear (the layout of
Hugging Face's GPT2ForSequenceClassification `score`), initialised N(0, 0.02) as GPT-2's
weights are.
"""
import numpy as np

import tensor.functional as F
from nn import Linear, Module
from tensor import Tensor, backend


class GPTClassifier(Module):
    """`logits, loss = model(ids, last, labels)`: ids (B, T), last (B,) the index of each
    row's last real token, labels (B,) class ids or None -> logits (B, K), mean loss."""

    def __init__(self, gpt, n_classes):
        if n_classes < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
        self.gpt = gpt
        self.config = gpt.config
        self.n_classes = n_classes
        self.head = Linear(gpt.config.n_embd, n_classes, bias=False)      # C -> K
        rng = backend.generator("cpu")
        self.head.weight.data[...] = backend.to_device(
            rng.normal(0.0, 0.02, self.head.weight.shape), self.head.weight.device)

    def forward(self, idx, last, labels=None):
        idx = np.asarray(idx.data if isinstance(idx, Tensor) else idx)
        last = np.asarray(last.data if isinstance(last, Tensor) else last)
        B, T = idx.shape
        if last.shape != (B,) or (B and (last.min() < 0 or last.max() >= T)):
            raise ValueError(f"last must hold one index in [0, {T}) per row, got shape "
                             f"{last.shape}")
        h = self.gpt.hidden_states(idx)                                   # (B, T, C)
        xp = h.xp
        h_last = h[xp.arange(B), xp.asarray(last)]                        # (B, C)
        logits = self.head(h_last)                                        # (B, K)
        loss = None if labels is None else F.cross_entropy(logits, labels)
        return logits, loss

    def trainable_prefixes(self, trainable):
        """Parameter-name prefixes that --trainable unfreezes: head (the new Linear only),
        last_block (+ the last block and the final layer norm, Raschka's choice), all."""
        last = f"gpt.blocks.{self.config.n_layer - 1}"
        return {"head": ["head"], "last_block": ["head", last, "gpt.ln_final"],
                "all": [], "lora": ["head"]}[trainable]
