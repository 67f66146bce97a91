"""Data preparation: split, tokenizer fitted on train only, memmapped id cache, batches."""
import numpy as np
import pytest

from tinygrad_gpt import data

TEXT = "abcdefghij" * 90 + "XYZ" * 30          # the last 10% holds characters train never saw


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "cache"


def test_split_is_90_10_and_char_vocab_comes_from_train_only(tmp_path, cache):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    ds = data.prepare(str(path), "char", cache=cache)
    split = int(len(TEXT) * 0.9)
    assert ds.meta["split_at_char"] == split
    assert ds.tokenizer.vocab_size == len(set(TEXT[:split]))
    assert isinstance(ds.train, np.memmap) and ds.train.dtype == np.uint16
    assert ds.tokenizer.decode(ds.train.tolist()) == TEXT[:split]
    unseen = set(TEXT[split:]) - set(TEXT[:split])
    assert ds.tokenizer.decode(ds.val.tolist()) == "".join(c for c in TEXT[split:]
                                                             if c not in unseen)


def test_ids_are_cached_by_content_and_settings(tmp_path, cache, monkeypatch):
    path = tmp_path / "t.txt"
    path.write_text(TEXT)
    first = data.prepare(str(path), "char", cache=cache)
    monkeypatch.setattr(data, "_write_ids", lambda *a, **k: pytest.fail("re-tokenized"))
    again = data.prepare(str(path), "char", cache=cache)
    assert again.folder == first.folder
    path.write_text(TEXT + "more")                        # new content -> new cache entry
    monkeypatch.undo()
    assert data.prepare(str(path), "char", cache=cache).folder != first.folder


def test_a_folder_of_txt_files_is_one_corpus_in_sorted_order(tmp_path, cache):
    folder = tmp_path / "books"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_text("second book " * 20)
    (folder / "a.txt").write_text("first book " * 20)
    (folder / "sub" / "c.txt").write_text("third book " * 20)
    (folder / "notes.md").write_text("ignored")
    ds = data.prepare(str(folder), "char", cache=cache)
    text = ds.tokenizer.decode(ds.train.tolist() + ds.val.tolist())
    assert text.index("first") < text.index("second") < text.index("third")
    assert "ignored" not in text


def test_bpe_ids_round_trip(tmp_path, cache):
    path = tmp_path / "t.txt"
    body = "the quick brown fox jumps over the lazy dog. " * 200
    path.write_text(body)
    ds = data.prepare(str(path), "bpe", vocab_size=300, cache=cache)
    assert ds.tokenizer.vocab_size <= 300 and len(ds.train) < 0.9 * len(body)
    assert ds.tokenizer.decode(ds.train.tolist() + ds.val.tolist()) == body


def test_batches_are_next_token_windows_and_deterministic():
    ids = np.arange(1000, dtype=np.uint16)
    x, y = data.get_batch(ids, 8, 5, np.random.default_rng(0))
    assert x.shape == y.shape == (5, 8) and x.dtype == np.int64
    np.testing.assert_array_equal(y, x + 1)                 # targets are the next tokens
    x2, _ = data.get_batch(ids, 8, 5, np.random.default_rng(0))
    np.testing.assert_array_equal(x, x2)
    assert x.max() <= 998                                   # the window never runs off the end
