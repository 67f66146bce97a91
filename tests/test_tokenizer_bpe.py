"""BPETokenizer: a hand-worked example, rank-order corner cases, special tokens, decode, errors."""
import pytest

from tokenizer import BPETokenizer
from tokenizer.pairs import apply_merges, merge, merge_priorities

A, B, C, D = 97, 98, 99, 100                      # the bytes of "a", "b", "c", "d"


def tokenizer_with(merges, specials=None):
    """A tokenizer from merges given as {(int, int): new id}, in rank order."""
    vocab = {i: bytes([i]) for i in range(256)}
    for (left, right), new_id in merges.items():
        vocab[new_id] = vocab[left] + vocab[right]
    return BPETokenizer(vocab, merges, "gpt2", specials)


def test_hand_worked_example():
    """Wikipedia's "aaabdaaabac", worked on paper. One chunk (all letters), bytes
    a=97 b=98 c=99 d=100:

      ids  a a a b d a a a b a c
      pair counts: (a,a)=4  (a,b)=2  (b,d)=1  (d,a)=1  (b,a)=1  (a,c)=1
      merge 1: (a,a) -> 256. "aaab" is a|a|a|b, leftmost first: [256, a, b]
      ids  256 a b d 256 a b a c
      pair counts: (256,a)=2  (a,b)=2  (b,d)=1  (d,256)=1  (b,a)=1  (a,c)=1
      tie at 2: the smaller pair (97,98) < (256,97) wins. merge 2: (a,b) -> 257
      ids  256 257 d 256 257 a c
      pair counts: (256,257)=2, every other pair 1. merge 3: (256,257) -> 258
      ids  258 d 258 a c                                  (5 tokens for 11 bytes)

    Encoding new text with these three merges, by rank:
      "abaaab": a b a a a b. Lowest-rank pair present is (a,a) (rank 0), leftmost at
      position 2: [a, b, 256, a, b]. Next (a,b) (rank 1), both copies: [257, 256, 257].
      Then (256,257) (rank 2): [257, 258].
      "aaaa": (a,a) twice without overlap: [256, 256].  "aaa": [256, a].
    """
    tok = BPETokenizer.train("aaabdaaabac", vocab_size=259, special_tokens=())
    assert tok.merges == {(A, A): 256, (A, B): 257, (256, 257): 258}
    assert tok.vocab[258] == b"aaab"
    assert tok.encode("aaabdaaabac") == [258, D, 258, A, C]
    assert tok.encode("abaaab") == [257, 258]
    assert tok.encode("aaaa") == [256, 256]
    assert tok.encode("aaa") == [256, A]


def test_merge_docstring_examples():
    assert merge([1, 2, 3, 1, 2], (1, 2), 4) == [4, 3, 4]
    assert merge([7, 7, 7], (7, 7), 9) == [9, 7]
    assert apply_merges([1, 2, 3, 1, 2], merge_priorities({(1, 2): 4, (4, 3): 5})) == [5, 4]


@pytest.mark.parametrize("text, expected", [
    ("aa", [256]), ("aaa", [257]), ("aaaa", [258]), ("aaaaa", [256, 257]),
    ("aaaaaa", [258, 256]), ("aaaaaaa", [258, 257]), ("aaaaaaaa", [258, 258])])
def test_overlapping_runs(text, expected):
    """Merges aa (rank 0), aa+a (rank 1), aa+aa (rank 2). Rank 0 pairs up a run from the
    left: "aaaaa" -> aa|aa|a. Then the lowest rank present wins, wherever it is: (aa,a) rank 1
    beats (aa,aa) rank 2, so aa|aa|a -> aa|aaa (not aaaa|a). "aaaaaa" -> aa|aa|aa: (aa,aa)
    overlaps itself and merges leftmost first -> aaaa|aa. "aaaaaaa" -> aa|aa|aa|a -> (aa,a)
    first -> aa|aa|aaa -> aaaa|aaa."""
    tok = tokenizer_with({(A, A): 256, (256, A): 257, (256, 256): 258})
    assert tok.encode(text) == expected
    assert tok.decode(expected) == text


