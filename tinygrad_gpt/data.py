"""Data preparation: text -> tokenizer fitted on the train split -> token ids on disk -> batches.

Like nanoGPT: the first 90% of the text is the train split, the last 10% the val split.
The tokenizer is fitted on the train split, or given (a pretrained model's, for continued
pretraining). The ids are written once to a cache folder as train.bin / val.bin (uint16, or
uint32 when the vocabulary needs it) plus meta.json, keyed by the text's content hash and
the tokenizer (its settings when fitted, its identity hash when given), and read back with
np.memmap, so a corpus larger than RAM trains without being loaded. meta.json is written
last: a folder without it is incomplete.
"""
import codecs
import hashlib
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tokenizer import CharTokenizer

from . import corpus, tokenizer_io
from .cli import UserError

CHUNK = 4 << 20          # characters tokenized at a time when streaming a corpus
TRAIN_FRACTION = 0.9
BPE_SAMPLE_CHARS = 64 << 20  # BPE training reads at most this much of the train split
PROGRESS_FROM = 2_000_000  # show a tokenizing progress bar for splits at least this long


class Dataset:
    """The two splits as memory-mapped id arrays, and the tokenizer (fitted or given)."""

    def __init__(self, folder, tokenizer=None):
        meta = json.loads((folder / "meta.json").read_text())
        dtype = np.dtype(meta["dtype"])
        self.folder, self.meta = folder, meta
        self.tokenizer = tokenizer or tokenizer_io.load(folder / "tokenizer")
        self.train = np.memmap(folder / "train.bin", dtype=dtype, mode="r")
        self.val = np.memmap(folder / "val.bin", dtype=dtype, mode="r")


def source_files(data):
    """The files behind --data: one UTF-8 text file, or every .txt below a folder (sorted)."""
    if not data:
        return [corpus.default_corpus_path()]
    path = Path(data)
    if not path.exists():
        raise UserError(f"--data {data}: no such file or folder")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise UserError(f"--data {data}: the folder holds no .txt files")
        return files
    return [path]


def read_text(files):
    """Yield the corpus as text pieces (files joined by newlines), checking it is UTF-8."""
    for n, path in enumerate(files):
        decoder = codecs.getincrementaldecoder("utf-8")()
        offset = 0
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(CHUNK), b""):
                try:
                    text = decoder.decode(block)
                except UnicodeDecodeError as e:
                    raise UserError(f"--data {path} is not UTF-8 text (byte {offset + e.start}); "
                                    "convert it, e.g. iconv -t utf-8") from None
                offset += len(block)
                yield text
            try:
                yield decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                raise UserError(f"--data {path} ends in the middle of a UTF-8 character") from None
        if n + 1 < len(files):
            yield "\n"


def content_key(files, tokenizer, vocab_size):
    digest = hashlib.sha256()
    for path in files:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    if not isinstance(tokenizer, str):
        settings = f"tok{tokenizer_io.identity(tokenizer)}"      # a given tokenizer
    else:
        settings = "char" if tokenizer == "char" else f"bpe{vocab_size}"
    return f"{digest.hexdigest()[:16]}-{settings}"


def prepare(data, tokenizer="char", vocab_size=512, cache=None, quiet=False):
    """Tokenize the corpus once (or find it already done) and return the Dataset.

    tokenizer: "char" or "bpe" (fit one of vocab_size tokens on the train split), or a
    tokenizer object (CharTokenizer, BPETokenizer), used as it is: a pretrained model's.
    """
    files = source_files(data)
    given = None if isinstance(tokenizer, str) else tokenizer
    folder = Path(cache or corpus.cache_dir() / "datasets") / content_key(files, tokenizer,
                                                                          vocab_size)
    if (folder / "meta.json").exists():
        return Dataset(folder, given)
    n_chars = sum(len(piece) for piece in read_text(files))
    if n_chars == 0:
        raise UserError(f"--data {data or 'default corpus'} is empty")
    split = int(n_chars * TRAIN_FRACTION)
    if given is not None:
        tok = given
    elif tokenizer == "char":            # the vocabulary: every character of the train split
        chars = set()
        for piece in _pieces(read_text(files), 0, split):
            chars.update(piece)
        tok = tokenizer_io.fit("char", "".join(sorted(chars)), vocab_size)
    else:                                # BPE merges learned from (at most) the first 64M chars
        tok = tokenizer_io.fit("bpe", "".join(_pieces(read_text(files), 0,
                                                    min(split, BPE_SAMPLE_CHARS))), vocab_size)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_io.save(tok, folder / "tokenizer")
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    counts = {}
    for name, lo, hi in (("train", 0, split), ("val", split, n_chars)):
        counts[name] = _write_ids(tok, files, lo, hi, folder / f"{name}.bin", dtype,
                                  desc=f"tokenizing {name}", quiet=quiet)
    kind = "char" if isinstance(tok, CharTokenizer) else "bpe"
    meta = {"files": [str(f) for f in files], "chars": n_chars, "split_at_char": split,
            "tokenizer": kind, "fitted": given is None,
            "tokenizer_identity": tokenizer_io.identity(tok), "vocab_size": tok.vocab_size,
            "dtype": np.dtype(dtype).name,
            "train_tokens": counts["train"], "val_tokens": counts["val"],
            # characters a character tokenizer does not know are skipped (encode_corpus)
            "skipped_chars": (n_chars - counts["train"] - counts["val"]) if kind == "char"
            else 0}
    tmp = folder / "meta.json.tmp"
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, folder / "meta.json")
    return Dataset(folder, given)


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
    tmp = path.with_suffix(".tmp")
    show = not quiet and hi - lo >= PROGRESS_FROM        # small corpora are done at once
    with open(tmp, "wb") as f, tqdm(total=hi - lo, desc=desc, unit="char", unit_scale=True,
                                    disable=not show, leave=False) as bar:
        for piece in _pieces(read_text(files), lo, hi):
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
    os.replace(tmp, path)
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
