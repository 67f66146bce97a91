"""What keeps a run folder safe while a training loop runs: signals, faults, a second run.

Interrupt: the first Ctrl-C (SIGINT) or SIGTERM (what `kill`, a job scheduler or a container
stop sends) asks the loop to stop after the current step; the loop then saves one checkpoint
and exits with 128 + the signal's number: 130 for SIGINT, 143 for SIGTERM. A second signal
stops the process at once (exit 128 + its number) without a checkpoint; the previous one
stays valid (checkpoint.py never writes over the file ckpt.json names).

stop() ends a run that cannot go on (a NaN loss, a checkpoint that cannot be written) with
one line saying which checkpoint is kept, and exit code 1. A failed save stops the run even
when it was a periodic one: training on when nothing can be saved would spend the time of
a run whose result is then lost.

RunLock: out_dir/run.lock names the run that owns the folder (pid, host, start time), and
the owner holds an flock on it, which the kernel lets go of when the process ends, however
it ends (kill -9 included). A second run on the folder is refused with one line while the
flock is held; a lock file whose flock nobody holds (its run is gone) is taken over with a
note. On a network file system mounted without working locks (NFS `nolock`) two hosts could
both take it: there the lock guards against a second run on the same host only. Commands
that only read a run (sample, classify) neither take nor read the lock.
"""
import contextlib
import errno
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import numpy as np

import tensor.fast

from . import checkpoint
from .cli import UserError, report_user_errors

try:
    import fcntl
except ImportError:            # no flock (Windows): a lock is stale when its pid has gone
    fcntl = None

NAMES = {signal.SIGINT: "Ctrl-C (SIGINT)", signal.SIGTERM: "SIGTERM"}
LOCK_FILE = "run.lock"


class Interrupt:
    """The first SIGINT or SIGTERM sets .requested (the loop saves and stops after its
    current step); a second one exits at once. restore() puts the old handlers back."""

    def __init__(self, out_dir=None, unit="iteration"):
        self.out_dir, self.unit = out_dir, unit
        self.requested, self.signum = False, None
        self.previous = {s: signal.signal(s, self.handle) for s in NAMES}

    def handle(self, signum, frame):
        if self.requested:
            self.restore()
            print(f"\nerror: a second {NAMES[signum]}: stopped at once, without a checkpoint; "
                  f"{kept(self.out_dir, self.unit)}", file=sys.stderr, flush=True)
            raise SystemExit(128 + signum)
        self.requested, self.signum = True, signum

    def stopped(self, it, out_dir, elsewhere=False):
        """Say (in one line) that the loop stopped and saved at `it`; the exit code.
        elsewhere: the signal came to another rank of the job, not to this process."""
        signum = self.signum or signal.SIGINT
        by = "a signal to another rank" if elsewhere else NAMES[signum]
        print(f"\ninterrupted by {by}: checkpoint saved at {self.unit} {it} in "
              f"{out_dir}; continue with --resume", flush=True)
        return 128 + signum

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)


def run_loop(command, argv):
    """What train's and finetune's main() share: command(argv, lock) with the CPU speed
    machinery on (tensor.fast), the folder's RunLock, bad input as one line (exit 2), and
    NumPy's overflow warnings off: a diverging step's overflow and NaNs end the run as a
    non-finite loss (stop(): one line, exit 1), the warnings would only repeat it. A Ctrl-C
    before the loop's Interrupt listens (while the data is prepared or the model built) is
    one line and exit 130; any checkpoint already in --out_dir is as it was."""
    with tensor.fast.on(), RunLock() as lock, np.errstate(over="ignore", invalid="ignore"):
        try:
            return report_user_errors(command, argv, lock)
        except KeyboardInterrupt:
            print("\nerror: interrupted (Ctrl-C) before a checkpoint could be saved; any "
                  "checkpoint already in --out_dir is intact", file=sys.stderr)
            return 128 + signal.SIGINT


def kept(out_dir, unit):
    last = checkpoint.last_iter(out_dir) if out_dir is not None else None
    return (f"the last good checkpoint ({unit} {last}) in {out_dir} is intact"
            if last is not None else "no checkpoint was written yet")


