"""Pre-tokenization: the regex that cuts text into chunks before any merging, and special tokens.

BPE never merges across a chunk boundary, so the split pattern decides what a token can be.
GPT-2's pattern makes chunks of: an English contraction suffix ('s 't 're 've 'm 'll 'd),
an optional space + a run of letters, an optional space + a run of digits, an optional
space + a run of other symbols, and whitespace (a run of spaces keeps its last space for
the word that follows, so "a   b" -> ["a", "  ", " b"]). Hence " the" is one chunk and
"the." is two.

GPT-4's (tiktoken's cl100k_base) pattern differs where GPT-2's hurt: contractions match in
any case ("I'LL" -> "I", "'LL"), a letter run may take one leading symbol ("(hello" is one
chunk), numbers go in runs of at most 3 digits with no leading space ("12345" -> "123",
"45"), and a line break ends a symbol chunk instead of sticking to the next line's indent
("():\n    return" -> "():\n", "   ", " return"; GPT-2: "():", "\n   ", " return").
"""
import regex

# The pattern of GPT-2's release (encoder.py). tiktoken's r50k_base uses an equivalent
# spelling with possessive quantifiers, '(?:[sdmt]|ll|ve|re)| ?\p{L}++|...|\s++$|\s+(?!\S)|\s
GPT2_SPLIT_PATTERN = (
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
# tiktoken's cl100k_base (GPT-3.5/GPT-4) pattern, character for character.
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++"""
    r"""[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""")
NAMED_PATTERNS = {"gpt2": GPT2_SPLIT_PATTERN, "gpt4": GPT4_SPLIT_PATTERN}   # str -> str


def resolve_pattern(pattern):
    """"gpt2" or "gpt4" -> that pattern; any other string is taken as a regex and must compile
    with the `regex` package (ValueError naming the problem otherwise)."""
    pattern = NAMED_PATTERNS.get(pattern, pattern)
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"pattern must be 'gpt2', 'gpt4' or a regex string, got {pattern!r}")
    try:
        regex.compile(pattern)
    except regex.error as e:
        raise ValueError(f"split pattern {pattern!r} is not a valid regex: {e}") from None
    return pattern


def special_splitter(specials):
    """A compiled regex whose findall/split finds the special tokens in `specials` (strings),
    longest first so that "<|a|><|ab|>"-style overlaps take the longer token; None if empty.
    The pattern is wrapped in a group so that regex.split keeps the specials:
    split("a<|endoftext|>b") -> ["a", "<|endoftext|>", "b"]."""
    if not specials:
        return None
    alternatives = sorted(specials, key=lambda s: (-len(s), s))
    return regex.compile("(" + "|".join(regex.escape(s) for s in alternatives) + ")")


def split_special(text, splitter):
    """Cut `text` at special tokens: -> [(piece, is_special), ...], pieces never empty.

    With splitter for {"<|endoftext|>"}: "hi<|endoftext|>yo" ->
    [("hi", False), ("<|endoftext|>", True), ("yo", False)]
    """
    if splitter is None:
        return [(text, False)] if text else []
    parts = splitter.split(text)
    # regex.split with one group alternates text, special, text, special, ..., text
    return [(part, i % 2 == 1) for i, part in enumerate(parts) if part]
