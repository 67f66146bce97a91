"""Data preparation: text -> tokenizer fitted on the train split -> token ids on disk -> batches.

Like nanoGPT: the first 90% of the text is the train split, the last 10% the val split.
The tokenizer is fitted on the train split, or given (a pretrained model's, for continued
pretraining). The ids are written once to a cache folder as train.bin / val.bin (uint16, or
uint32 when the vocabulary needs it) plus meta.json and tokenizer/, keyed by the text's
content hash and the tokenizer (its settings when fitted, its identity hash when given), and
read back with np.memmap, so a corpus larger than RAM trains without being loaded. An empty
split is a zero-length array (an empty file cannot be mapped); train refuses it in one line.

The cache is checked before each use (open_cache): meta.json records the source's full
sha256, the key's settings and the tokenizer's identity, which must all match; the tokenizer
folder must load and have that identity; each .bin must hold exactly meta's token count. A
folder that fails (truncated, stale, half-written by an older version) is rebuilt with a
one-line note, never trusted. Builders take a lock (.<key>.lock beside the folder, flock:
the OS drops it when its holder dies), build in a unique sibling folder and rename it into
place, so a reader sees no folder or a whole one; a process killed mid-build leaves only its
build folder, which the next builder removes. Not checked: the .bin bytes themselves (a file
of the right size with flipped bits is read as it is), which would cost a full read per run.
"""
import contextlib
import json
import os
import secrets
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tokenizer import CharTokenizer

from . import corpus, tokenizer_io
from .cli import UserError

try:
    import fcntl                # POSIX; without it builders rely on the atomic rename alone
except ImportError:             # pragma: no cover (Windows)
    fcntl = None

TRAIN_FRACTION = 0.9
BPE_SAMPLE_CHARS = 64 << 20  # BPE training reads at most this much of the train split
PROGRESS_FROM = 2_000_000  # show a tokenizing progress bar for splits at least this long
SPLITS = ("train", "val")


class Dataset:
    """The two splits as id arrays (memory-mapped; zero-length when a split is empty), the
    tokenizer (fitted or given) and the cache's meta.json."""

    def __init__(self, folder, meta, tokenizer, train, val):
        self.folder, self.meta, self.tokenizer = folder, meta, tokenizer
        self.train, self.val = train, val


def cache_settings(tokenizer, vocab_size):
    """The tokenizer's part of the cache key: "char", "bpe512", or "tok<identity>" (given)."""
    if not isinstance(tokenizer, str):
        return f"tok{tokenizer_io.identity(tokenizer)}"
    return "char" if tokenizer == "char" else f"bpe{vocab_size}"


def ids_dtype(vocab_size):
    return np.dtype(np.uint16 if vocab_size <= 65536 else np.uint32)


def prepare(data, tokenizer="char", vocab_size=512, cache=None, quiet=False):
    """Tokenize the corpus once (or find it already done and checked) and return the Dataset.

    tokenizer: "char" or "bpe" (fit one of vocab_size tokens on the train split), or a
    tokenizer object (CharTokenizer, BPETokenizer), used as it is: a pretrained model's.
    """
    files = corpus.source_files(data)
    given = None if isinstance(tokenizer, str) else tokenizer
    check = (corpus.source_hash(files), cache_settings(tokenizer, vocab_size), given)
    root = Path(cache or corpus.cache_dir() / "datasets")
    folder = root / f"{check[0][:16]}-{check[1]}"
    if folder.exists():                             # the usual case: read it without a lock
        dataset, _ = open_cache(folder, *check)
        if dataset is not None:
            return dataset
    try:
        with _build_lock(folder, quiet):
            dataset, problem = open_cache(folder, *check)    # another process may have built it
            if dataset is not None:
                return dataset
            if folder.exists():
                print(f"note: the token cache {folder} is {problem}: rebuilding it",
                      file=sys.stderr)
            _remove_leftovers(folder)
            build = _sibling(folder)
            try:
                build.mkdir()
                _build(files, data, tokenizer, vocab_size, build, quiet,
                       {"source_sha256": check[0], "settings": check[1]})
                return _install(build, folder, check)
            finally:
                shutil.rmtree(build, ignore_errors=True)
    except OSError as e:
        raise UserError(f"cannot write the token cache in {root} ({e.strerror or e}): free some "
                        "space, or set TINYGRAD_GPT_CACHE to a writable folder") from None