def stop(problem, out_dir, unit, advice):
    """One line on stderr (the problem, which checkpoint is kept, advice), then exit code 1."""
    print(f"error: {problem}; stopping. {kept(out_dir, unit)}. {advice}", file=sys.stderr,
          flush=True)
    raise SystemExit(1)


def save(out_dir, model, optimizer, info, unit, before_stop=None):
    """checkpoint.save, but a save that fails (OSError: a full disk...; checkpoint.save has
    removed what it wrote) stops the run: before_stop(), then one line and exit code 1."""
    try:
        checkpoint.save(out_dir, model, optimizer, info)
    except OSError as e:
        if before_stop:
            before_stop()
        full = e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))
        stop(f"{'the disk is full' if full else 'a checkpoint could not be written'} "
             f"({e.strerror}): the checkpoint of {unit} {info['iter']} was not saved in "
             f"{out_dir}", out_dir, unit, "Free some space (a save needs room for a second "
             "copy of the weights) and continue with --resume." if full else
             "Fix the folder, then continue with --resume.")


class RunLock:
    """`with RunLock() as lock:`, then lock.acquire(out_dir) before the run's first write;
    the lock is let go of when the with block ends, however it ends."""

    def __init__(self):
        self.path = self.fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def acquire(self, out_dir):
        """Own out_dir/run.lock (out_dir must exist), or raise UserError naming its owner."""
        path = Path(out_dir) / LOCK_FILE
        while True:
            fd = open_lock(path, os.O_RDWR | os.O_CREAT)
            try:
                refuse_if_owned(fd, out_dir)
                with contextlib.suppress(FileNotFoundError):
                    if os.stat(path).st_ino == os.fstat(fd).st_ino:
                        break         # else the owner let go and removed it meanwhile: again
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        try:
            if owner := owner_of(fd):
                print(f"note: {path} was left by pid {owner.get('pid')} on host "
                      f"{owner.get('host')} (started {owner.get('started')}), which no longer "
                      "holds it: taking it over")
            record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "started": time.strftime("%Y-%m-%d %H:%M:%S")}) + "\n"
            os.ftruncate(fd, 0)
            os.pwrite(fd, record.encode(), 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            raise
        self.path, self.fd = path, fd

    def release(self):
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            if os.stat(self.path).st_ino == os.fstat(self.fd).st_ino:
                os.unlink(self.path)            # still ours: remove it while holding it
        os.close(self.fd)                       # and with it the flock
        self.path = self.fd = None


def check_free(out_dir):
    """Refuse at once (UserError) when a live run holds out_dir/run.lock; writes nothing."""
    path = Path(out_dir) / LOCK_FILE
    if not path.is_file():
        return
    fd = open_lock(path, os.O_RDWR)
    try:
        refuse_if_owned(fd, out_dir)
    finally:
        os.close(fd)                            # and with it the flock, when it was taken


def open_lock(path, flags):
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        raise UserError(f"cannot open the lock file {path} ({e.strerror}): make the folder "
                        "writable or choose another --out_dir") from None


def refuse_if_owned(fd, out_dir):
    """Take the flock on fd, or raise UserError when a live run holds it. A few tries, so
    that another starting run's check_free (holding it for microseconds) is not an owner.
    Without flock: a lock is live when its pid runs here, or it is from another host."""
    if fcntl is None:
        owner = owner_of(fd)
        if owner and (owner.get("host") != socket.gethostname() or pid_alive(owner.get("pid"))):
            raise in_use(out_dir, owner)
        return
    for k in range(10):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            time.sleep(0.01 * (k + 1))
        except OSError as e:            # a file system without locks
            raise UserError(f"--out_dir {out_dir} cannot be locked ({e.strerror}): use a "
                            "local folder") from None
    else:
        raise in_use(out_dir, owner_of(fd))


def owner_of(fd):
    """The lock file's record (pid, host, started), or None when it is empty or torn."""
    try:
        owner = json.loads(os.pread(fd, 4096, 0).decode())
        return owner if isinstance(owner, dict) else None
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, TypeError, ValueError):
        return False
    except PermissionError:
        return True
    return True


def in_use(out_dir, owner):
    owner = owner or {}
    return UserError(f"--out_dir {out_dir} is in use by another run (pid {owner.get('pid', '?')}"
                     f" on host {owner.get('host', '?')}, started {owner.get('started', '?')}): "
                     "wait for it, stop it, or choose another --out_dir")
