"""tokenizer: character-level and byte-level BPE tokenizers (text -> token ids -> text).

Reading order: char.py (the simplest tokenizer), then byte-level BPE: pairs.py (merge a pair;
apply merges by rank), train_bpe.py (learning merges incrementally), patterns.py (the split
regex and special tokens), bpe.py (the tokenizer), bytes_unicode.py and files.py (GPT-2's
file formats), audit.py (how a trained tokenizer segments text). docs/tokenizer.md explains
the ideas with a worked example.

Nothing here imports the model: data flows text -> tokenizer -> ids -> gpt.
"""
from .bpe import BPETokenizer
from .char import CharTokenizer
from .patterns import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN

__all__ = ["BPETokenizer", "CharTokenizer", "GPT2_SPLIT_PATTERN", "GPT4_SPLIT_PATTERN"]
