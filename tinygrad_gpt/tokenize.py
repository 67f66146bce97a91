"""python -m tinygrad_gpt.tokenize: train, use and inspect a byte-level BPE tokenizer.

    python -m tinygrad_gpt.tokenize train --data input.txt --vocab_size 1024 --out tok
    echo "Hello world" | python -m tinygrad_gpt.tokenize encode --tokenizer tok   # ids
    echo "72 101 108 108 111" | python -m tinygrad_gpt.tokenize decode --tokenizer tok  # "Hello"
    python -m tinygrad_gpt.tokenize audit --tokenizer tok --data input.txt

`train` learns merges on the first (1 - val_fraction) of the text; `audit` splits the same
way to report compression on the training part and on the held-out rest. Bad input (a
missing file, non-UTF-8 text, a too-small vocabulary, a corrupt tokenizer folder) prints one
line on stderr and exits with status 2.
"""
import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tokenizer import BPETokenizer, files
from tokenizer.audit import SAMPLES, audit
from tokenizer.patterns import NAMED_PATTERNS

from .cli import ArgumentParser, UserError, check_writable, given, report_user_errors


def read_text(path):
    """A UTF-8 text file's content, or UserError saying what is wrong and what to do."""
    path = Path(given("--data", path))
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the path of a UTF-8 text file")
    try:
        return files.read_text(path)
    except ValueError as e:          # "... is not UTF-8 text (bad byte at offset N)"
        raise UserError(f"{e}; convert it first, e.g. iconv -f latin1 -t utf-8") from None


def load(folder):
    """The BPE tokenizer saved in folder, or UserError saying what is missing or corrupt."""
    given("--tokenizer", folder)
    try:
        return BPETokenizer.load(folder)
    except (ValueError, FileNotFoundError) as e:
        raise UserError(str(e)) from None


