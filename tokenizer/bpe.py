"""Byte-level BPE as GPT-2: train on text, encode/decode, save/load GPT-2's file layouts.

Text -> UTF-8 bytes -> chunks by a split regex (patterns.py) -> each chunk starts as its byte
tokens and pairs are merged by rank (pairs.py) -> ids. Every byte is a token, so any text
encodes, and decode(encode(text)) == text always.

    tok = BPETokenizer.train(text, vocab_size=1024)          # pattern="gpt2" | "gpt4" | regex
    ids = tok.encode("Hello world")                          # [..., ...]
    tok.decode(ids)                                          # "Hello world"
    tok.save("out/tok")                                      # vocab.json + merges.txt
    BPETokenizer.load("out/tok")                   # or OpenAI's encoder.json + vocab.bpe

A trained tokenizer has ids 0..255 = the bytes (as minbpe and tiktoken), 256.. = merges in
the order learned, then the special tokens. A loaded one keeps the ids of its files (in
GPT-2's, "!" is 0 and the space byte is 220).
"""
from collections import Counter
from itertools import chain

import regex

from . import files
from .pairs import apply_merges, merge_priorities
from .patterns import resolve_pattern, special_splitter, split_special
from .train_bpe import learn_merges


class BPETokenizer:
    """Byte-level byte-pair-encoding tokenizer.

    vocab:          int -> bytes, the ordinary tokens, which must include all 256 single bytes
    merges:         (int, int) -> int, pair -> merged token, in rank order (first = applied first)
    pattern:        "gpt2", "gpt4" or a regex for the `regex` package: how text is chunked
    special_tokens: str -> int, whole strings that encode to one id, never split or merged
    """

    cache_size = 200_000        # distinct chunks remembered between encode calls

    def __init__(self, vocab, merges, pattern="gpt2", special_tokens=None):
        self.vocab = dict(vocab)                                  # int -> bytes
        self.merges = dict(merges)                                # (int, int) -> int
        self.pattern = resolve_pattern(pattern)
        self.special_tokens = dict(special_tokens or {})          # str -> int
        self.byte_ids = byte_ids(self.vocab)                      # list: byte value -> id
        check_merges(self.vocab, self.merges)
        check_specials(self.vocab, self.special_tokens)
        self._decoder = dict(self.vocab)                          # int -> bytes, specials too
        self._decoder.update((i, s.encode("utf-8")) for s, i in self.special_tokens.items())
        self._priorities = merge_priorities(self.merges)          # (int, int) -> int
        self._split = regex.compile(self.pattern)
        self._cache = {}                                          # chunk str -> list of ids
        # largest id + 1: the rows a model's embedding table needs
        self.vocab_size = 1 + max(chain(self.vocab, self.special_tokens.values()))

    # ---- training ---------------------------------------------------------------------------

    @classmethod
    def train(cls, text, vocab_size, pattern="gpt2", special_tokens=("<|endoftext|>",)):
        """Learn vocab_size - 256 - len(special_tokens) merges from `text`.

        Special tokens' strings are cut out of the text first, so no merge learns them; they
        take the last ids. Training stops early (a smaller vocabulary) only when no chunk has
        two tokens left. Ties between equally frequent pairs go to the smallest id pair (see
        train_bpe.py).
        """
        specials = list(dict.fromkeys(special_tokens))
        if any(not isinstance(s, str) or not s for s in specials):
            raise ValueError(f"special tokens must be non-empty strings, got {specials!r}")
        num_merges = vocab_size - 256 - len(specials)
        if num_merges < 0:
            raise ValueError(f"vocab_size {vocab_size} is too small: byte-level BPE needs 256 "
                             f"byte tokens + {len(specials)} special token(s) = "
                             f"{256 + len(specials)} at least")
        pattern = resolve_pattern(pattern)
        split = regex.compile(pattern)
        chunk_freqs = Counter()                                   # str -> occurrences
        for piece, is_special in split_special(text, special_splitter(specials)):
            if not is_special:
                chunk_freqs.update(split.findall(piece))
        merges = learn_merges(chunk_freqs, num_merges)
        vocab = {i: bytes([i]) for i in range(256)}
        for (left, right), new_id in merges.items():
            vocab[new_id] = vocab[left] + vocab[right]
        first_special = 256 + len(merges)
        return cls(vocab, merges, pattern,
                   {s: first_special + k for k, s in enumerate(specials)})

    # ---- encoding ---------------------------------------------------------------------------

    def encode_ordinary(self, text):
        """Encode text with no special-token handling: "<|endoftext|>" is just 13 characters.

        Each distinct chunk is encoded once and cached; the text's ids are the concatenation
        of its chunks' ids.
        """
        chunks = self._split.findall(text)
        cache = self._cache
        missing = set(chunks).difference(cache)
        if len(cache) + len(missing) > self.cache_size:
            cache.clear()
            missing = set(chunks)
        for chunk in missing:
            cache[chunk] = self.encode_chunk(chunk)
        return list(chain.from_iterable(map(cache.__getitem__, chunks)))

    def encode_chunk(self, chunk):
        """One pre-token chunk -> ids, by merges in rank order (pairs.apply_merges).
        (surrogateescape turns the stand-ins that encode_bytes makes for invalid bytes back
        into those bytes; valid text is unaffected.)"""
        data = chunk.encode("utf-8", errors="surrogateescape")
        return apply_merges(map(self.byte_ids.__getitem__, data), self._priorities)

    def encode_bytes(self, data):
        """Encode any bytes, valid UTF-8 or not: decode_bytes(encode_bytes(data)) == data.

        Invalid bytes are read as Python's surrogateescape stand-ins (U+DC80..U+DCFF), which
        the split regex treats as symbols; each turns back into its byte token. For valid
        UTF-8, encode_bytes(data) == encode_ordinary(data.decode()).
        """
        return self.encode_ordinary(data.decode("utf-8", errors="surrogateescape"))

    def encode(self, text, allowed_special="none_raise"):
        """Encode text; special tokens' strings are treated as tiktoken does.

        allowed_special:
          "none_raise" (default): no special token is encoded as one, and text that contains a
                       special token's string raises ValueError (it is likely a mistake:
                       user text pretending to be a document boundary)
          "all":       every special token's string becomes its one id
          "none":      special strings are ordinary text (same as encode_ordinary)
          a set:       those specials become their ids; any other special string raises
        """
        if allowed_special == "none":
            return self.encode_ordinary(text)
        if allowed_special == "all":
            allowed = set(self.special_tokens)
        elif allowed_special == "none_raise":
            allowed = set()
        elif isinstance(allowed_special, (set, frozenset, list, tuple)):
            allowed = set(allowed_special)
            unknown = allowed - set(self.special_tokens)
            if unknown:
                raise ValueError(f"allowed_special names {sorted(unknown)!r}, which are not "
                                 f"special tokens of this tokenizer: {self.special_list()}")
        else:
            raise ValueError(f"allowed_special must be 'none_raise', 'all', 'none' or a set of "
                             f"special tokens, got {allowed_special!r}")
        for special in sorted(set(self.special_tokens) - allowed):
            where = text.find(special)
            if where >= 0:
                raise ValueError(
                    f"text contains the special token {special!r} at character {where}, which is "
                    f"not allowed here: pass allowed_special='all' (or a set containing it) to "
                    f"encode it as id {self.special_tokens[special]}, or allowed_special='none' to "
                    f"encode it as ordinary text")
        if not allowed:
            return self.encode_ordinary(text)
        ids = []
        for piece, is_special in split_special(text, special_splitter(allowed)):
            if is_special:
                ids.append(self.special_tokens[piece])
            else:
                ids.extend(self.encode_ordinary(piece))
        return ids

    # ---- decoding ---------------------------------------------------------------------------

    def decode_bytes(self, ids):
        """ids -> the exact bytes they stand for (special tokens as their UTF-8 text)."""
        try:
            return b"".join(map(self._decoder.__getitem__, ids))
        except KeyError as e:
            raise ValueError(f"unknown token id {e.args[0]!r}: this tokenizer's ids are "
                             f"0..{self.vocab_size - 1}") from None

    def decode(self, ids):
        """ids -> text. Bytes that are not valid UTF-8 (a token sequence cut inside a
        character, as sampling can produce) become U+FFFD '�'; this never raises for
        known ids."""
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_to_bytes(self, token_id):
        """One id -> its bytes: b" the", or b"<|endoftext|>" for that special token."""
        return self.decode_bytes([token_id])

    def special_list(self):
        """The special tokens' strings, by id."""
        return sorted(self.special_tokens, key=self.special_tokens.get)

    # ---- files ------------------------------------------------------------------------------

    def save(self, directory):
        """Write Hugging Face's GPT-2 layout: vocab.json + merges.txt (+ split_pattern.json)."""
        files.save_hf(directory, self.vocab, self.merges, self.special_tokens, self.pattern)

    @classmethod
    def load(cls, directory, pattern=None):
        """Read vocab.json + merges.txt (Hugging Face) or encoder.json + vocab.bpe (OpenAI).

        The split pattern comes from `pattern` if given, else split_pattern.json if the folder
        has one (ours do), else GPT-2's. Vocabulary entries that are neither a byte nor the
        result of a merge (GPT-2's "<|endoftext|>") become special tokens.
        """
        vocab, merges, specials, saved_pattern = files.load_bpe(directory)
        return cls(vocab, merges, pattern or saved_pattern or "gpt2", specials)

    def __repr__(self):
        return (f"BPETokenizer(vocab_size={self.vocab_size}, merges={len(self.merges)}, "
                f"special_tokens={self.special_list()})")


