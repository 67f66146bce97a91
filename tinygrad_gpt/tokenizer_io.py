"""The training pipeline's view of tokenizer/: fit one on the train split, save it beside a
run, load it back, name it by its content (identity), encode a corpus or a prompt, and
stream decoded text.

A run's tokenizer folder holds char.json (character level) or vocab.json + merges.txt
(byte-level BPE, Hugging Face's GPT-2 layout, so a GPT-2 download's folder works too).
"""
import codecs
import hashlib
import json
import sys
from pathlib import Path

from tokenizer import BPETokenizer, CharTokenizer

from .cli import UserError


def fit(kind, text, vocab_size):
    if kind == "char":
        return CharTokenizer.train(text)
    try:
        return BPETokenizer.train(text, vocab_size)
    except ValueError as e:
        raise UserError(f"--vocab_size {vocab_size}: {e}") from None


def save(tok, folder):
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(tok, CharTokenizer):
        tok.save(folder / "char.json")
    else:
        tok.save(folder)


def load(folder):
    folder = Path(folder)
    try:
        if (folder / "char.json").exists():
            return CharTokenizer.load(folder / "char.json")
        if (folder / "vocab.json").exists() or (folder / "encoder.json").exists():
            return BPETokenizer.load(folder)
    except (ValueError, OSError) as e:
        raise UserError(f"tokenizer in {folder} cannot be read: {e}") from None
    raise UserError(f"no tokenizer in {folder}: expected char.json, or vocab.json + merges.txt")


def identity(tok):
    """A 16-hex-digit hash of what a tokenizer does: its kind, vocabulary, merges (in rank
    order), special tokens and split pattern. Two tokenizers with the same identity encode
    every text alike, whichever files they were read from (the token cache's key)."""
    if isinstance(tok, CharTokenizer):
        content = ["char", tok.chars]
    else:
        content = ["bpe", tok.pattern, sorted((i, t.hex()) for i, t in tok.vocab.items()),
                   [[a, b, c] for (a, b), c in tok.merges.items()],
                   sorted(tok.special_tokens.items())]
    text = json.dumps(content, ensure_ascii=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:16]


def encode_corpus(tok, text):
    """Training text -> ids. Special-token strings in the text are ordinary text; characters a
    character tokenizer never saw in the train split (possible in val) are skipped."""
    if isinstance(tok, CharTokenizer):
        return [tok.stoi[c] for c in text if c in tok.stoi]
    return tok.encode_ordinary(text)


def prompt_ids(tok, text):
    """A prompt -> ids; characters the tokenizer has never seen are a clear error."""
    try:
        if isinstance(tok, CharTokenizer):
            return tok.encode(text)
        return tok.encode(text, allowed_special="all")
    except ValueError as e:
        raise UserError(f"the prompt cannot be encoded: {e}") from None


class Streamer:
    """Writes generated tokens to a stream as text as soon as they decode; a BPE token may
    end in the middle of a UTF-8 character, so bytes are decoded incrementally."""

    def __init__(self, tok, out=None):
        self.tok, self.out = tok, out or sys.stdout
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id):
        if isinstance(self.tok, CharTokenizer):
            text = self.tok.decode([token_id])
        else:
            text = self.decoder.decode(self.tok.decode_bytes([token_id]))
        self.out.write(text)
        self.out.flush()

    def flush(self):
        """The text still held back (an incomplete character at the end), replaced."""
        return self.decoder.decode(b"", final=True)
