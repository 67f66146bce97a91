"""Files from outside, malformed: a Hugging Face GPT-2 folder (config.json against
model.safetensors' header, gpt/hf.py) and tokenizer files (tokenizer/files.py,
tokenizer/char.py, tinygrad_gpt/tokenizer_io.py) give one line naming the file and the
problem, never a traceback: a ValueError (FileNotFoundError for a missing file) from the
library, a UserError from tinygrad_gpt, and from the CLIs (train, sample, finetune classify
and instruct --init_from) exit 2 and one stderr line, with nothing written. The header
itself: tests/test_safetensors_header.py.

Every folder is written by our own savers (gpt.hf.save_pretrained, tokenizer_io.save) into
tmp_path, then corrupted; the fuzz tests damage them at random.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

from gpt import GPT, GPTConfig
from gpt.hf import expected_tensors, to_hf_state_dict
from test_safetensors_header import FUZZ, JSON, one_line
from tinygrad_gpt import pretrained, tokenizer_io
from tinygrad_gpt.cli import UserError
from tokenizer import BPETokenizer

TEXT = "the cat sat on the mat; the hat is on the cat.\n" * 20
SHAPE = dict(block_size=16, n_layer=1, n_head=2, n_embd=8)


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A good GPT-2 folder: config.json, model.safetensors, vocab.json, merges.txt."""
    folder = tmp_path_factory.mktemp("base")
    tok = BPETokenizer.train(TEXT, vocab_size=262)
    GPT(GPTConfig(vocab_size=tok.vocab_size, **SHAPE)).save_pretrained(folder)
    tokenizer_io.save(tok, folder)
    return folder


@pytest.fixture
def folder(base, tmp_path):
    """A fresh copy of the good folder, to corrupt."""
    return Path(shutil.copytree(base, tmp_path / "gpt2"))


# ----- a GPT-2 folder: config.json against model.safetensors -------------------------------
def set_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items()
                                                    if v is not None}))


@pytest.mark.parametrize("write, words", [
    (lambda f: (f / "config.json").write_text("{"), "line 1 column 2 is not valid JSON"),
    (lambda f: (f / "config.json").write_bytes(b'{"n_embd": "\xff"}'), "is not UTF-8 text"),
    (lambda f: (f / "config.json").write_text("[1]"), "expected a JSON object"),
    (lambda f: (f / "config.json").write_text("[" * 100_000), "nested too deeply"),
    (lambda f: set_config(f, n_embd=None), "n_embd is missing"),
    (lambda f: set_config(f, n_positions=None, n_ctx=None), "n_positions is missing"),
    (lambda f: set_config(f, vocab_size="262"), "vocab_size is '262'; it must be a positive"),
    (lambda f: set_config(f, n_layer=1.0), "n_layer is 1.0; it must be a positive integer"),
    (lambda f: set_config(f, n_head=True), "n_head is True; it must be a positive integer"),
    (lambda f: set_config(f, n_layer=0), "n_layer is 0; it must be a positive integer"),
    (lambda f: set_config(f, n_embd=-8), "n_embd is -8; it must be a positive integer"),
    (lambda f: set_config(f, n_head=3), "n_embd 8 is not divisible by n_head 3"),
    (lambda f: set_config(f, model_type="llama"), "model_type is 'llama'"),
])
def test_a_bad_config_json_is_named(folder, write, words):
    write(folder)
    with pytest.raises(ValueError) as error:
        GPT.from_pretrained(folder)
    assert words in one_line(error, "config.json")


def test_older_and_bom_prefixed_configs_load(folder):
    set_config(folder, n_positions=None, n_ctx=16)              # GPT-2's older key
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text("\ufeff" + text, encoding="utf-8")
    assert GPT.from_pretrained(folder).config.block_size == 16


@FUZZ
@given(key=st.sampled_from(["vocab_size", "n_positions", "n_layer", "n_head", "n_embd",
                            "n_inner", "activation_function"]), value=JSON)
def test_any_config_value_loads_or_is_one_line(base, tmp_path, key, value):
    folder = tmp_path / "f"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(base, folder)
    set_config(folder, **{key: value})
    try:
        model = GPT.from_pretrained(folder)
    except ValueError as error:
        one_line(error)
        assert "config.json" in str(error) or "model.safetensors" in str(error)
        return
    assert model.config.n_embd == 8 and model.config.vocab_size == 262


def hf_tensors(folder):
    """The folder's GPT-2 tensors, named as in the hub's gpt2 file (no "transformer.")."""
    return {k.removeprefix("transformer."): v
            for k, v in load_file(str(folder / "model.safetensors")).items()}


def save_tensors(folder, tensors):
    save_file(tensors, str(folder / "model.safetensors"))


def edit_tensors(change):
    def write(folder):
        tensors = hf_tensors(folder)
        change(tensors)
        save_tensors(folder, tensors)
    return write


