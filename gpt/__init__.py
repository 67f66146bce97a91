"""gpt: the GPT-2 model, built only from `nn` modules and `tensor` ops.

Reading order: config.py (sizes, presets, dimension names), attention.py (causal
self-attention and the KV cache), model.py (MLP, Block, GPT), generate.py (sampling),
hf.py (the one mapping to Hugging Face's GPT-2 names and files).
"""
from .config import PRESETS, GPTConfig
from .model import GPT

__all__ = ["GPT", "GPTConfig", "PRESETS"]