def open_cache(folder, source_sha256, settings, given=None):
    """(the Dataset in a cache folder, None) once every check passes, else (None, why not).

    meta.json must record this source's sha256, these settings, and the identity that the
    tokenizer folder (and a given tokenizer) has; each .bin must hold exactly meta's token
    count in meta's dtype.
    """
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, "incomplete (no meta.json)"
    except (OSError, ValueError) as e:
        return None, f"unreadable (meta.json: {e})"
    if not isinstance(meta, dict):
        return None, "unreadable (meta.json is not an object)"
    for field, expected in (("source_sha256", source_sha256), ("settings", settings)):
        if meta.get(field) != expected:
            return None, f"stale (meta.json's {field} is not this run's)"
    counts = [meta.get(f"{name}_tokens") for name in SPLITS]
    if meta.get("dtype") not in ("uint16", "uint32") or not all(
            type(n) is int and n >= 0 for n in counts):
        return None, "unreadable (meta.json's dtype or token counts)"
    try:
        tok = tokenizer_io.load(folder / "tokenizer")
    except (UserError, ValueError, TypeError, KeyError, OSError) as e:
        return None, f"incomplete (its tokenizer does not load: {e})"
    identity = tokenizer_io.identity(tok)
    if identity != meta.get("tokenizer_identity") or (given is not None
                                                      and settings != f"tok{identity}"):
        return None, "stale (its tokenizer's identity is not the one meta.json records)"
    dtype = np.dtype(meta["dtype"])
    if meta.get("vocab_size") != tok.vocab_size or dtype != ids_dtype(tok.vocab_size):
        return None, "stale (meta.json's vocab_size or dtype is not its tokenizer's)"
    splits = []
    for name, count in zip(SPLITS, counts):
        path = folder / f"{name}.bin"
        if not path.is_file():
            return None, f"incomplete (no {name}.bin)"
        size = path.stat().st_size
        if size != count * dtype.itemsize:
            return None, (f"damaged ({name}.bin holds {size} bytes, meta.json says {count} "
                          f"tokens of {dtype.itemsize})")
        splits.append(np.memmap(path, dtype=dtype, mode="r") if count else np.zeros(0, dtype))
    return Dataset(folder, meta, given or tok, *splits), None