def split_holdout(text, val_fraction):
    """(first 1 - val_fraction of the characters, the rest)."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"--val_fraction must be in [0, 1), got {val_fraction}")
    cut = round(len(text) * (1 - val_fraction))
    return text[:cut], text[cut:]


def read_stdin():
    try:
        return sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"standard input is not UTF-8 text (bad byte at offset {e.start})") \
            from None


def cmd_train(args):
    check_writable("--out", given("--out", args.out))
    train_text, _ = split_holdout(read_text(args.data), args.val_fraction)
    start = time.perf_counter()
    try:                             # too small a vocab_size, a special token's spelling
        tok = BPETokenizer.train(train_text, args.vocab_size, pattern=args.pattern,
                                 special_tokens=args.special)
        seconds = time.perf_counter() - start
        save(tok, Path(args.out))
    except ValueError as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"--out {args.out}: cannot write it ({e.strerror})") from None
    num_bytes = len(train_text.encode("utf-8"))
    tokens = len(tok.encode_ordinary(train_text))
    print(f"learned {len(tok.merges)} merges from {num_bytes:,} bytes of {args.data} in "
          f"{seconds:.2f} s: vocab_size {tok.vocab_size}, "
          f"{num_bytes / max(tokens, 1):.2f} bytes/token on the training text")
    if tok.vocab_size < args.vocab_size:
        print(f"note: the text has no pairs left to merge, so the vocabulary is "
              f"{tok.vocab_size}, not {args.vocab_size}")
    print(f"wrote {args.out}/vocab.json, merges.txt, split_pattern.json")


def save(tok, out):
    """tok.save(out), but written to a fresh folder first and moved in only when every file
    is there: a save that fails (a special token spelled like a byte) leaves out as it was."""
    with tempfile.TemporaryDirectory() as tmp:
        tok.save(tmp)
        out.mkdir(parents=True, exist_ok=True)
        for name in sorted(os.listdir(tmp)):
            shutil.move(os.path.join(tmp, name), out / name)


def cmd_encode(args):
    tok, text = load(args.tokenizer), read_stdin()
    try:                             # a special token's text where none is allowed
        ids = tok.encode(text, allowed_special=args.allowed_special)
    except ValueError as e:
        raise UserError(str(e)) from None
    print(" ".join(map(str, ids)))


def cmd_decode(args):
    tok = load(args.tokenizer)
    words = read_stdin().split()
    try:
        ids = [int(w) for w in words]
    except ValueError:
        bad = next(w for w in words if not w.lstrip("-").isdigit())
        raise UserError(f"standard input must be token ids separated by whitespace; "
                        f"{bad!r} is not an integer") from None
    try:
        data = tok.decode_bytes(ids)                    # the exact bytes, even mid-character
    except ValueError as e:                             # an id the tokenizer does not have
        raise UserError(str(e)) from None
    sys.stdout.buffer.write(data)
    sys.stdout.flush()


def cmd_audit(args):
    if args.longest < 0:
        raise UserError(f"--longest must be 0 or more, got {args.longest}")
    tok = load(args.tokenizer)
    train_text = heldout = None
    if args.data:
        train_text, heldout = split_holdout(read_text(args.data), args.val_fraction)
    samples = [("your text", text) for text in args.text] if args.text else SAMPLES
    print("\n".join(audit(tok, train_text, heldout, samples, longest=args.longest)))


def build_parser():
    parser = ArgumentParser(
        prog="python -m tinygrad_gpt.tokenize",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train, use and inspect a byte-level BPE tokenizer (GPT-2 style). A "
                    "tokenizer folder holds\nvocab.json + merges.txt, Hugging Face's GPT-2 "
                    "layout; OpenAI's encoder.json + vocab.bpe load too.\n"
                    "COMMAND --help describes each command.",
        epilog="examples:\n" + __doc__.split("\n\n")[1] + "\n\nbad input prints one line "
               "on stderr and exits with status 2.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="learn merges from a text file",
                                description="Learn BPE merges from a UTF-8 text file and save "
                                            "vocab.json, merges.txt, split_pattern.json.")
    train.add_argument("--data", required=True, metavar="FILE", help="UTF-8 training text")
    train.add_argument("--vocab_size", required=True, type=int, metavar="N",
                       help="256 byte tokens + merges + special tokens (at least 256 + "
                            "the number of special tokens)")
    train.add_argument("--out", required=True, metavar="DIR", help="folder to write (created)")
    train.add_argument("--pattern", default="gpt2", choices=sorted(NAMED_PATTERNS),
                       help="pre-tokenization regex: GPT-2's or GPT-4's (default gpt2)")
    train.add_argument("--val_fraction", type=float, default=0.1, metavar="F",
                       help="hold out the last F of the text for `audit` (default 0.1; 0 "
                            "trains on all of it)")
    train.add_argument("--special", nargs="*", default=["<|endoftext|>"], metavar="TOKEN",
                       help="special tokens, given the last ids (default <|endoftext|>; "
                            "--special with no value for none)")
    train.set_defaults(run=cmd_train)

    encode = commands.add_parser("encode", help="text on stdin -> ids on stdout",
                                 description="Read UTF-8 text on stdin, print token ids "
                                             "separated by spaces.")
    encode.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder")
    encode.add_argument("--allowed_special", default="none_raise",
                        choices=["none_raise", "all", "none"],
                        help="special tokens' text in the input: none_raise (default) is an "
                             "error, all encodes each as its id, none as ordinary text")
    encode.set_defaults(run=cmd_encode)

    decode = commands.add_parser("decode", help="ids on stdin -> text on stdout",
                                 description="Read whitespace-separated token ids on stdin, "
                                             "write the bytes they stand for on stdout.")
    decode.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder")
    decode.set_defaults(run=cmd_decode)

    inspect = commands.add_parser(
        "audit", help="show segmentations, compression and the longest tokens",
        description="Show how the tokenizer cuts prose, code, numbers, names, rare words and "
                    "non-English text, its compression (bytes per token) on the training text "
                    "and the held-out rest, and its longest learned tokens.")
    inspect.add_argument("--tokenizer", required=True, metavar="DIR", help="tokenizer folder")
    inspect.add_argument("--data", metavar="FILE",
                         help="the training text file, to report compression on it")
    inspect.add_argument("--val_fraction", type=float, default=0.1, metavar="F",
                         help="the held-out fraction used by train (default 0.1)")
    inspect.add_argument("--text", action="append", metavar="STR",
                         help="segment this text instead of the built-in samples (repeatable)")
    inspect.add_argument("--longest", type=int, default=20, metavar="N",
                         help="how many of the longest tokens to list (default 20)")
    inspect.set_defaults(run=cmd_audit)
    return parser


def run(argv):
    args = build_parser().parse_args(argv)
    args.run(args)
    return 0


def main(argv=None):
    return report_user_errors(run, argv)


if __name__ == "__main__":
    from .cli import run as run_cli
    run_cli(main)
