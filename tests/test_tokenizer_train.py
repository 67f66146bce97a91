"""Incremental BPE training against the textbook recount-everything loop, and encoding
against tiktoken's algorithm written out in Python (so these run without tiktoken)."""
from collections import Counter

import regex
from hypothesis import given
from hypothesis import strategies as st

from tokenizer import BPETokenizer
from tokenizer.pairs import apply_merges, merge_priorities
from tokenizer.patterns import GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN
from tokenizer.train_bpe import count_pairs, learn_merges

# Small alphabets make ties, overlapping runs ("aaaa") and repeated words likely.
TEXTS = st.text(alphabet=st.sampled_from("aab bc\n'sé1"), max_size=200)


def naive_merges(text, num_merges, pattern=GPT2_SPLIT_PATTERN):
    """minbpe's RegexTokenizer.train, with our tie-break: recount every pair of every chunk
    for each merge; the most frequent pair wins, ties to the smallest (id, id)."""
    chunks = [list(c.encode()) for c in regex.findall(pattern, text)]
    merges = {}
    for new_id in range(256, 256 + num_merges):
        counts = Counter(p for ids in chunks for p in zip(ids, ids[1:]))
        if not counts:
            break
        pair = min(counts, key=lambda p: (-counts[p], p))
        merges[pair] = new_id
        for ids in chunks:                      # merge in place, leftmost first
            i = 0
            while i < len(ids) - 1:
                if (ids[i], ids[i + 1]) == pair:
                    ids[i:i + 2] = [new_id]
                i += 1
    return merges


def tiktoken_style_encode(tok, text):
    """tiktoken's byte_pair_merge in Python: token ranks are keyed by bytes; repeatedly merge
    the adjacent pieces whose concatenation has the lowest rank, one occurrence at a time."""
    ranks = {token: token_id for token_id, token in tok.vocab.items()}   # bytes -> int
    out = []
    for chunk in regex.findall(tok.pattern, text):
        parts = [bytes([b]) for b in chunk.encode()]
        while len(parts) > 1:
            joined = [ranks.get(a + b) for a, b in zip(parts, parts[1:])]
            candidates = [(r, i) for i, r in enumerate(joined) if r is not None]
            if not candidates:
                break
            _, i = min(candidates)
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        out.extend(ranks[p] for p in parts)
    return out


def test_count_pairs_docstring_example():
    counts, where = count_pairs([[1, 2, 3], [1, 2]], [5, 2])
    assert counts == {(1, 2): 7, (2, 3): 5}
    assert where == {(1, 2): {0, 1}, (2, 3): {0}}


def test_learn_merges_docstring_example():
    assert learn_merges({"aaab": 1, "ab": 2}, 2) == {(97, 98): 256, (97, 97): 257}


@given(TEXTS, st.integers(0, 40))
def test_incremental_training_equals_full_recount(text, num_merges):
    tok = BPETokenizer.train(text, 256 + num_merges, special_tokens=())
    assert tok.merges == naive_merges(text, num_merges)


def test_incremental_training_equals_full_recount_on_prose():
    text = ("Call me Ishmael. Some years ago, never mind how long precisely, having little or "
            "no money in my purse, and nothing particular to interest me on shore, I thought "
            "I would sail about a little and see the watery part of the world. ") * 3
    for pattern in (GPT2_SPLIT_PATTERN, GPT4_SPLIT_PATTERN):
        tok = BPETokenizer.train(text, 256 + 60, pattern=pattern, special_tokens=())
        assert tok.merges == naive_merges(text, 60, pattern)


@given(TEXTS, TEXTS)
def test_encoding_equals_tiktoken_algorithm(train_text, text):
    tok = BPETokenizer.train(train_text, 256 + 30, special_tokens=())
    assert tok.encode(text) == tiktoken_style_encode(tok, text)
    assert tok.encode(train_text) == tiktoken_style_encode(tok, train_text)


@given(TEXTS)
def test_every_learned_token_encodes_to_itself(text):
    """Each token's bytes, encoded alone, give that one token: the property that makes the
    pair-by-pair (GPT-2, Hugging Face) and bytes-keyed (tiktoken) algorithms agree."""
    tok = BPETokenizer.train(text, 256 + 30, special_tokens=(), pattern="gpt4")
    priorities = merge_priorities(tok.merges)
    for token_id, token in tok.vocab.items():
        assert apply_merges(list(token), priorities) == [token_id]


def test_training_is_deterministic_and_independent_of_chunk_order():
    text = "the cat sat on the mat; the dog sat on the log. " * 4
    first = learn_merges(Counter(regex.findall(GPT2_SPLIT_PATTERN, text)), 40)
    reordered = dict(reversed(list(Counter(regex.findall(GPT2_SPLIT_PATTERN, text)).items())))
    assert learn_merges(reordered, 40) == first
