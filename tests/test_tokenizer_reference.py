"""Against the reference implementations, when installed (skipped cleanly otherwise):
tiktoken with our ranks and pattern, and Hugging Face tokenizers/transformers reading our
saved files, must give the same ids on a few hundred varied strings; and a tokenizer trained
by Hugging Face must load here and encode as it does."""
import random

import pytest

from conftest import TINYSHAKESPEARE
from tokenizer import BPETokenizer

WORDS = ("the of and to in is you that it he was for on are as with his they I at be this "
         "have from or one had by word but not what all were we when your can said there use "
         "an each which she do how their if will up other about out many then them these so "
         "Hello HELLO naïve café Straße Ærøskøbing Москва Αθήνα 東京 大阪 こんにちは 서울 "
         "مرحبا नमस्ते שלום don't it's WE'LL they've I'd ’curly’ def return lambda x_1 "
         "foo.bar() {a: [1, 2]} <tag/> #include $PATH 0x1F 3.14159 1,000,000 2024-06-01 "
         "😀 🚀 👍🏽 👩‍💻 🇯🇵 e\u0301 a\u0308 \u00a0 \u200b ☃ ∑ √ → ½").split(" ")
GLUE = [" ", " ", " ", "  ", "\n", "\r\n", "\t", "\n\n", "   ", ". ", ", ", "!", "?\n", "\x00",
        "\x0b", "\x85", "\u2028", "'s ", "'S ", "'ll ", "0", "42", "123456789", "<|endoftext|>"]


def varied_strings(count, seed, max_pieces=30):
    """Deterministic pseudo-random strings: words, numbers, whitespace runs, controls,
    contractions, special-token text, in every mixture."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        pieces = [rng.choice(WORDS) if rng.random() < 0.6 else rng.choice(GLUE)
                  for _ in range(rng.randint(0, max_pieces))]
        out.append("".join(pieces))
    return out


CORPUS = "".join(varied_strings(200, seed=1))           # about 9 KB of training text
PROBES = varied_strings(300, seed=2)


@pytest.fixture(scope="module", params=["gpt2", "gpt4"])
def trained(request):
    return BPETokenizer.train(CORPUS, vocab_size=700, pattern=request.param)


def tiktoken_encoding(tok):
    tiktoken = pytest.importorskip("tiktoken")
    return tiktoken.Encoding(name="ours", pat_str=tok.pattern,
                             mergeable_ranks={token: i for i, token in tok.vocab.items()},
                             special_tokens=tok.special_tokens)


def hf_tokenizer(folder):
    """tokenizers.Tokenizer as Hugging Face builds GPT-2's: BPE from our vocab.json and
    merges.txt, ByteLevel pre-tokenizer (GPT-2's regex), <|endoftext|> as a special token."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers
    hf = tokenizers.Tokenizer(models.BPE.from_file(str(folder / "vocab.json"),
                                                   str(folder / "merges.txt")))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens(["<|endoftext|>"])
    return hf


def test_all_merges_are_learned(trained):
    """The comparisons below exercise 443 merges, not a vocabulary that ran out of pairs."""
    assert len(trained.merges) == 700 - 257


def test_equals_tiktoken_with_same_ranks_and_pattern(trained):
    enc = tiktoken_encoding(trained)
    for text in PROBES:
        assert trained.encode(text, allowed_special="all") == \
            enc.encode(text, allowed_special="all"), text
        assert trained.encode_ordinary(text) == enc.encode_ordinary(text), text
    assert enc.decode(trained.encode(PROBES[0], allowed_special="all")) == PROBES[0]


def test_disallowed_special_raises_like_tiktoken(trained):
    enc = tiktoken_encoding(trained)
    with pytest.raises(ValueError):
        enc.encode("a <|endoftext|>")
    with pytest.raises(ValueError, match="special token"):
        trained.encode("a <|endoftext|>")


def test_hugging_face_tokenizers_reads_our_files(tmp_path):
    tok = BPETokenizer.train(CORPUS, vocab_size=700)          # ByteLevel uses GPT-2's regex
    tok.save(tmp_path)
    hf = hf_tokenizer(tmp_path)
    for text in PROBES:
        assert hf.encode(text).ids == tok.encode(text, allowed_special="all"), text
    assert hf.decode(tok.encode(PROBES[3], allowed_special="all"),
                     skip_special_tokens=False) == PROBES[3]


def test_transformers_gpt2_tokenizer_reads_our_files(tmp_path, monkeypatch):
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = BPETokenizer.train(CORPUS, vocab_size=700)
    tok.save(tmp_path)
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(tmp_path))
    for text in PROBES[:100]:
        assert hf.encode(text) == tok.encode(text, allowed_special="all"), text
    assert hf.eos_token_id == tok.special_tokens["<|endoftext|>"]


def test_hugging_face_trained_tokenizer_loads_here(tmp_path):
    """Hugging Face numbers things differently (<|endoftext|> = 0, then the 256 byte tokens
    in character order, then merges); loading must keep its ids and its encodings."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import models, pre_tokenizers, trainers
    hf = tokenizers.Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator([CORPUS], trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    hf.model.save(str(tmp_path))
    ours = BPETokenizer.load(tmp_path)
    assert ours.special_tokens == {"<|endoftext|>": 0}
    for text in PROBES:
        assert ours.encode(text, allowed_special="all") == hf.encode(text).ids, text


@pytest.mark.skipif(not TINYSHAKESPEARE.exists(), reason=f"{TINYSHAKESPEARE} not present")
def test_tinyshakespeare_equals_tiktoken():
    text = TINYSHAKESPEARE.read_text(encoding="utf-8")
    tok = BPETokenizer.train(text, vocab_size=1024)
    enc = tiktoken_encoding(tok)
    assert tok.encode_ordinary(text) == enc.encode_ordinary(text)
