"""Checks and worked answers for docs/notebooks/05_tokenizer.ipynb.

    1. check_merge(fn):   fn(ids, pair, new_id) -> ids with every `pair` replaced by new_id,
                          left to right (tokenizer/pairs.py's `merge`)
    2. check_split(chunks): the chunks GPT-2's split regex cuts SPLIT_TEXT into, written out
                          by hand (tokenizer/patterns.py's GPT2_SPLIT_PATTERN)
    3. check_encode(fn):  fn(ids, merges) -> one chunk encoded by merges in rank order, as
                          GPT-2's bpe() (tokenizer/pairs.py's `apply_merges`)

Each check prints "Exercise N: not answered yet (hint)" and returns False for the
placeholder (None, or a function that returns None), raises AssertionError naming what is
wrong, or prints "Exercise N: correct" and returns True. The references are the project's
own functions, so the answers stay right as the tokenizer changes.
"""
import numpy as np
import regex

from tokenizer import BPETokenizer
from tokenizer.pairs import apply_merges, merge, merge_priorities
from tokenizer.patterns import GPT2_SPLIT_PATTERN

from . import correct, not_answered

SPLIT_TEXT = "I'll pay $3.14, or  more!\n"      # exercise 2's text: two spaces before "more"


# Exercise 1: merge one pair

def answer_merge(ids, pair, new_id):
    """Scan left to right; where ids[i], ids[i + 1] is the pair, emit new_id and skip both."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and (ids[i], ids[i + 1]) == tuple(pair):
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def wrong_merge_first_only(ids, pair, new_id):
    """Replaces only the first occurrence."""
    ids = list(ids)
    for i in range(len(ids) - 1):
        if (ids[i], ids[i + 1]) == tuple(pair):
            return ids[:i] + [new_id] + ids[i + 2:]
    return ids


def wrong_merge_no_skip(ids, pair, new_id):
    """Forgets to skip the second token of a merged pair: [1, 2] -> [4, 2]."""
    return [new_id if (a, b) == tuple(pair) else a for a, b in zip(ids, list(ids[1:]) + [None])]


MERGE_CASES = [([1, 2, 3, 1, 2], (1, 2), 4), ([7, 7, 7], (7, 7), 9), ([7, 7, 7, 7], (7, 7), 9),
               ([], (1, 2), 4), ([1], (1, 2), 4), ([2, 1], (1, 2), 4), ([1, 2], (1, 2), 4)]


def check_merge(fn):
    hint = "walk i over ids; on a match append new_id and step i by 2, else append ids[i]"
    if fn is None:
        return not_answered(1, hint)
    rng = np.random.default_rng(5)
    cases = MERGE_CASES + [(rng.integers(0, 3, size=n).tolist(), (1, 1), 3) for n in (5, 9, 16)]
    for ids, pair, new_id in cases:
        got = fn(list(ids), pair, new_id)
        if got is None:
            return not_answered(1, hint)
        want = merge(ids, pair, new_id)
        assert list(got) == want, (f"Exercise 1: merge({ids}, {pair}, {new_id}) gave "
                                   f"{list(got)}, expected {want} (pairs.merge)")
    return correct(1)


# Exercise 2: the GPT-2 split, by hand

def answer_split():
    """A letter run takes one leading space; so do a digit run and a symbol run; of a run of
    spaces, the last one goes to the next word; the contraction 'll is its own chunk."""
    return ["I", "'ll", " pay", " $", "3", ".", "14", ",", " or", " ", " more", "!", "\n"]


def check_split(chunks):
    hint = "try regex.findall(GPT2_SPLIT_PATTERN, ...) on small pieces of the text first"
    if chunks is None:
        return not_answered(2, hint)
    want = regex.findall(GPT2_SPLIT_PATTERN, SPLIT_TEXT)
    chunks = list(chunks)
    assert all(isinstance(c, str) for c in chunks), "Exercise 2: give a list of strings"
    assert "".join(chunks) == SPLIT_TEXT, \
        f"Exercise 2: the chunks join to {''.join(chunks)!r}, not the text {SPLIT_TEXT!r}"
    for k, (mine, ref) in enumerate(zip(chunks, want)):
        assert mine == ref, f"Exercise 2: chunk {k} is {mine!r}; the regex makes {ref!r} there"
    assert len(chunks) == len(want), \
        f"Exercise 2: {len(chunks)} chunks, the regex makes {len(want)}"
    return correct(2)


# Exercise 3: encode a chunk by merge rank

def answer_encode(ids, merges):
    """While some adjacent pair is a merge, merge the one of lowest rank (everywhere)."""
    rank = {pair: r for r, pair in enumerate(merges)}            # (int, int) -> rank
    ids = list(ids)
    while len(ids) >= 2:
        pairs = [p for p in zip(ids, ids[1:]) if p in rank]
        if not pairs:
            break
        best = min(pairs, key=rank.get)
        ids = answer_merge(ids, best, merges[best])
    return ids


def wrong_encode_by_position(ids, merges):
    """Merges the leftmost mergeable pair first, whatever its rank."""
    ids = list(ids)
    while True:
        pair = next((p for p in zip(ids, ids[1:]) if p in merges), None)
        if pair is None:
            return ids
        ids = answer_merge(ids, pair, merges[pair])


def wrong_encode_last_rank_first(ids, merges):
    """Prefers the merge learned last."""
    return answer_encode(ids, dict(reversed(list(merges.items()))))


def _trained_merges():
    text = ("To be, or not to be, that is the question: whether 'tis nobler in the mind to "
            "suffer the slings and arrows of outrageous fortune, or to take arms against a sea "
            "of troubles, and by opposing end them. ") * 3
    tok = BPETokenizer.train(text, 256 + 60, special_tokens=())
    return tok.merges


def check_encode(fn):
    hint = "rank = position in merges; merge the present pair of lowest rank, then look again"
    if fn is None:
        return not_answered(3, hint)
    a, b, c = 97, 98, 99
    cases = [([a, b, c], {(b, c): 256, (a, b): 257}),                      # a|bc, not ab|c
             ([a, b, c], {(a, b): 256, (b, c): 257}),                      # ab|c
             ([a, b, a, a, a, b], {(a, a): 256, (a, b): 257, (256, 257): 258}),
             ([], {(a, b): 256}), ([a], {(a, b): 256})]
    merges = _trained_merges()
    cases += [(list(word.encode()), merges)
              for word in (" question", " outrageous", "nobler", " troubles", " sea")]
    for ids, table in cases:
        got = fn(list(ids), dict(table))
        if got is None:
            return not_answered(3, hint)
        want = apply_merges(ids, merge_priorities(table))
        shown = dict(table) if len(table) < 6 else "(the trained table)"
        assert list(got) == want, (f"Exercise 3: ids {ids} with merges {shown} gave "
                                   f"{list(got)}, expected {want} (pairs.apply_merges)")
    return correct(3)


CHECKS = [
    (check_merge, answer_merge, [wrong_merge_first_only, wrong_merge_no_skip]),
    (check_split, answer_split(), [SPLIT_TEXT.split(), ["I'll", " pay", " $3.14", ",", " or",
                                                        "  more", "!", "\n"]]),
    (check_encode, answer_encode, [wrong_encode_by_position, wrong_encode_last_rank_first]),
]
