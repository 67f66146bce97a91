"""Files: Hugging Face's vocab.json + merges.txt and OpenAI's encoder.json + vocab.bpe, written
and read back exactly; GPT-2's own id layout kept; malformed files rejected by file and line."""
import json

import pytest

from tokenizer import BPETokenizer
from tokenizer.bytes_unicode import BYTE_TO_CHAR, text_to_token, token_to_text

CORPUS = ("It was the best of times, it was the worst of times, it was the age of wisdom, "
          "it was the age of foolishness... 1859: Dickens! Ça va? 東京 😀\r\n\ttabs  ") * 8
PROBES = ["it was the age of foolishness", "Ça va? 東京 😀\r\n", " 1859 1860", "",
          "zyx<|endoftext|>wvu", "   \n\n\t x", "naïve café ÆØÅ"]


def gpt2_layout(tok):
    """Re-number a trained tokenizer as GPT-2's files number theirs: the 256 byte tokens in
    bytes_to_unicode's order ('!' = 0, ..., the space byte = 220), then merges, then
    <|endoftext|>. Returns (encoder.json dict, vocab.bpe text)."""
    encoder = {ch: i for i, ch in enumerate(BYTE_TO_CHAR.values())}
    for left, right in tok.merges:
        encoder[token_to_text(tok.vocab[left] + tok.vocab[right])] = len(encoder)
    encoder["<|endoftext|>"] = len(encoder)
    lines = [f"{token_to_text(tok.vocab[a])} {token_to_text(tok.vocab[b])}" for a, b in tok.merges]
    return encoder, "#version: 0.2\n" + "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(CORPUS, vocab_size=300)


def test_bytes_to_unicode_is_gpt2s_table():
    assert len(set(BYTE_TO_CHAR.values())) == 256
    assert BYTE_TO_CHAR[ord("a")] == "a" and BYTE_TO_CHAR[0x20] == "Ġ"
    assert BYTE_TO_CHAR[0x0A] == "Ċ" and BYTE_TO_CHAR[0x00] == "Ā" and BYTE_TO_CHAR[0xAD] == "Ń"
    assert token_to_text(b" the\n") == "ĠtheĊ" and text_to_token("ĠtheĊ") == b" the\n"
    with pytest.raises(ValueError, match="not in GPT-2's bytes-to-unicode table"):
        text_to_token("a b")


def test_hugging_face_layout_round_trip(tok, tmp_path):
    tok.save(tmp_path)
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2" and len(lines) == 1 + len(tok.merges)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["Ġ"] == 32 and vocab["<|endoftext|>"] == 299 and len(vocab) == 300
    again = BPETokenizer.load(tmp_path)
    assert again.vocab == tok.vocab and again.merges == tok.merges
    assert again.special_tokens == tok.special_tokens and again.pattern == tok.pattern
    for text in PROBES:
        assert again.encode(text, allowed_special="all") == tok.encode(text, allowed_special="all")


def test_pattern_survives_save_and_load(tmp_path):
    gpt4 = BPETokenizer.train(CORPUS, vocab_size=300, pattern="gpt4", special_tokens=())
    gpt4.save(tmp_path)
    again = BPETokenizer.load(tmp_path)
    assert again.pattern == gpt4.pattern and again.special_tokens == {}
    assert all(again.encode(t) == gpt4.encode(t) for t in PROBES if "<|" not in t)
    (tmp_path / "split_pattern.json").unlink()           # plain GPT-2 folder: GPT-2's pattern
    assert BPETokenizer.load(tmp_path).pattern == BPETokenizer.load(tmp_path, "gpt2").pattern


def test_openai_layout_keeps_gpt2_ids(tok, tmp_path):
    encoder, bpe = gpt2_layout(tok)
    (tmp_path / "encoder.json").write_text(json.dumps(encoder), encoding="utf-8")
    (tmp_path / "vocab.bpe").write_text(bpe, encoding="utf-8")
    gpt2 = BPETokenizer.load(tmp_path)
    assert gpt2.encode("!") == [0] and gpt2.encode(" ") == [220] and gpt2.encode("\n") == [198]
    assert gpt2.special_tokens == {"<|endoftext|>": 299}
    for text in PROBES:                               # same segmentation, GPT-2's numbering
        ours = tok.encode(text, allowed_special="all")
        theirs = gpt2.encode(text, allowed_special="all")
        assert [gpt2.token_to_bytes(i) for i in theirs] == [tok.token_to_bytes(i) for i in ours]
        assert gpt2.decode(theirs) == text
    gpt2.save(tmp_path / "hf")                        # and GPT-2's ids survive a save
    assert json.loads((tmp_path / "hf" / "vocab.json").read_text(encoding="utf-8")) == encoder