@contextlib.contextmanager
def _build_lock(folder, quiet):
    """Hold the file .<key>.lock beside the folder exclusively while checking and building."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not quiet:
                    print(f"waiting for another process to build the token cache {folder}",
                          file=sys.stderr)
                fcntl.flock(f, fcntl.LOCK_EX)
        yield                                       # closing the file releases the lock


def _sibling(folder):
    """A fresh name beside the folder for a build, or for an old folder on its way out."""
    return folder.parent / f".{folder.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def _remove_leftovers(folder):
    """Folders of builders that died: with the lock held, no other build is running."""
    if fcntl is not None:
        for path in folder.parent.glob(f".{folder.name}.tmp-*"):
            shutil.rmtree(path, ignore_errors=True)


def _install(build, folder, check):
    """Rename the finished build into place, so a reader sees no folder or a whole one. A
    folder already there is kept when it checks out (another builder won; possible only
    without the lock), else moved aside and deleted."""
    try:
        os.rename(build, folder)                    # refused when folder exists, not empty
    except OSError:
        theirs, _ = open_cache(folder, *check)
        if theirs is not None:
            return theirs
        aside = _sibling(folder)
        os.rename(folder, aside)
        os.rename(build, folder)
        shutil.rmtree(aside, ignore_errors=True)
    dataset, problem = open_cache(folder, *check)
    assert dataset is not None, f"the token cache just built in {folder} is {problem}"
    return dataset


def _build(files, data, tokenizer, vocab_size, build, quiet, record):
    """Fit (or take) the tokenizer; write tokenizer/, train.bin, val.bin, then meta.json."""
    name = data or "the default corpus"
    n_chars = sum(len(piece) for piece in corpus.read_text(files))
    if n_chars == 0:
        raise UserError(f"--data {name} is empty")
    split = int(n_chars * TRAIN_FRACTION)
    given = None if isinstance(tokenizer, str) else tokenizer
    if given is None and split == 0:
        raise UserError(f"--data {name}: the train split (the first 90% of its {n_chars} "
                        "character(s)) is empty, and the tokenizer is fitted on it: use more data")
    if given is not None:
        tok = given
    elif tokenizer == "char":            # the vocabulary: every character of the train split
        chars = set()
        for piece in _pieces(corpus.read_text(files), 0, split):
            chars.update(piece)
        tok = tokenizer_io.fit("char", "".join(sorted(chars)), vocab_size)
    else:                                # BPE merges learned from (at most) the first 64M chars
        tok = tokenizer_io.fit("bpe", "".join(_pieces(corpus.read_text(files), 0,
                                                    min(split, BPE_SAMPLE_CHARS))), vocab_size)
    tokenizer_io.save(tok, build / "tokenizer")
    dtype = ids_dtype(tok.vocab_size)
    counts = {}
    for split_name, lo, hi in (("train", 0, split), ("val", split, n_chars)):
        counts[split_name] = _write_ids(tok, files, lo, hi, build / f"{split_name}.bin", dtype,
                                        desc=f"tokenizing {split_name}", quiet=quiet)
    kind = "char" if isinstance(tok, CharTokenizer) else "bpe"
    meta = {**record, "files": [str(f) for f in files], "chars": n_chars,
            "split_at_char": split, "tokenizer": kind, "fitted": given is None,
            "tokenizer_identity": tokenizer_io.identity(tok), "vocab_size": tok.vocab_size,
            "dtype": dtype.name, "train_tokens": counts["train"], "val_tokens": counts["val"],
            # characters a character tokenizer does not know are skipped (encode_corpus)
            "skipped_chars": (n_chars - counts["train"] - counts["val"]) if kind == "char"
            else 0}
    with open(build / "meta.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(meta, indent=2))
        f.flush()
        os.fsync(f.fileno())


def _pieces(pieces, lo, hi):
    """The parts of a stream of text pieces that fall in characters [lo, hi)."""
    position = 0
    for piece in pieces:
        start, end = max(lo - position, 0), min(hi - position, len(piece))
        if start < end:
            yield piece[start:end]
        position += len(piece)
        if position >= hi:
            break


def _write_ids(tok, files, lo, hi, path, dtype, desc, quiet):
    """Stream characters [lo, hi) through the tokenizer into a binary file; return the count."""
    count, pending = 0, ""
    show = not quiet and hi - lo >= PROGRESS_FROM        # small corpora are done at once
    with open(path, "wb") as f, tqdm(total=hi - lo, desc=desc, unit="char", unit_scale=True,
                                     disable=not show, leave=False) as bar:
        for piece in _pieces(corpus.read_text(files), lo, hi):
            pending += piece
            cut = pending.rfind("\n") + 1
            if cut > 0:                                 # tokenize whole lines only
                ids = np.asarray(tokenizer_io.encode_corpus(tok, pending[:cut]), dtype=dtype)
                ids.tofile(f)
                count += ids.size
                bar.update(cut)
                pending = pending[cut:]
        if pending:
            ids = np.asarray(tokenizer_io.encode_corpus(tok, pending), dtype=dtype)
            ids.tofile(f)
            count += ids.size
            bar.update(len(pending))
        f.flush()
        os.fsync(f.fileno())
    return count


def get_batch(ids, block_size, batch_size, rng):
    """Random windows of block_size + 1 tokens: inputs x and next-token targets y, (B, T) each.

    Deterministic given the rng's state.
    """
    if len(ids) < block_size + 1:
        raise UserError(f"a split has {len(ids)} tokens, fewer than block_size + 1 = "
                        f"{block_size + 1}: use more data or a smaller --block_size")
    starts = rng.integers(0, len(ids) - block_size, size=batch_size)           # (B,)
    windows = np.asarray(ids[starts[:, None] + np.arange(block_size + 1)], np.int64)
    return windows[:, :-1], windows[:, 1:]                                      # (B, T) each
