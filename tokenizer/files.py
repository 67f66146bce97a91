"""GPT-2's tokenizer files: write Hugging Face's layout, read it and OpenAI's original one.

Both layouts are the same two files under different names:

  Hugging Face          OpenAI (gpt-2 release)   content
  vocab.json            encoder.json             {"Ġthe": 262, ...}: token text -> id
  merges.txt            vocab.bpe                "#version: 0.2", then one merge per line
                                                 in rank order: "Ġ t" (makes "Ġt"), ...

Token text is a token's bytes through GPT-2's bytes-to-unicode table (bytes_unicode.py).
A merge line's result is the concatenation of its two halves, looked up in vocab.json for
its id, so a file written with any ids reads back with the same ids. Special tokens
("<|endoftext|>": 50256 in GPT-2) sit in vocab.json as their own text; reading, they are
recognised as the entries that are neither a byte nor any merge's result.

We also write split_pattern.json with the regex the tokenizer was trained with, which the
GPT-2 layouts have no place for (Hugging Face and OpenAI assume GPT-2's pattern).
"""
import json
from pathlib import Path

from .bytes_unicode import text_to_token, token_to_text
from .patterns import resolve_pattern

LAYOUTS = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"))   # (vocab, merges)
PATTERN_FILE = "split_pattern.json"
MERGES_HEADER = "#version: 0.2"


def save_hf(directory, vocab, merges, special_tokens, pattern):
    """Write vocab.json, merges.txt and split_pattern.json into `directory` (created).

    vocab: int -> bytes; merges: (int, int) -> int in rank order; special_tokens: str -> int.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    entries = {token_to_text(token): token_id for token_id, token in sorted(vocab.items())}
    for text, token_id in sorted(special_tokens.items(), key=lambda item: item[1]):
        if text in entries:
            raise ValueError(f"special token {text!r} is spelled like ordinary token "
                             f"{entries[text]} in vocab.json: rename the special token")
        entries[text] = token_id
    lines = [MERGES_HEADER] + [f"{token_to_text(vocab[left])} {token_to_text(vocab[right])}"
                               for left, right in merges]
    (directory / "vocab.json").write_text(json.dumps(entries, ensure_ascii=False, indent=0),
                                          encoding="utf-8")
    (directory / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (directory / PATTERN_FILE).write_text(json.dumps({"split_pattern": pattern}) + "\n",
                                          encoding="utf-8")


def load_bpe(directory):
    """Read a tokenizer folder in either layout -> (vocab, merges, special_tokens, pattern).

    vocab: int -> bytes; merges: (int, int) -> int in file order; special_tokens: str -> int;
    pattern: str from split_pattern.json, or None without one. Raises FileNotFoundError for a
    missing folder or files, ValueError naming the file and line for bad content.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer folder {directory} does not exist: train one with "
                                "`python -m tinygrad_gpt.tokenize train` or check the path")
    for vocab_name, merges_name in LAYOUTS:
        if (directory / vocab_name).is_file() and (directory / merges_name).is_file():
            break
    else:
        raise FileNotFoundError(f"{directory} has neither vocab.json + merges.txt (Hugging "
                                "Face's layout) nor encoder.json + vocab.bpe (OpenAI's)")
    entries = read_vocab(directory / vocab_name)
    merge_lines = read_merges(directory / merges_name)
    vocab, merges, specials = resolve(entries, merge_lines, directory / vocab_name,
                                      directory / merges_name)
    return vocab, merges, specials, read_pattern(directory / PATTERN_FILE)


