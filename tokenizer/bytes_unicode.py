"""GPT-2's reversible bytes <-> unicode table, used only to write and read token files.

vocab.json and merges.txt are text, and merges.txt separates the two halves of a merge by a
space, so a token cannot be written as its raw bytes (a space, a newline, or half of a UTF-8
character would break the file). GPT-2 maps each of the 256 byte values to one printable
character: the 188 bytes that already print as themselves in Latin-1 ('!'..'~', '¡'..'¬',
'®'..'ÿ') keep their character, and the other 68 (control bytes, space, DEL, NBSP, soft
hyphen...) get the characters U+0100, U+0101, ... in byte order. So the space byte 0x20
becomes 'Ġ' (U+0120) and newline 0x0A becomes 'Ċ' (U+010A): the GPT-2 token " the" is
written "Ġthe".

Nothing here is used when encoding or decoding text: tokens are bytes in memory.
"""


def bytes_to_unicode():
    """The table: byte value -> one printable character. int -> str, 256 entries.

    bytes_to_unicode()[ord("a")] == "a";  [0x20] == "Ġ";  [0x0A] == "Ċ";  [0x00] == "Ā"
    """
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    table = {b: chr(b) for b in printable}
    shifted = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()                           # int -> str
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}      # str -> int


def token_to_text(token):
    """Write a token's bytes as GPT-2 file text: b" the" -> "Ġthe", b"\\n\\n" -> "ĊĊ"."""
    return "".join(BYTE_TO_CHAR[b] for b in token)


def text_to_token(text):
    """Read GPT-2 file text back to bytes: "Ġthe" -> b" the". Raises ValueError naming the first
    character that no byte maps to (such text did not come from token_to_text)."""
    try:
        return bytes(CHAR_TO_BYTE[c] for c in text)
    except KeyError as e:
        raise ValueError(f"{text!r} contains {e.args[0]!r} (U+{ord(e.args[0]):04X}), which is "
                         "not in GPT-2's bytes-to-unicode table") from None