def write_folder(folder, vocab, merges_text):
    folder.mkdir(exist_ok=True)
    (folder / "vocab.json").write_text(vocab if isinstance(vocab, str) else json.dumps(vocab),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text(merges_text, encoding="utf-8")


BYTES = {ch: b for b, ch in BYTE_TO_CHAR.items()}      # a valid vocabulary of the 256 bytes
GOOD = dict(BYTES, **{"Ġt": 256, "he": 257})
GOOD_MERGES = "#version: 0.2\nĠ t\nh e\n"


@pytest.mark.parametrize("vocab, merges, message", [
    ('{"a": 1,', GOOD_MERGES, r"vocab.json line 1 column \d+: not valid JSON"),
    ("[1, 2]", GOOD_MERGES, "expected a JSON object"),
    ('{"a": 1, "a": 2}', GOOD_MERGES, "token 'a' appears twice"),
    (dict(GOOD, x="7"), GOOD_MERGES, "has id '7'; ids are integers"),
    (dict(GOOD, **{"Ġt": -3}), GOOD_MERGES, "has id -3"),
    (dict(GOOD, **{"he": 256}), GOOD_MERGES, "share id 256"),
    (GOOD, "#version: 0.2\nĠ t\nh e x\n", r"merges.txt line 3: expected two tokens"),
    (GOOD, "#version: 0.2\nĠ t\nh  e\n", r"merges.txt line 3: expected two tokens"),
    (GOOD, "#version: 0.2\nĠ t\nq Ā\n", r"merges.txt line 3: 'qĀ' \(the merge's result\) is not"),
    (GOOD, "#version: 0.2\nĠ t\nh ☃\n", r"merges.txt line 3: '☃' is not in vocab.json"),
    (GOOD, "#version: 0.2\nĠ t\nĠ t\n", r"merges.txt line 3: repeats the merge Ġ t of line 2"),
    ({k: v for k, v in GOOD.items() if k != "Ā"}, GOOD_MERGES, r"lacks 1 of the 256 byte tokens"),
    (dict(GOOD, **{"☃x": 258, "☃": 259}), GOOD_MERGES + "☃ x\n",
     r"vocab.json: '☃x' contains '☃' \(U\+2603\), which is not in GPT-2's bytes-to-unicode"),
])
def test_malformed_files_are_rejected(tmp_path, vocab, merges, message):
    write_folder(tmp_path / "tok", vocab, merges)
    with pytest.raises(ValueError, match=message):
        BPETokenizer.load(tmp_path / "tok")


def test_well_formed_minimal_folder_loads(tmp_path):
    write_folder(tmp_path / "tok", GOOD, GOOD_MERGES)
    tok = BPETokenizer.load(tmp_path / "tok")
    assert tok.encode(" the") == [256, 257]


def test_not_utf8_and_missing_files(tmp_path):
    write_folder(tmp_path / "tok", GOOD, GOOD_MERGES)
    (tmp_path / "tok" / "merges.txt").write_bytes(b"#version: 0.2\n\xff \xfe\n")
    with pytest.raises(ValueError, match=r"merges.txt is not UTF-8 text \(bad byte at offset 14"):
        BPETokenizer.load(tmp_path / "tok")
    (tmp_path / "tok" / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="neither vocab.json"):
        BPETokenizer.load(tmp_path / "tok")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        BPETokenizer.load(tmp_path / "nothing")


def test_bad_split_pattern_file(tok, tmp_path):
    tok.save(tmp_path)
    (tmp_path / "split_pattern.json").write_text('{"pattern": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="split_pattern.json: expected"):
        BPETokenizer.load(tmp_path)
    (tmp_path / "split_pattern.json").write_text('{"split_pattern": "(("}', encoding="utf-8")
    with pytest.raises(ValueError, match="not a valid regex"):
        BPETokenizer.load(tmp_path)


def test_special_token_spelled_like_a_token_cannot_be_saved(tmp_path):
    tok = BPETokenizer.train("ab", vocab_size=258, special_tokens=("Ġ",))
    with pytest.raises(ValueError, match="spelled like ordinary token"):
        tok.save(tmp_path)
