"""tokenizer: character-level and byte-level BPE tokenizers (text -> token ids -> text)."""