def test_rank_order_decides_between_overlapping_pairs():
    """"abc": if (b,c) ranks before (a,b) the result is a|bc, otherwise ab|c."""
    bc_first = tokenizer_with({(B, C): 256, (A, B): 257})
    ab_first = tokenizer_with({(A, B): 256, (B, C): 257})
    assert bc_first.encode("abc") == [A, 256]
    assert ab_first.encode("abc") == [256, C]


def test_lowest_rank_wins_over_leftmost():
    """"abcd" with (c,d) rank 0 and (a,b) rank 1 and (b,c) rank 2: (c,d) goes first although
    it is to the right, then (a,b); (b,c) never gets its chance: ab|cd."""
    tok = tokenizer_with({(C, D): 256, (A, B): 257, (B, C): 258})
    assert tok.encode("abcd") == [257, 256]
    assert tok.encode("bcd") == [B, 256]          # (c,d) first here too, not (b,c)


def test_merge_needs_its_exact_pair():
    """A token is made only by its own merge: with (a,b) -> ab and (ab,c) -> abc but no
    (a,bc), "abc" after (b,c) ranks first stays a|bc, even though "abc" is a token."""
    tok = tokenizer_with({(B, C): 256, (A, B): 257, (257, C): 258})
    assert tok.encode("abc") == [A, 256]
    assert tok.encode("abcx") == [A, 256, ord("x")]


def test_chunks_are_never_merged_across():
    """GPT-2's pattern cuts "a b" into "a", " b": the pair (a, space) cannot merge."""
    tok = tokenizer_with({(A, 32): 256, (32, B): 257})
    assert tok.encode("a b") == [A, 257]


def test_training_breaks_ties_by_smallest_pair():
    """"ba ab": pairs (b,a)=1, (32,a)=1, (a,b)=1 all tie; the smallest, (32, 97), wins."""
    tok = BPETokenizer.train("ba ab", vocab_size=257, special_tokens=())
    assert tok.merges == {(32, A): 256}


def test_training_stops_when_nothing_is_left_to_merge():
    tok = BPETokenizer.train("ab ab", vocab_size=300, special_tokens=("<|endoftext|>",))
    assert tok.merges == {(A, B): 256, (32, 256): 257}
    assert tok.special_tokens == {"<|endoftext|>": 258}
    assert tok.vocab_size == 259


def test_special_tokens_are_cut_out_of_training_text():
    text = "hello<|endoftext|>" * 50 + "world " * 10
    tok = BPETokenizer.train(text, vocab_size=300)
    assert not any(b"endoftext" in token or b"<|" in token for token in tok.vocab.values())
    eot = tok.special_tokens["<|endoftext|>"]
    assert eot == 256 + len(tok.merges) == tok.vocab_size - 1     # the text ran out of pairs
    ids = tok.encode("hello<|endoftext|>world", allowed_special="all")
    assert ids.count(eot) == 1
    assert ids == tok.encode("hello") + [eot] + tok.encode("world")
    assert tok.decode(ids) == "hello<|endoftext|>world"


def test_special_tokens_not_allowed_raise_clearly():
    tok = BPETokenizer.train("some text " * 20, vocab_size=300,
                             special_tokens=("<|endoftext|>", "<|pad|>"))
    with pytest.raises(ValueError, match=r"special token '<\|endoftext\|>' at character 3"):
        tok.encode("hi <|endoftext|>")
    with pytest.raises(ValueError, match=r"'<\|pad\|>'"):
        tok.encode("x<|pad|><|endoftext|>", allowed_special={"<|endoftext|>"})
    ids = tok.encode("x<|endoftext|>", allowed_special={"<|endoftext|>"})
    assert ids[-1] == tok.special_tokens["<|endoftext|>"]
    as_text = tok.encode("x<|pad|>", allowed_special="none")
    assert as_text == tok.encode_ordinary("x<|pad|>")
    assert tok.special_tokens["<|pad|>"] not in as_text
    with pytest.raises(ValueError, match="not special tokens"):
        tok.encode("x", allowed_special={"<|nope|>"})
    with pytest.raises(ValueError, match="allowed_special must be"):
        tok.encode("x", allowed_special="sometimes")


