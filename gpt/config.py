"""GPTConfig: the sizes that define a GPT, validated, with named presets.

PRESETS is the one table of model shapes: the training presets of the same names
(tinygrad_gpt/settings.py) take their sizes from it and add only the optimization settings.

Dimension names used throughout gpt/ (uppercase everywhere):
    B  batch size              T  sequence length (<= block_size)
    C  n_embd, the width       nh n_head, heads per attention layer
    hs head_size = C // nh     V  vocab_size
"""
from dataclasses import asdict, dataclass, fields


@dataclass
class GPTConfig:
    vocab_size: int = 50257    # V: number of distinct tokens
    block_size: int = 1024     # the longest context the model sees (learned positions)
    n_layer: int = 12          # transformer blocks
    n_head: int = 12           # nh: attention heads per block
    n_embd: int = 768          # C: width of the residual stream
    dropout: float = 0.0       # dropout probability (0 for evaluation and fine-tuning)
    bias: bool = True          # biases in Linear and LayerNorm (GPT-2: True; nanoGPT: False)

    def __post_init__(self):
        """Check the sizes: a ValueError names the field, its value and a fix. The training
        CLI checks its model settings with this same code (TrainConfig.validate)."""
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_embd % self.n_head:
            fits = max(self.n_head, self.n_embd - self.n_embd % self.n_head)
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head "
                             f"({self.n_head}), e.g. n_embd={fits}: the heads share the "
                             "width equally")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")

    @property
    def head_size(self):
        return self.n_embd // self.n_head

    def num_parameters(self):
        """The parameter count of a GPT of this shape, without building it (for a memory
        estimate before loading weights): embeddings (V + block) C; per block 12 C^2 weights
        (q, k, v, attn_out: 4 C^2; mlp_in, mlp_out: 8 C^2) and 2 C layer-norm gains, plus
        11 C biases (3 C q/k/v, C attn_out, 4 C mlp_in, C mlp_out, 2 C layer norms) when
        bias; then ln_final's C (+ C). The LM head is the tied token embedding."""
        C, bias = self.n_embd, int(self.bias)
        per_block = 12 * C * C + 2 * C + 11 * C * bias
        return (self.vocab_size + self.block_size) * C + self.n_layer * per_block + C * (1 + bias)

    def to_dict(self):
        return asdict(self)

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig keys: {', '.join(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, name, **overrides):
        """A named configuration (see PRESETS), with any field overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})


PRESETS = {
    # nanoGPT's CPU Shakespeare run (config/train_shakespeare_char.py with the README's
    # CPU overrides): 4 layers, 4 heads, 128 wide, block 64, ~0.8M parameters.
    "shakespeare-char-cpu": dict(vocab_size=65, block_size=64, n_layer=4, n_head=4,
                                 n_embd=128, dropout=0.0, bias=False),
    # nanoGPT's GPU "baby GPT" (config/train_shakespeare_char.py): ~10.7M parameters.
    "baby-gpt": dict(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384,
                     dropout=0.2, bias=False),
    # GPT-2 small (124M), the shape of OpenAI's smallest released model.
    "gpt2": dict(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768,
                 dropout=0.0, bias=True),
    # minGPT's gpt-nano: tiny, for tests and teaching.
    "gpt-nano": dict(vocab_size=65, block_size=32, n_layer=3, n_head=3, n_embd=48,
                     dropout=0.0, bias=True),
}