def byte_ids(vocab):
    """The id of each single-byte token: list, byte value -> id. ValueError if one is missing
    (then some text could not be encoded) or appears twice."""
    ids = [None] * 256
    for token_id, token in vocab.items():
        if len(token) == 1:
            if ids[token[0]] is not None:
                raise ValueError(f"byte 0x{token[0]:02x} is both token {ids[token[0]]} and "
                                 f"token {token_id}")
            ids[token[0]] = token_id
    missing = [f"0x{b:02x}" for b, i in enumerate(ids) if i is None]
    if missing:
        raise ValueError(f"the vocabulary lacks single-byte tokens for {len(missing)} byte "
                         f"value(s) ({', '.join(missing[:8])}...): byte-level BPE needs all 256")
    return ids


def check_merges(vocab, merges):
    """Every merge (a, b) -> c must have bytes(c) == bytes(a) + bytes(b)."""
    for (left, right), new_id in merges.items():
        parts = [vocab.get(left), vocab.get(right), vocab.get(new_id)]
        if None in parts or parts[0] + parts[1] != parts[2]:
            raise ValueError(f"merge ({left}, {right}) -> {new_id} does not match the "
                             f"vocabulary: {parts[0]!r} + {parts[1]!r} != {parts[2]!r}")


def check_specials(vocab, special_tokens):
    """Special tokens need non-empty strings and ids no ordinary token uses."""
    for text, token_id in special_tokens.items():
        if not isinstance(text, str) or not text:
            raise ValueError(f"special token {text!r} must be a non-empty string")
        if token_id in vocab:
            raise ValueError(f"special token {text!r} has id {token_id}, which is already the "
                             f"ordinary token {vocab[token_id]!r}")
    if len(set(special_tokens.values())) != len(special_tokens):
        raise ValueError(f"two special tokens share an id: {special_tokens}")
