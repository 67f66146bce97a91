"""decode(encode(s)) == s for any Unicode text, and decode_bytes(encode_bytes(b)) == b for
any bytes, for tokenizers trained with GPT-2's and GPT-4's split patterns."""
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tokenizer import BPETokenizer, CharTokenizer

CORPUS = ("The quick brown fox jumps over the lazy dog.\r\n  Don't panic; it's 42!\n"
          "\tdef f(x):\n        return x ** 2  # squares\n"
          "Ünïcödé: 東京, ☃, 😀😀, e\u0301, नमस्ते, مرحبا\n"
          "numbers 1234567890 3.14159 and    long     runs\n\n\n") * 5

# Pieces that stress the split patterns and byte handling, glued together by Hypothesis.
TRICKY = ["\r\n", "\n\n", "   ", "\t", " \u00a0 ", "\u3000", "😀", "👩‍👩‍👧", "🇫🇷", "e\u0301",
          "\u0301", "東京", "\x00", "\x1b[0m", "\u200b", "\ufeff", "'s", "'LL", "\U0010ffff",
          "<|endoftext|>", "123456", " 1", "😀"[0]]
UNICODE_TEXT = st.one_of(
    st.text(),                                                            # any code points
    st.lists(st.one_of(st.sampled_from(TRICKY), st.text(max_size=5))).map("".join),
    st.text(alphabet=" \t\r\n", max_size=300))                            # whitespace runs


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def tok(request):
    return BPETokenizer.train(CORPUS, vocab_size=400, pattern=request.param)


@given(text=UNICODE_TEXT)
def test_decode_inverts_encode_for_any_text(tok, text):
    ids = tok.encode(text, allowed_special="none")
    assert tok.decode(ids) == text
    assert tok.decode_bytes(ids) == text.encode("utf-8")
    assert all(0 <= i < tok.vocab_size for i in ids)


@given(text=UNICODE_TEXT)
def test_specials_round_trip_when_allowed(tok, text):
    text = text + "<|endoftext|>" + text
    ids = tok.encode(text, allowed_special="all")
    assert tok.decode(ids) == text
    assert ids.count(tok.special_tokens["<|endoftext|>"]) == text.count("<|endoftext|>")


@given(data=st.binary(max_size=300))
def test_decode_bytes_inverts_encode_bytes_for_any_bytes(tok, data):
    assert tok.decode_bytes(tok.encode_bytes(data)) == data


@given(ids=st.lists(st.integers(0, 399), max_size=50))
def test_decode_never_raises_for_known_ids(tok, ids):
    text = tok.decode(ids)                             # partial UTF-8 becomes U+FFFD
    assert text == b"".join(tok.token_to_bytes(i) for i in ids).decode("utf-8", "replace")


@given(text=UNICODE_TEXT)
def test_char_round_trip(text):
    corpus = CORPUS + text
    chars = CharTokenizer.train(corpus)
    assert chars.decode(chars.encode(text)) == text
    assert chars.encode(text) == [chars.chars.index(c) for c in text]
