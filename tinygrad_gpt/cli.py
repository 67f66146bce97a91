"""What every command-line tool does with bad input and on the way out.

Bad input from the user (a missing file, a setting out of range, a command line argparse
cannot parse) is a UserError, whichever module finds it; report_user_errors turns it into
one line on stderr and exit code 2. Everything else is a bug and keeps its traceback.
"""
import argparse
import os
import sys
from pathlib import Path

# What str.splitlines() splits on: a message holding one (a path with a newline) would print
# as several lines, so one_line shows them escaped, as repr() does.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


class UserError(Exception):
    """Bad input from the user: the CLIs print its message on one line and exit with code 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a command line it cannot parse is a UserError (one line: the
    problem and where the help is), not argparse's usage block and SystemExit(2)."""

    def error(self, message):
        raise UserError(f"{message} (see {self.prog} --help)")


def one_line(text):
    """text with its line breaks escaped: 'a\\nb' for 'a\nb'."""
    return "".join(repr(c)[1:-1] if c in LINE_BREAKS else c for c in str(text))


def report_user_errors(fn, *args):
    """fn(*args), but a UserError becomes its one-line message on stderr and exit code 2."""
    try:
        return fn(*args)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2


def given(flag, value):
    """value, unless it is an empty string (None passes): an empty path would silently mean
    the current folder."""
    if value is not None and not str(value).strip():
        raise UserError(f"{flag} is empty: give a path")
    return value


def check_writable(flag, path):
    """A folder can be made at path (or is there) and written, without creating anything:
    the nearest folder above it that exists must be writable, and nothing on the way a file."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{flag} {path}: cannot write it (a file, not a folder); choose "
                        "another path")
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: cannot write it ({folder} is not a writable "
                        "folder); choose another path")


def check_device(name):
    """backend.check_device(name) ("cpu" or "cuda"), but an unknown name, or CUDA without
    CuPy or a GPU, is a UserError."""
    from tensor import backend        # here, so that the tokenizer CLI does not load NumPy
    try:
        return backend.check_device(name)
    except (ValueError, RuntimeError) as e:
        raise UserError(str(e)) from None


def run(main):
    """sys.exit(main()), but quietly when the reader of stdout goes away early (| head).

    Python would otherwise print a BrokenPipeError traceback while flushing at exit; as its
    documentation suggests, stdout is pointed at /dev/null so the flush succeeds.
    """
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 1
    sys.exit(code)