@pytest.mark.parametrize("write, words", [
    (edit_tensors(lambda t: t.update({"h.0.attn.c_attn.weight": t["h.0.attn.c_attn.weight"].T})),
     "wrong shape: h.0.attn.c_attn.weight (24, 8) where config.json needs (8, 24)"),
    (edit_tensors(lambda t: t.pop("h.0.mlp.c_fc.weight")), "missing h.0.mlp.c_fc.weight"),
    (edit_tensors(lambda t: t.pop("h.0.ln_2.bias")), "all of GPT-2's biases, or none"),
    (edit_tensors(lambda t: t.update({"h.0.mlp.c_gate.weight": np.zeros(2, np.float32)})),
     "unexpected 'h.0.mlp.c_gate.weight'"),
    (edit_tensors(lambda t: t.update({"transformer.wte.weight": t["wte.weight"].copy()})),
     "'wte.weight' both with and without the 'transformer.' prefix"),
    (edit_tensors(lambda t: t.update({"lm_head.weight": t["wte.weight"][:5]})),
     "lm_head.weight (5, 8) where config.json needs (262, 8)"),
    (edit_tensors(lambda t: t.update({"lm_head.weight": t["wte.weight"] + 1})),
     "lm_head.weight differs from wte.weight"),
    (edit_tensors(lambda t: t.update({"wte.weight": t["wte.weight"].astype(np.int32)})),
     "wte.weight is I32; GPT-2's weights are read as F16, F32 or F64"),
    (lambda f: set_config(f, vocab_size=300), "wte.weight (262, 8) where config.json needs"),
    (lambda f: (f / "model.safetensors").write_text("version https://git-lfs..."),
     "not safetensors"),
])
def test_tensors_that_do_not_fit_config_json_are_named(folder, write, words):
    write(folder)
    with pytest.raises(ValueError) as error:
        GPT.from_pretrained(folder)
    assert words in one_line(error, "model.safetensors")


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_half_and_double_precision_files_load(folder, dtype):
    tensors = hf_tensors(folder)
    save_tensors(folder, {k: v.astype(dtype) for k, v in tensors.items()})
    model = GPT.from_pretrained(folder)
    np.testing.assert_array_equal(model.token_embedding.weight.data,
                                  tensors["wte.weight"].astype(dtype).astype(np.float32))


@settings(max_examples=10, deadline=None)
@given(n_layer=st.integers(1, 3), n_head=st.integers(1, 3))
def test_the_expected_tensors_are_what_save_pretrained_writes(n_layer, n_head):
    config = GPTConfig(vocab_size=7, block_size=5, n_layer=n_layer, n_head=n_head,
                       n_embd=2 * n_head)
    written = to_hf_state_dict(GPT(config).state_dict(), n_layer)
    expected = expected_tensors(config)
    assert expected == {k.removeprefix("transformer."): v.shape for k, v in written.items()}
    assert expected_tensors(GPTConfig(**{**config.to_dict(), "bias": False})) == {
        k: shape for k, shape in expected.items() if not k.endswith(".bias")}


# ----- tokenizer files ---------------------------------------------------------------------
def vocab_of(folder):
    return json.loads((folder / "vocab.json").read_text(encoding="utf-8"))


def set_vocab(folder, vocab):
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")


def renumbered(folder, text, token_id):
    vocab = vocab_of(folder)
    vocab[text] = token_id
    set_vocab(folder, vocab)


def drop_merge(folder, line):
    """merges.txt without its line `line` (1 = the #version header): a lost merge."""
    lines = (folder / "merges.txt").read_text(encoding="utf-8").split("\n")
    assert lines[1:6] == ["a t", "h e", "t he", "Ġ the", "Ġ c"]         # TEXT's merges
    (folder / "merges.txt").write_text("\n".join(lines[:line - 1] + lines[line:]),
                                       encoding="utf-8")


@pytest.mark.parametrize("write, file, words", [
    (lambda f: drop_merge(f, 3), "merges.txt",
     "line 3: 'he' is neither a byte nor made by any merge, so this merge can never apply"),
    (lambda f: drop_merge(f, 5), "vocab.json",
     "token 'Ġthe' (id 259) is neither a byte nor made by any merge of merges.txt"),
    (lambda f: (f / "vocab.json").write_text('{"a": 1,'), "vocab.json", "not valid JSON"),
    (lambda f: (f / "vocab.json").write_bytes(b'{"\xff": 1}'), "vocab.json", "not UTF-8 text"),
    (lambda f: (f / "vocab.json").write_text("[" * 100_000), "vocab.json", "nested too deeply"),
    (lambda f: renumbered(f, "Ġt", 0), "vocab.json", "share id 0"),
    (lambda f: renumbered(f, "<|endoftext|>", -1), "vocab.json", "has id -1"),
    (lambda f: renumbered(f, "<|endoftext|>", 9000), "vocab.json",
     "its 262 ids run up to 9000, so some are unused (first: 261)"),
    (lambda f: renumbered(f, "<|endoftext|>", 10 ** 30), "vocab.json", "first: 261"),
    (lambda f: renumbered(f, "<|endoftext|>", "261"), "vocab.json", "ids are integers"),
    (lambda f: renumbered(f, "", 262), "vocab.json", "token '' (id 262) is empty"),
    (lambda f: (f / "vocab.json").write_text(
        (f / "vocab.json").read_text(encoding="utf-8")[:-1] + ', "\\udc80": 262}',
        encoding="utf-8"), "vocab.json", "not valid Unicode"),
    (lambda f: (f / "merges.txt").write_text("#version: 0.2\nq ☃\n"), "merges.txt",
     "line 2: '☃' is not in vocab.json"),
    (lambda f: (f / "merges.txt").write_text("#version: 0.2\nĠ t h\n"), "merges.txt",
     "line 2: expected two tokens separated by one space"),
    (lambda f: (f / "merges.txt").write_bytes(b"#version: 0.2\n\xc3 t\n"), "merges.txt",
     "is not UTF-8 text"),
    (lambda f: (f / "split_pattern.json").write_text('{"split_pattern": "(("}'),
     "split_pattern.json", "is not a valid regex"),
    (lambda f: [(f / n).unlink() for n in ("vocab.json", "merges.txt")] and
     (f / "char.json").write_text('{"type": "char", "chars": ["\\udc80"]}'), "char.json",
     "expected {\"type\": \"char\""),
    (lambda f: [(f / n).unlink() for n in ("vocab.json", "merges.txt")] and
     (f / "char.json").write_text("[" * 100_000), "char.json", "not a JSON character"),
])
def test_a_bad_tokenizer_file_is_named(folder, write, file, words):
    write(folder)
    with pytest.raises(UserError) as error:
        tokenizer_io.load(folder)
    assert words in one_line(error, file)
    if file != "char.json":
        with pytest.raises(ValueError) as error:                  # the library's own error
            BPETokenizer.load(folder)
        one_line(error, file)


