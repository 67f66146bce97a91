"""Character-level tokenizer, as nanoGPT's shakespeare_char: one id per distinct character.

    tok = CharTokenizer.train("hello")       # vocabulary "ehlo": e=0, h=1, l=2, o=3
    tok.encode("hole")                       # [1, 3, 2, 0]
    tok.decode([1, 0, 2, 2, 3])              # "hello"

The vocabulary is the sorted set of the corpus's characters (Python string order, i.e. by
code point), so the same corpus always gives the same ids. A character outside it has no id:
encode raises ValueError naming it, unless a `replacement` character from the vocabulary is
given (useful for sampling prompts typed by a person).
"""
import json
from pathlib import Path


class CharTokenizer:
    """chars: the vocabulary, a string of distinct characters; id i is chars[i]."""

    def __init__(self, chars):
        chars = "".join(chars)
        if not chars:
            raise ValueError("a character vocabulary needs at least one character")
        if len(set(chars)) != len(chars):
            repeated = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"the vocabulary repeats characters {repeated!r}")
        self.chars = chars
        self.stoi = {c: i for i, c in enumerate(chars)}          # str -> int
        self.itos = dict(enumerate(chars))                        # int -> str

    @classmethod
    def train(cls, text):
        """The vocabulary of `text`: its sorted unique characters."""
        if not text:
            raise ValueError("cannot build a character vocabulary from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self):
        return len(self.chars)

    def encode(self, text, replacement=None):
        """text -> ids. Characters outside the vocabulary raise ValueError naming them, or,
        with `replacement` (a character in the vocabulary), are encoded as that character."""
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            pass
        unknown = sorted(set(text) - stoi.keys())
        if replacement is None:
            shown = ", ".join(f"{c!r} (U+{ord(c):04X})" for c in unknown[:10])
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ValueError(f"{len(unknown)} character(s) are not in the vocabulary: {shown}"
                             f"{more}. Remove them, or pass replacement= a character of the "
                             f"vocabulary to stand in for them")
        if replacement not in stoi:
            raise ValueError(f"replacement {replacement!r} is not in the vocabulary either")
        fallback = stoi[replacement]
        return [stoi.get(c, fallback) for c in text]

    def decode(self, ids):
        """ids -> text; an id outside 0..vocab_size-1 raises ValueError."""
        try:
            return "".join(map(self.itos.__getitem__, ids))
        except KeyError as e:
            raise ValueError(f"unknown token id {e.args[0]!r}: this tokenizer's ids are "
                             f"0..{self.vocab_size - 1}") from None

    def save(self, path):
        """Write the vocabulary as JSON: {"type": "char", "chars": [...]}; one entry per id."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"type": "char", "chars": list(self.chars)},
                                   ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path):
        """Read a file written by save. FileNotFoundError if absent, ValueError if malformed."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise FileNotFoundError(f"character vocabulary {path} does not exist") from None
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise ValueError(f"{path}: not a JSON character vocabulary ({e})") from None
        chars = data.get("chars") if isinstance(data, dict) else None
        if (data.get("type") if isinstance(data, dict) else None) != "char" or \
                not isinstance(chars, list) or \
                not all(isinstance(c, str) and len(c) == 1 and not "\ud800" <= c <= "\udfff"
                        for c in chars):               # a lone surrogate is no character
            raise ValueError(f'{path}: expected {{"type": "char", "chars": [one-character '
                             f'strings]}}')
        try:
            return cls(chars)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None

    def __repr__(self):
        return f"CharTokenizer(vocab_size={self.vocab_size})"
