"""CharTokenizer: nanoGPT's vocabulary, clear errors for unknown characters, JSON files."""
import json

import pytest

from tokenizer import CharTokenizer


def test_vocabulary_is_sorted_unique_characters():
    tok = CharTokenizer.train("hello world\n")
    assert tok.chars == "\n dehlorw"
    assert tok.vocab_size == 9
    assert tok.encode("hello") == [4, 3, 5, 5, 6]
    assert tok.decode([4, 3, 5, 5, 6]) == "hello"
    assert tok.encode("") == [] and tok.decode([]) == ""


def test_unknown_characters_are_named():
    tok = CharTokenizer.train("abc")
    with pytest.raises(ValueError, match=r"2 character\(s\).*'x' \(U\+0078\), 'é' \(U\+00E9\)"):
        tok.encode("abxaé")
    many = "".join(chr(0x4E00 + i) for i in range(12))
    with pytest.raises(ValueError, match="and 2 more"):
        tok.encode(many)


def test_replacement_is_opt_in():
    tok = CharTokenizer.train("ab ?")
    assert tok.encode("a😀b", replacement="?") == [tok.stoi["a"], tok.stoi["?"], tok.stoi["b"]]
    with pytest.raises(ValueError, match="replacement '#' is not in the vocabulary"):
        tok.encode("a😀", replacement="#")


def test_decode_rejects_unknown_ids():
    with pytest.raises(ValueError, match="unknown token id 3"):
        CharTokenizer.train("ab").decode([0, 3])


def test_save_load_round_trip(tmp_path):
    tok = CharTokenizer.train("First Citizen:\nBefore we proceed, 東京 😀\t\r\n")
    tok.save(tmp_path / "sub" / "chars.json")
    again = CharTokenizer.load(tmp_path / "sub" / "chars.json")
    assert again.chars == tok.chars
    text = "Citizen 😀\r\n"
    assert again.encode(text) == tok.encode(text)


@pytest.mark.parametrize("content, message", [
    ("not json", "not a JSON character vocabulary"),
    ('{"type": "bpe", "chars": ["a"]}', "expected"),
    ('{"type": "char", "chars": ["ab"]}', "expected"),
    ('{"type": "char", "chars": "ab"}', "expected"),
    ('["a"]', "expected"),
    ('{"type": "char", "chars": ["a", "a"]}', "repeats characters"),
    ('{"type": "char", "chars": []}', "at least one character"),
])
def test_load_rejects_malformed_files(tmp_path, content, message):
    path = tmp_path / "chars.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        CharTokenizer.load(path)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        CharTokenizer.load(tmp_path / "nope.json")


def test_file_format(tmp_path):
    CharTokenizer.train("ba\n").save(tmp_path / "c.json")
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == \
        {"type": "char", "chars": ["\n", "a", "b"]}


def test_empty_corpus_is_an_error():
    with pytest.raises(ValueError, match="empty text"):
        CharTokenizer.train("")
