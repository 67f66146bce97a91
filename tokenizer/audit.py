"""What a trained BPE tokenizer learned: how it cuts text, its compression, its longest tokens.

    print("\\n".join(audit(tok, train_text, heldout_text)))

Segmentations show tokens separated by "|", with whitespace made visible ("␣" space,
"↵" newline, "⇥" tab) and bytes that are not whole UTF-8 characters as \\xNN. A word that
is one token was frequent in the training text; a word cut into many tokens was rare there.
Compression is UTF-8 bytes per token: higher means shorter sequences for the model, and a
big gap between training and held-out text means the merges fit the training text's
quirks (names, spelling) more than the language.
"""

# Texts of different kinds, to see what the merges cover; (kind, text).
SAMPLES = (
    ("prose", "The quick brown fox jumps over the lazy dog, and then it rested by the river."),
    ("archaic", "Wherefore art thou Romeo? Deny thy father and refuse thy name."),
    ("code", "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"),
    ("numbers", "In 2024, 1,234,567 people paid $3.14 each; pi = 3.14159265358979."),
    ("names", "Ada Lovelace met Srinivasa Ramanujan and Nguyễn Du in Reykjavík."),
    ("rare words", "antidisestablishmentarianism, floccinaucinihilipilification"),
    ("non-English", "Übermäßig schön! 東京へ行きます 🚀"),
)
VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥", "\r": "␍"}    # str -> str


def render_token(token):
    """A token's bytes as visible text: b" the" -> "␣the", b"\\xe6\\x9d" -> "\\xe6\\x9d"."""
    text = token.decode("utf-8", errors="backslashreplace")
    return "".join(VISIBLE.get(c, c) for c in text)


def segment(tok, text):
    """text -> its tokens rendered and joined by "|": "Hello world" -> "Hello|␣world"."""
    return "|".join(render_token(tok.token_to_bytes(i)) for i in tok.encode_ordinary(text))


def bytes_per_token(tok, text):
    """UTF-8 bytes / tokens for `text` (0.0 for empty text), and the token count."""
    count = len(tok.encode_ordinary(text))
    return (len(text.encode("utf-8")) / count if count else 0.0), count


def longest_tokens(tok, n):
    """The n longest ordinary tokens: [(id, bytes), ...], longest first, then by id."""
    return sorted(tok.vocab.items(), key=lambda item: (-len(item[1]), item[0]))[:n]


def audit(tok, train_text=None, heldout_text=None, samples=SAMPLES, longest=20):
    """The audit report as a list of lines."""
    merges, specials = len(tok.merges), len(tok.special_tokens)
    lines = [f"vocab_size {tok.vocab_size}: 256 byte tokens + {merges} merges + {specials} "
             f"special token(s) {tok.special_list()}", f"split pattern: {tok.pattern}", ""]
    if train_text is not None:
        lines.append("Compression (UTF-8 bytes per token; higher = fewer tokens)")
        for name, text in (("training text", train_text), ("held-out text", heldout_text)):
            if text:
                ratio, count = bytes_per_token(tok, text)
                lines.append(f"  {name:14s} {len(text.encode('utf-8')):>12,d} bytes "
                             f"{count:>11,d} tokens {ratio:6.2f} bytes/token")
        lines.append("")
    lines.append('Segmentation (tokens separated by "|"; ␣ space, ↵ newline, ⇥ tab)')
    for kind, text in samples:
        ratio, count = bytes_per_token(tok, text)
        lines.append(f"  {kind} ({count} tokens, {ratio:.2f} bytes/token)")
        lines.append(f"    {segment(tok, text)}")
    lines += ["", f"Longest learned tokens (of {merges} merges)"]
    for token_id, token in longest_tokens(tok, longest):
        lines.append(f"  {token_id:>6d}  {len(token):>3d} bytes  {render_token(token)}")
    return lines
