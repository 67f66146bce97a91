"""What every command-line tool does with bad input and on the way out."""
import os
import sys

from .settings import UserError


def report_user_errors(fn, *args):
    """fn(*args), but a UserError becomes its one-line message on stderr and exit code 2."""
    try:
        return fn(*args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


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