def read_text(path):
    """A file's text as UTF-8, or ValueError saying where it is not."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (bad byte at offset {e.start})") from None


def read_vocab(path):
    """vocab.json -> {token text: id}, checking it is a JSON object of distinct ids >= 0 keyed
    by non-empty text (a UTF-8 byte-order mark at the start is ignored)."""
    def no_duplicate_keys(pairs):
        seen = {}
        for key, value in pairs:
            if key in seen:
                raise ValueError(f"{path}: token {key!r} appears twice")
            seen[key] = value
        return seen

    try:
        entries = json.loads(read_text(path).removeprefix("\ufeff"),
                             object_pairs_hook=no_duplicate_keys)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} line {e.lineno} column {e.colno}: not valid JSON ({e.msg})") \
            from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply for a vocabulary") from None
    if not isinstance(entries, dict) or not entries:
        raise ValueError(f"{path}: expected a JSON object of token text -> id")
    owners = {}                                                   # int -> str
    for text, token_id in entries.items():
        if not text or not _is_utf8(text):
            raise ValueError(f"{path}: token {text!r} (id {token_id!r}) is empty or not "
                             "valid Unicode; every token has text")
        if type(token_id) is not int or token_id < 0:
            raise ValueError(f"{path}: token {text!r} has id {token_id!r}; ids are integers >= 0")
        if token_id in owners:
            raise ValueError(f"{path}: tokens {owners[token_id]!r} and {text!r} share id "
                             f"{token_id}")
        owners[token_id] = text
    return entries


def _is_utf8(text):
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:                  # a lone surrogate, as "\ud800" in JSON
        return False


def read_merges(path):
    """merges.txt -> [(line number, left text, right text), ...] in rank order (a UTF-8
    byte-order mark at the start is ignored)."""
    merges = []
    for number, line in enumerate(read_text(path).removeprefix("\ufeff").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"{path} line {number}: expected two tokens separated by one "
                             f"space, got {line!r}")
        merges.append((number, parts[0], parts[1]))
    return merges


def resolve(entries, merge_lines, vocab_path, merges_path):
    """Turn token texts into bytes and merge lines into id pairs, checking they agree (and,
    check_complete, that no id or merge line is missing)."""
    vocab_name = Path(vocab_path).name
    merges = {}                       # (int, int) -> int
    first_line = {}                   # (int, int) -> line number that defined it
    for number, left, right in merge_lines:
        where = f"{merges_path} line {number}"
        for text in (left, right, left + right):
            if text not in entries:
                made = " (the merge's result)" if text == left + right else ""
                raise ValueError(f"{where}: {text!r}{made} is not in {vocab_name}")
        pair = (entries[left], entries[right])
        if pair in merges:
            raise ValueError(f"{where}: repeats the merge {left} {right} of line "
                             f"{first_line[pair]}")
        merges[pair], first_line[pair] = entries[left + right], number
    used = {i for pair in merges for i in pair} | set(merges.values())
    vocab, specials = {}, {}          # int -> bytes, str -> int
    for text, token_id in entries.items():
        try:
            token = text_to_token(text)
        except ValueError as e:
            if token_id in used:
                raise ValueError(f"{vocab_path}: {e}") from None
            specials[text] = token_id
            continue
        if len(token) == 1 or token_id in used:
            vocab[token_id] = token
        else:
            specials[text] = token_id                 # unreachable by merges: "<|endoftext|>"
    missing = sorted({bytes([b]) for b in range(256)} - {t for t in vocab.values() if len(t) == 1})
    if missing:
        raise ValueError(f"{vocab_path} lacks {len(missing)} of the 256 byte tokens (first: "
                         f"{token_to_text(missing[0])!r} for byte 0x{missing[0][0]:02x}): "
                         "not a byte-level BPE vocabulary")
    check_complete(entries, merge_lines, specials, vocab_path, merges_path)
    return vocab, merges, specials


def check_complete(entries, merge_lines, specials, vocab_path, merges_path):
    """ValueError unless the ids run 0..len(entries) - 1 (an unused id would decode to
    nothing), every merge's halves are bytes or made by a merge (else the merges after a lost
    line could never apply), and no special token sits among the merges' ids (a token whose
    merge line was lost; specials come before or after the merges, as GPT-2's
    <|endoftext|> = 50256 after its 50000 merges)."""
    ids = sorted(entries.values())
    if ids[-1] != len(ids) - 1:
        gap = next(i for i, token_id in enumerate(ids) if token_id != i)
        raise ValueError(f"{vocab_path}: its {len(ids)} ids run up to {ids[-1]}, so some are "
                         f"unused (first: {gap}); ids must run 0..{len(ids) - 1}: renumber "
                         "the tokens")
    made = {left + right for _, left, right in merge_lines}         # texts merges produce
    for number, left, right in merge_lines:
        for half in (left, right):
            if len(text_to_token(half)) > 1 and half not in made:
                raise ValueError(f"{merges_path} line {number}: {half!r} is neither a byte nor "
                                 "made by any merge, so this merge can never apply: a line "
                                 "is missing; use the merges file that came with the vocabulary")
    made_ids = sorted(entries[text] for text in made)
    lost = sorted((i, text) for text, i in specials.items()
                  if made_ids and made_ids[0] < i < made_ids[-1])
    if lost:
        raise ValueError(f"{vocab_path}: token {lost[0][1]!r} (id {lost[0][0]}) is neither a "
                         f"byte nor made by any merge of {Path(merges_path).name}, yet merges "
                         f"make ids {made_ids[0]}..{made_ids[-1]} around it: its merge line is "
                         "missing; use the merges file that came with the vocabulary")


def read_pattern(path):
    """split_pattern.json -> the regex string, or None if there is no such file."""
    if not path.is_file():
        return None
    try:
        pattern = json.loads(read_text(path))["split_pattern"]
    except (json.JSONDecodeError, KeyError, TypeError, RecursionError):
        raise ValueError(f'{path}: expected {{"split_pattern": "<regex>"}}') from None
    if not isinstance(pattern, str):
        raise ValueError(f"{path}: split_pattern must be a string, got {pattern!r}")
    try:
        resolve_pattern(pattern)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return pattern
