"""python -m tinygrad_gpt.tokenize: train -> encode -> decode -> audit, and one-line errors."""
import io
import subprocess
import sys
from pathlib import Path

import pytest

from tinygrad_gpt.tokenize import main
from tokenizer import BPETokenizer

ROOT = Path(__file__).resolve().parents[1]
TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        "First Citizen:\nYou are all resolved rather to die than to famish?\n") * 30


def run(argv, stdin=b"", monkeypatch=None):
    """main(argv) in this process with stdin bytes; -> (exit status)."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"))
    return main(argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    (folder / "input.txt").write_text(TEXT, encoding="utf-8")
    assert main(["train", "--data", str(folder / "input.txt"), "--vocab_size", "300",
                 "--out", str(folder / "tok")]) == 0
    return folder


def test_train_writes_the_folder(trained):
    assert {p.name for p in (trained / "tok").iterdir()} == \
        {"vocab.json", "merges.txt", "split_pattern.json"}


def test_encode_decode_round_trip(trained, monkeypatch, capfdbinary):
    text = "Speak, citizens! 😀 <|endoftext|>\r\n".encode()
    assert run(["encode", "--tokenizer", str(trained / "tok"), "--allowed_special", "all"],
               text, monkeypatch) == 0
    ids = capfdbinary.readouterr().out.decode()
    tok = BPETokenizer.load(trained / "tok")
    assert [int(i) for i in ids.split()] == tok.encode(text.decode(), allowed_special="all")
    assert str(tok.special_tokens["<|endoftext|>"]) in ids.split()
    assert run(["decode", "--tokenizer", str(trained / "tok")], ids.encode(), monkeypatch) == 0
    assert capfdbinary.readouterr().out == text


def test_audit_shows_segmentation_compression_and_longest(trained, capsys):
    assert main(["audit", "--tokenizer", str(trained / "tok"), "--data",
                 str(trained / "input.txt"), "--longest", "5"]) == 0
    out = capsys.readouterr().out
    assert "training text" in out and "held-out text" in out and "bytes/token" in out
    for kind in ("prose", "code", "numbers", "names", "rare words"):
        assert f"  {kind} (" in out
    assert "␣Citizen" in out or "Citizen" in out
    assert "|" in out.split("Segmentation")[1]
    longest = out.split("Longest learned tokens")[1].strip().splitlines()[1:]
    assert len(longest) == 5
    assert main(["audit", "--tokenizer", str(trained / "tok"), "--text", "Speak, speak."]) == 0
    assert "Speak|,|␣speak|." in capsys.readouterr().out


@pytest.mark.parametrize("argv, stdin, message", [
    (["train", "--data", "{d}/missing.txt", "--vocab_size", "300", "--out", "{d}/o"], b"",
     "missing.txt: no such file"),
    (["train", "--data", "{d}/latin1.txt", "--vocab_size", "300", "--out", "{d}/o"], b"",
     "latin1.txt is not UTF-8 text (bad byte at offset 3)"),
    (["train", "--data", "{d}/input.txt", "--vocab_size", "200", "--out", "{d}/o"], b"",
     "vocab_size 200 is too small"),
    (["train", "--data", "{d}/input.txt", "--vocab_size", "300", "--out", "{d}/o",
      "--val_fraction", "1.5"], b"", "--val_fraction must be in [0, 1)"),
    (["train", "--data", "{d}/input.txt", "--vocab_size", "300", "--out", "{d}/input.txt/o"],
     b"", "--out {d}/input.txt/o: cannot write it"),
    (["encode", "--tokenizer", "{d}/nothing"], b"hi", "does not exist"),
    (["encode", "--tokenizer", "{d}/tok"], b"a<|endoftext|>", "special token '<|endoftext|>'"),
    (["encode", "--tokenizer", "{d}/tok"], b"\xff", "standard input is not UTF-8"),
    (["decode", "--tokenizer", "{d}/tok"], b"1 2 x3", "'x3' is not an integer"),
    (["decode", "--tokenizer", "{d}/tok"], b"1 99999", "unknown token id 99999"),
    (["audit", "--tokenizer", "{d}/broken"], b"", "vocab.json line 1 column"),
])
def test_bad_input_is_one_line_and_status_2(trained, monkeypatch, capsys, argv, stdin, message):
    (trained / "latin1.txt").write_bytes(b"caf\xe9")
    (trained / "broken").mkdir(exist_ok=True)
    (trained / "broken" / "vocab.json").write_text("{oops", encoding="utf-8")
    (trained / "broken" / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    argv = [a.replace("{d}", str(trained)) for a in argv]
    assert run(argv, stdin, monkeypatch) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message.replace("{d}", str(trained)) in err, err


def test_no_traceback_from_a_real_process(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tinygrad_gpt.tokenize", "train", "--data",
                             str(tmp_path / "nope.txt"), "--vocab_size", "300", "--out",
                             str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr


def test_help_documents_every_command(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("train", "encode", "decode", "audit"))
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert all(flag in out for flag in ("--data", "--vocab_size", "--out", "--pattern",
                                        "--val_fraction", "--special"))
