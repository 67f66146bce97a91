"""The token cache (data.prepare's folder of train.bin, val.bin, meta.json, tokenizer/) is
checked before use, rebuilt when it is truncated, stale or half-written, and built safely by
several processes at once; an empty split is a zero-length array, and the train CLI refuses
a corpus too short for its splits in one line.

Fault tests here: each .bin truncated or grown at random sizes (Hypothesis), meta.json edited
field by field or cut short, the tokenizer folder deleted or swapped, a .bin deleted, a cache
whose source changed (same key, other text), an older version's meta.json, a killed
builder's leftover folder, a disk that fills mid-build, and a real race of subprocesses.
"""
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from tinygrad_gpt import data, tokenizer_io
from tinygrad_gpt.cli import UserError
from tokenizer import CharTokenizer

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(60))


def build(folder, text=TEXT, tokenizer="char", **kw):
    """A fresh cache for text in folder: (corpus path, Dataset)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "corpus.txt"
    path.write_text(text, encoding="utf-8")
    return path, data.prepare(str(path), tokenizer, cache=folder / "cache", quiet=True, **kw)


def reprepare(path, cache, tokenizer="char"):
    """data.prepare again: (Dataset, what it printed on stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        ds = data.prepare(str(path), tokenizer, cache=cache, quiet=True)
    return ds, err.getvalue()


def ids(ds):
    return np.asarray(ds.train).tolist(), np.asarray(ds.val).tolist()


def leftovers(cache):
    return sorted(p.name for p in cache.iterdir() if ".tmp-" in p.name)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One good cache, copied by each example: (work folder, key folder name, expected ids)."""
    root = tmp_path_factory.mktemp("template")
    _, ds = build(root)
    return root, ds.folder.name, ids(ds)


@contextlib.contextmanager
def copy_of(template):
    root, name, expected = template
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp) / "work"
        shutil.copytree(root, work)
        yield work / "corpus.txt", work / "cache", work / "cache" / name, expected


def assert_rebuilt(path, cache, expected, reason):
    ds, err = reprepare(path, cache)
    assert ids(ds) == expected
    assert err.count("\n") == 1 and err.startswith("note: the token cache") and reason in err, err
    assert "rebuilding it" in err and leftovers(cache) == []
    assert reprepare(path, cache)[1] == ""             # the rebuilt folder is trusted as it is


@given(split=st.sampled_from(data.SPLITS), fraction=st.floats(0, 2.5))
def test_a_bin_of_the_wrong_size_is_rebuilt(template, split, fraction):
    with copy_of(template) as (path, cache, folder, expected):
        size = (folder / f"{split}.bin").stat().st_size
        new_size = int(size * fraction)
        if new_size == size:
            new_size += 1                                  # grown by one byte
        with open(folder / f"{split}.bin", "r+b") as f:
            if new_size > size:
                f.seek(new_size - 1)
                f.write(b"\1")
            f.truncate(new_size)
        assert_rebuilt(path, cache, expected, f"{split}.bin holds {new_size} bytes")


CHECKED = ("source_sha256", "settings", "tokenizer_identity", "vocab_size", "dtype",
           "train_tokens", "val_tokens")
ODD = st.one_of(st.none(), st.booleans(), st.integers(-3, 1 << 40), st.text(max_size=8),
                st.sampled_from(["uint32", "uint8", "float32", "bpe512", "0" * 64]))


@given(field=st.sampled_from(CHECKED), value=ODD, delete=st.booleans())
def test_an_edited_meta_json_is_rebuilt(template, field, value, delete):
    with copy_of(template) as (path, cache, folder, expected):
        meta = json.loads((folder / "meta.json").read_text())
        if delete:
            del meta[field]
        else:
            assume(meta[field] != value or type(meta[field]) is not type(value))  # an edit
            meta[field] = value
        (folder / "meta.json").write_text(json.dumps(meta))
        assert_rebuilt(path, cache, expected, "meta.json")


@given(cut=st.floats(0, 0.999))
def test_a_meta_json_cut_short_is_rebuilt(template, cut):
    with copy_of(template) as (path, cache, folder, expected):
        text = (folder / "meta.json").read_text()
        (folder / "meta.json").write_text(text[:int(len(text) * cut)])
        assert_rebuilt(path, cache, expected, "unreadable (meta.json")


@pytest.mark.parametrize("fault, reason", [
    ("no tokenizer", "its tokenizer does not load"),
    ("other tokenizer", "its tokenizer's identity"),
    ("broken tokenizer", "its tokenizer does not load"),
    ("no val.bin", "no val.bin"),
    ("no meta.json", "no meta.json"),
    ("older meta.json", "source_sha256"),
])
def test_a_damaged_or_half_written_folder_is_rebuilt(template, fault, reason):
    with copy_of(template) as (path, cache, folder, expected):
        meta = json.loads((folder / "meta.json").read_text())
        if fault == "no tokenizer":
            shutil.rmtree(folder / "tokenizer")
        elif fault == "other tokenizer":
            tokenizer_io.save(CharTokenizer.train("abc"), folder / "tokenizer")
        elif fault == "broken tokenizer":
            (folder / "tokenizer" / "char.json").write_text("{not json")
        elif fault == "no val.bin":
            (folder / "val.bin").unlink()
        elif fault == "no meta.json":                     # what a build killed before it leaves
            (folder / "meta.json").unlink()
        else:                                              # as the previous version wrote it
            del meta["source_sha256"], meta["settings"]
            (folder / "meta.json").write_text(json.dumps(meta))
        assert_rebuilt(path, cache, expected, reason)


def test_a_cache_whose_source_changed_is_rebuilt(template):
    """The same key (the first 16 hex digits of the hash) but another text: the full hash
    in meta.json tells them apart."""
    with copy_of(template) as (path, cache, folder, _):
        other = TEXT.replace("fox", "cat")
        path.write_text(other)
        key = f"{data.corpus.source_hash([path])[:16]}-char"
        os.rename(folder, cache / key)                     # the old text's ids under the new key
        ds, err = reprepare(path, cache)
        assert "stale (meta.json's source_sha256" in err
        assert ds.tokenizer.decode(ids(ds)[0] + ids(ds)[1]) == other


def test_a_given_tokenizer_must_be_the_cached_one(tmp_path):
    """A folder keyed by tokenizer X whose tokenizer/ and meta.json both say Y is stale."""
    x, y = CharTokenizer.train(TEXT), CharTokenizer.train(TEXT + "#")
    path, ds = build(tmp_path, tokenizer=x)
    assert ds.tokenizer is x
    tokenizer_io.save(y, ds.folder / "tokenizer")
    meta = json.loads((ds.folder / "meta.json").read_text())
    meta["tokenizer_identity"] = tokenizer_io.identity(y)
    (ds.folder / "meta.json").write_text(json.dumps(meta))
    again, err = reprepare(path, tmp_path / "cache", tokenizer=x)
    assert "its tokenizer's identity" in err and ids(again) == ids(ds)
    assert tokenizer_io.identity(tokenizer_io.load(ds.folder / "tokenizer")) == \
        tokenizer_io.identity(x)


def test_a_killed_builders_folder_is_removed_and_a_failed_build_leaves_nothing(tmp_path,
                                                                               monkeypatch):
    path, ds = build(tmp_path)
    cache = tmp_path / "cache"
    dead = cache / f".{ds.folder.name}.tmp-999999-dead"
    (dead / "tokenizer").mkdir(parents=True)
    (dead / "train.bin").write_bytes(b"\0" * 10)
    (ds.folder / "meta.json").unlink()
    reprepare(path, cache)
    assert leftovers(cache) == []
    shutil.rmtree(ds.folder)

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(data, "_write_ids", disk_full)
    with pytest.raises(UserError, match="cannot write the token cache .*No space left"):
        data.prepare(str(path), "char", cache=cache, quiet=True)
    with pytest.raises(UserError, match="vocab_size 10"):
        data.prepare(str(path), "bpe", vocab_size=10, cache=cache, quiet=True)
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == []


def test_empty_splits_are_zero_length_arrays(tmp_path, monkeypatch):
    path, ds = build(tmp_path, text="abcdefgh\n")   # val: "\n", which train never saw
    assert isinstance(ds.train, np.memmap) and len(ds.train) == 8
    assert type(ds.val) is np.ndarray and ds.val.shape == (0,) and ds.val.dtype == np.uint16
    monkeypatch.setattr(data, "_write_ids", lambda *a, **k: pytest.fail("re-tokenized"))
    again, err = reprepare(path, tmp_path / "cache")  # an empty val.bin is a valid cache
    assert err == "" and len(again.val) == 0
    monkeypatch.undo()
    with pytest.raises(UserError, match="the train split .* is empty.*use more data"):
        build(tmp_path / "one", text="a")
    tok = CharTokenizer.train("a")                       # a given tokenizer needs no fitting
    _, ds = build(tmp_path / "given", text="a", tokenizer=tok)
    assert type(ds.train) is np.ndarray and len(ds.train) == 0 and ds.val.tolist() == [0]


@pytest.mark.parametrize("texts, needle", [
    (["abcdefgh\n"], "the val split has 0 tokens, fewer than block_size + 1 = 5"),
    (["a"], "the train split (the first 90% of its 1 character(s)) is empty"),
    (["", ""], "the train split (the first 90% of its 1 character(s)) is empty"),  # "\n"
])
def test_train_refuses_an_empty_split_in_one_line(tmp_path, texts, needle):
    path = tmp_path / "short"                      # one file, or a folder of several
    path.mkdir()
    for i, text in enumerate(texts):
        (path / f"{i}.txt").write_text(text)
    path = path / "0.txt" if len(texts) == 1 else path
    env = {**os.environ, "TINYGRAD_GPT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "tinygrad_gpt.train", f"--data={path}",
                           f"--out_dir={tmp_path / 'out'}", "--block_size=4", "--max_iters=1"],
                          capture_output=True, text=True, env=env, timeout=120)
    err = proc.stderr.strip()
    assert proc.returncode == 2, proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and needle in err, err
    assert "Traceback" not in proc.stderr


# ----- several processes building one cache at once ------------------------------------------

CHILD = r"""
import hashlib, json, os, sys, time
from pathlib import Path
from tinygrad_gpt import data
corpus, cache, sync, me, n, locked = sys.argv[1:7]
sync, n = Path(sync), int(n)

def wait_for_all(stage):                      # a barrier: every child reaches stage first
    (sync / f"{stage}-{me}").touch()
    deadline = time.time() + 60
    while len(list(sync.glob(f"{stage}-*"))) < n and time.time() < deadline:
        time.sleep(0.005)

built, write_ids, install = [], data._write_ids, data._install
def slow_write_ids(*args, **kwargs):          # a build long enough for the others to arrive
    built.append(1)
    time.sleep(0.05)
    return write_ids(*args, **kwargs)
def install_together(*args):                  # without the lock, all rename at once
    wait_for_all("install")
    return install(*args)
data._write_ids = slow_write_ids
if locked == "no":
    data.fcntl, data._install = None, install_together
wait_for_all("start")
ds = data.prepare(corpus, "char", cache=cache, quiet=True)
mapped = None                                 # the inode of the train.bin this process maps
if os.path.exists("/proc/self/maps"):
    with open("/proc/self/maps") as f:
        mapped = [int(line.split(maxsplit=5)[4]) for line in f if "train.bin" in line]
print(json.dumps({"folder": str(ds.folder), "built": bool(built), "mapped": mapped,
                  "train": hashlib.sha256(ds.train.tobytes()).hexdigest(),
                  "val": hashlib.sha256(ds.val.tobytes()).hexdigest(),
                  "identity": data.tokenizer_io.identity(ds.tokenizer)}))
"""


@pytest.mark.parametrize("locked, start", [("yes", "absent"), ("yes", "stale"), ("no", "absent")])
def test_processes_building_one_cache_at_once_all_read_the_same_valid_ids(tmp_path, locked,
                                                                          start):
    """With the lock, exactly one process builds and the others wait for it; without it (no
    fcntl), every one builds, all rename at once, one wins and the others take its folder."""
    path, reference = build(tmp_path / "reference")
    cache, n = tmp_path / "cache", 3
    if start == "stale":
        shutil.copytree(reference.folder, cache / reference.folder.name)
        with open(cache / reference.folder.name / "train.bin", "r+b") as f:
            f.truncate(7)
    sync = tmp_path / "sync"
    sync.mkdir()
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(cache), str(sync),
                                  str(i), str(n), locked], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True) for i in range(n)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results.append(json.loads(out))
        notes = [line for line in err.splitlines() if line.startswith("note:")]
        assert len(notes) <= 1 and all("rebuilding it" in line for line in notes), err
    expected = {"folder": str(cache / reference.folder.name),
                "train": hashlib.sha256(reference.train.tobytes()).hexdigest(),
                "val": hashlib.sha256(reference.val.tobytes()).hexdigest(),
                "identity": tokenizer_io.identity(reference.tokenizer)}
    for result in results:
        assert {k: result[k] for k in expected} == expected
    assert sum(r["built"] for r in results) == (1 if locked == "yes" else n)
    inode = (cache / reference.folder.name / "train.bin").stat().st_ino
    for result in results:                         # nobody reads a folder that was replaced
        assert result["mapped"] in (None, [inode]), (result["mapped"], inode)
    assert leftovers(cache) == []
    check = (data.corpus.source_hash([path]), "char", None)
    ds, problem = data.open_cache(cache / reference.folder.name, *check)
    assert problem is None and ids(ds) == ids(reference)
