"""What every command-line tool does with bad input and on the way out.

Bad input from the user (a missing file, a setting out of range) is a UserError, whichever
module finds it; report_user_errors turns it into one line on stderr and exit code 2.
Everything else is a bug and keeps its traceback.
"""
import os
import sys


class UserError(Exception):
    """Bad input from the user: the CLIs print its message on one line and exit with code 2."""


def report_user_errors(fn, *args):
    """fn(*args), but a UserError becomes its one-line message on stderr and exit code 2."""
    try:
        return fn(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


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