def test_longer_special_wins_when_specials_overlap():
    tok = BPETokenizer.train("abc " * 5, vocab_size=260, special_tokens=("<|a|>", "<|a|>b"))
    ids = tok.encode("<|a|>b<|a|>", allowed_special="all")
    assert ids == [tok.special_tokens["<|a|>b"], tok.special_tokens["<|a|>"]]


def test_decode_replaces_partial_characters_and_rejects_unknown_ids():
    tok = BPETokenizer.train("plain ascii text " * 10, vocab_size=280)
    ids = tok.encode("é😀")                     # no merges cover these: one id per byte
    assert len(ids) == 2 + 4
    assert tok.decode(ids[:3]) == "é\ufffd"     # a cut emoji decodes to U+FFFD, no error
    assert tok.decode_bytes(ids[:3]) == "é😀".encode()[:3]
    assert tok.token_to_bytes(ids[0]) == b"\xc3"
    with pytest.raises(ValueError, match="unknown token id 5000"):
        tok.decode([1, 5000])


def test_constructor_and_train_reject_bad_arguments():
    with pytest.raises(ValueError, match="needs 256 byte tokens"):
        BPETokenizer.train("abc", vocab_size=256)          # + 1 special does not fit
    with pytest.raises(ValueError, match="not a valid regex"):
        BPETokenizer.train("abc", vocab_size=300, pattern="(unclosed")
    with pytest.raises(ValueError, match="lacks single-byte tokens"):
        BPETokenizer({i: bytes([i]) for i in range(255)}, {})
    vocab = {i: bytes([i]) for i in range(256)}
    with pytest.raises(ValueError, match="does not match the vocabulary"):
        BPETokenizer({**vocab, 256: b"xy"}, {(A, B): 256})
    with pytest.raises(ValueError, match="already the ordinary token"):
        BPETokenizer(vocab, {}, special_tokens={"<|s|>": 65})


def test_cache_eviction_keeps_results_identical():
    text = " ".join(f"w{i} x{i % 7} y{i % 3}" for i in range(300))
    tok = BPETokenizer.train(text, vocab_size=320)
    expected = tok.encode(text)
    small = BPETokenizer(tok.vocab, tok.merges, tok.pattern, tok.special_tokens)
    small.cache_size = 5
    assert small.encode(text) == expected
    assert small.encode(text[:40]) == tok.encode(text[:40])
    assert len(small._cache) <= max(5, len(set(small._split.findall(text[:40]))))


def test_encode_bytes_accepts_invalid_utf8():
    tok = BPETokenizer.train("hello world " * 10, vocab_size=270)
    data = b"\xff\xfehello \x80world\xe4\xb8"
    assert tok.decode_bytes(tok.encode_bytes(data)) == data
    assert tok.encode_bytes("hello wörld".encode()) == tok.encode("hello wörld")


def test_gpt4_pattern_changes_chunks():
    text = "x = 12345\n    y = 67890\n" * 20
    gpt2 = BPETokenizer.train(text, vocab_size=300, pattern="gpt2")
    gpt4 = BPETokenizer.train(text, vocab_size=300, pattern="gpt4")
    assert b" 12345" in gpt2.vocab.values()                       # a number is one chunk
    digit_runs = [t for t in gpt4.vocab.values() if t.isdigit()]  # GPT-4: at most 3 digits
    assert digit_runs and max(map(len, digit_runs)) == 3
    assert gpt2.decode(gpt2.encode(text)) == gpt4.decode(gpt4.encode(text)) == text
