"""What every command-line tool does on the way out."""
import os
import sys


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
