"""Bad input to the CLIs: one clear line on stderr naming the problem and the fix, exit
code 2, no traceback, nothing half-done left behind."""
import ast
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tensor import cuda_available
from tinygrad_gpt import cli, sample, settings, train

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("tensor", "nn", "gpt", "tokenizer", "tinygrad_gpt")

SMALL = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=2",
         "--max_iters=2", "--eval_iters=1", "--sample_tokens=0"]


@pytest.fixture
def text_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "ok.txt"
    path.write_text("To be, or not to be, that is the question.\n" * 40, encoding="utf-8")
    return path


def fails_cleanly(main, args, capsys, *needles):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    return err


def test_missing_data(tmp_path, capsys):
    fails_cleanly(train.main, [f"--data={tmp_path / 'nope.txt'}", *SMALL], capsys,
                  "nope.txt", "no such file")


def test_empty_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "empty.txt").write_text("")
    fails_cleanly(train.main, [f"--data={tmp_path / 'empty.txt'}", *SMALL], capsys, "empty")


def test_folder_without_txt_files(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    fails_cleanly(train.main, [f"--data={tmp_path / 'data'}", *SMALL], capsys, ".txt")


def test_non_utf8_data(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "latin1.txt").write_bytes("café au lait\n".encode("latin-1") * 50)
    fails_cleanly(train.main, [f"--data={tmp_path / 'latin1.txt'}", *SMALL], capsys,
                  "not UTF-8", "byte 3")


def test_corpus_shorter_than_a_block(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "short.txt").write_text("just a few words here, far too short to split.\n")
    fails_cleanly(train.main, [f"--data={tmp_path / 'short.txt'}", *SMALL], capsys,
                  "block_size + 1", "val")


@pytest.mark.parametrize("args,needles", [
    (["--n_embd=30", "--n_head=4"], ["n_embd", "divisible", "n_head"]),
    (["--n_layer=0"], ["--n_layer", "positive"]),
    (["--batch_size=-3"], ["--batch_size", "positive"]),
    (["--learning_rate=-1"], ["--learning_rate"]),
    (["--dropout=1.5"], ["--dropout"]),
    (["--lerning_rate=1e-3"], ["--lerning_rate", "did you mean --learning_rate"]),
    (["--max_iters=lots"], ["--max_iters", "int"]),
    (["--preset=huge"], ["preset", "shakespeare-char-cpu"]),
    (["--tokenizer=words"], ["--tokenizer", "char", "bpe"]),
])
def test_invalid_settings(text_file, args, needles, capsys):
    fails_cleanly(train.main, [f"--data={text_file}", *SMALL, *args], capsys, *needles)


def test_unknown_key_in_a_toml_config(text_file, tmp_path, capsys):
    (tmp_path / "c.toml").write_text("max_iter = 3\n")
    fails_cleanly(train.main, [f"--data={text_file}", f"--config={tmp_path / 'c.toml'}"],
                  capsys, "max_iter", "did you mean --max_iters")


def test_a_folder_as_the_toml_config(text_file, tmp_path, capsys):
    fails_cleanly(train.main, [f"--data={text_file}", f"--config={tmp_path}"], capsys,
                  f"--config {tmp_path} cannot be read", "give a TOML file")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere; permissions not testable")
def test_unwritable_out_dir(text_file, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    fails_cleanly(train.main, [f"--data={text_file}", f"--out_dir={locked / 'run'}", *SMALL],
                  capsys, "cannot write it")


def test_out_dir_that_is_a_file(text_file, tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    fails_cleanly(train.main, [f"--data={text_file}", f"--out_dir={tmp_path / 'afile'}",
                               *SMALL], capsys, "--out_dir", "cannot write it")


def test_resume_without_checkpoint(text_file, tmp_path, capsys):
    fails_cleanly(train.main, ["--resume", f"--out_dir={tmp_path / 'none'}"], capsys,
                  "no checkpoint")


def test_resume_from_corrupt_checkpoint(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([f"--data={text_file}", f"--out_dir={out}", *SMALL]) == 0
    capsys.readouterr()
    weights = next(out.glob("ckpt-*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10] + b"0123456789")
    fails_cleanly(train.main, ["--resume", f"--out_dir={out}", "--max_iters=4"], capsys,
                  "corrupt")


def test_resume_with_a_different_architecture(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([f"--data={text_file}", f"--out_dir={out}", *SMALL]) == 0
    capsys.readouterr()
    fails_cleanly(train.main, ["--resume", f"--out_dir={out}", "--n_layer=3"], capsys,
                  "--n_layer", "differ")


def test_parallel_on_a_gpu_or_unknown(text_file, capsys):
    fails_cleanly(train.main, [f"--data={text_file}", "--device=cuda", "--parallel=on",
                               *SMALL], capsys, "--parallel", "off")
    fails_cleanly(train.main, [f"--data={text_file}", "--parallel=yes", *SMALL], capsys,
                  "--parallel", "auto, on, off")


@pytest.mark.skipif(cuda_available(), reason="a GPU is present; the error path needs none")
def test_cuda_without_cupy_or_gpu(text_file, capsys):
    fails_cleanly(train.main, [f"--data={text_file}", "--device=cuda", *SMALL], capsys,
                  "cuda", "cpu")


def test_sample_errors(tmp_path, capsys):
    fails_cleanly(sample.main, ["--out_dir", str(tmp_path / "nothing")], capsys, "no checkpoint")
    fails_cleanly(sample.main, ["--init_from", str(tmp_path)], capsys, "config.json")


def test_sample_unknown_characters_are_named(text_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([f"--data={text_file}", f"--out_dir={out}", *SMALL]) == 0
    capsys.readouterr()
    fails_cleanly(sample.main, ["--out_dir", str(out), "--start", "Zebra ☃"], capsys, "Z", "☃")


def test_errors_from_a_real_process_have_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinygrad_gpt.train", "--n_embd=30",
                             "--n_head=4"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: ") and "Traceback" not in result.stderr


def test_a_closed_pipe_ends_a_cli_quietly():
    """A CLI piped into `head` that keeps printing gets BrokenPipeError: cli.run ends it
    without a traceback (the output is far larger than the pipe's buffer)."""
    script = ("from tinygrad_gpt.cli import run\n"
              "def main():\n"
              "    for _ in range(100_000):\n"
              "        print('x' * 100)\n"
              "    return 0\n"
              "run(main)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    child.stdout.readline()
    child.stdout.close()                      # the reader goes away after one line
    err = child.stderr.read().decode()
    assert child.wait() == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err


@pytest.mark.parametrize("module,args,needle", [
    ("gradcheck", ["--examples=0"], "--examples must be at least 1"),
    ("gradcheck", ["--op", "layer_norm", "--function", "just_a_name"], "module:function"),
    ("tokenize", ["decode", "--tokenizer", "/nonexistent/tok"], "does not exist"),
    ("attention_maps", ["--out_dir", "/nonexistent/run", "--text", "hi"], "no checkpoint"),
    ("trace", ["--text", ""], "--text is empty"),
])
def test_every_cli_reports_bad_input_the_same_way(module, args, needle, capsys):
    """main(argv) returns 2 after one line (no SystemExit), in every tool."""
    main = importlib.import_module(f"tinygrad_gpt.{module}").main
    fails_cleanly(main, args, capsys, needle)


def test_one_user_error_type_in_the_whole_product():
    """UserError (tinygrad_gpt/cli.py) is the only exception class the product defines, and
    no module exits with code 2 by itself: report_user_errors does that, in one place."""
    assert settings.UserError is cli.UserError          # re-exported for older imports
    classes, exits = [], []
    for path in sorted(p for top in PRODUCT for p in (ROOT / top).rglob("*.py")):
        where = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef) and any(
                    ast.unparse(base).endswith(("Error", "Exception")) for base in node.bases):
                classes.append(f"{where}:{node.name}")
            if isinstance(node, ast.Call) and [ast.unparse(a) for a in node.args] == ["2"] \
                    and ast.unparse(node.func) in ("sys.exit", "os._exit", "exit", "SystemExit"):
                exits.append(f"{where}:{node.lineno}")
    assert classes == ["tinygrad_gpt/cli.py:UserError"]
    assert exits == []