def test_byte_order_marks_are_ignored(folder):
    for name in ("vocab.json", "merges.txt"):
        text = (folder / name).read_text(encoding="utf-8")
        (folder / name).write_text("\ufeff" + text, encoding="utf-8")
    tok = tokenizer_io.load(folder)
    assert tok.decode(tok.encode(TEXT)) == TEXT and len(tok.merges) == 5


@FUZZ
@given(st.data())
def test_any_damage_to_the_tokenizer_files_loads_or_is_one_line(base, tmp_path, data):
    name = data.draw(st.sampled_from(["vocab.json", "merges.txt"]))
    raw = bytearray((base / name).read_bytes())
    start = data.draw(st.integers(0, len(raw)))
    end = data.draw(st.integers(start, min(len(raw), start + 40)))
    raw[start:end] = data.draw(st.binary(max_size=6) | st.text(
        "ĠatTe \n\"{}:,0123456789#", max_size=6).map(str.encode))   # bytes or near-valid text
    folder = tmp_path / "tok"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(base, folder)
    (folder / name).write_bytes(bytes(raw))
    try:
        tok = tokenizer_io.load(folder)
    except UserError as error:
        one_line(error, name)
        return
    assert tok.decode(tok.encode_ordinary(TEXT)) == TEXT          # still a whole tokenizer
    assert all(tok.decode_bytes([i]) for i in range(tok.vocab_size))     # no id without one


def test_a_tokenizer_larger_than_the_embedding_is_refused(folder):
    GPT(GPTConfig(vocab_size=200, **SHAPE)).save_pretrained(folder)
    with pytest.raises(UserError, match="the tokenizer has 262 tokens but the model only 200"):
        pretrained.read_base(folder)


# ----- the CLIs ----------------------------------------------------------------------------
def torn(f):
    (f / "model.safetensors").write_bytes((f / "model.safetensors").read_bytes()[:-9])


def gigabytes(f):
    raw = (f / "model.safetensors").read_bytes()
    (f / "model.safetensors").write_bytes((5 * 10 ** 9).to_bytes(8, "little") + raw[8:])


@pytest.mark.parametrize("command, write, words", [
    ("train", torn, "model.safetensors: tensor"),
    ("train", lambda f: renumbered(f, "<|endoftext|>", 300), "vocab.json: its 262 ids"),
    ("sample", gigabytes, "model.safetensors: the header claims 5,000,000,000 bytes"),
    ("sample", lambda f: set_config(f, n_head=3), "config.json is not a GPT-2 config"),
    ("finetune classify", lambda f: set_config(f, n_embd=16, n_head=2),
     "does not fit config.json: wrong shape"),
    ("finetune instruct", lambda f: (f / "merges.txt").write_text("#version: 0.2\nĠ ☃\n"),
     "merges.txt line 2: '☃' is not in vocab.json"),
])
def test_a_cli_given_a_bad_folder_says_one_line_and_writes_nothing(folder, tmp_path, command,
                                                                   write, words):
    write(folder)
    (tmp_path / "corpus.txt").write_text(TEXT * 4, encoding="utf-8")
    out = tmp_path / "out"
    args = [f"--init_from={folder}"] + ([] if command == "sample" else [f"--out_dir={out}"])
    if command == "train":
        args += [f"--data={tmp_path / 'corpus.txt'}", "--max_iters=1"]
    env = {**os.environ, "TINYGRAD_GPT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", f"tinygrad_gpt.{command.split()[0]}",
                           *command.split()[1:], *args], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: --init_from") and proc.stderr.count("\n") == 1, \
        proc.stderr
    assert words in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())
