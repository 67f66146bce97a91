"""How N ranks stay together outside the arithmetic (tinygrad_gpt/ranks.py has that): the
job run with errors agreed and only rank 0 speaking (run; watchdog.py for a rank that dies
or raises), what only rank 0 writes (on_root, NoMetrics), the start-up agreement on weights,
settings, data and code (start_agreed), and the GPU each rank takes (world_on).

One process (no launcher, or one rank): every function here is the identity or plain code.
"""
import contextlib
import hashlib
import os
from pathlib import Path

import nn

from . import __version__, watchdog
from .cli import UserError, one_line, report_user_errors

PACKAGES = ("tensor", "nn", "gpt", "tokenizer", "tinygrad_gpt")   # the code that must agree


def agreed_error(message):
    """A UserError that every rank raises at the same point (so all can exit together)."""
    error = UserError(message)
    error.agreed = True
    return error


def agreed(world, fn, *args):
    """fn(*args) on every rank; when it raises a UserError on any rank, every rank raises
    agreed_error with the message of the lowest such rank. One rank: fn(*args) itself."""
    if world.size == 1:
        return fn(*args)
    try:
        result, problem = fn(*args), None
    except UserError as e:
        result, problem = None, one_line(e)
    problems = [p for p in world.allgather(problem) if p is not None]
    if problems:
        raise agreed_error(problems[0])
    return result


def run(world, command, argv, lock):
    """command(argv, lock, world); on N ranks only rank 0 speaks: an agreed error is one line
    there (report_user_errors: exit 2 on every rank), a UserError on one rank alone is one
    line on that rank and ends the whole job (MPI_Abort), as no other rank can know of it.
    A rank that raises anything else, or dies, ends the job within a second with one line
    on rank 0 naming the rank and why (watchdog.py); the last checkpoint stays as it was."""
    if world.size == 1:
        return command(argv, lock, world)
    dog = watchdog.for_run(world, lock)             # collective: every rank
    try:
        code = run_agreed(world, command, argv, lock, dog)
    except SystemExit:        # a stop every rank decided alike (a NaN, a failed save)
        dog.bye()
        raise
    except BaseException as e:          # not the user's error: a bug, Ctrl-C before the loop
        dog.fail(e, 130 if isinstance(e, KeyboardInterrupt) else 1)   # no return when on
        raise
    dog.bye()
    return code


def run_agreed(world, command, argv, lock, dog):
    """run()'s work on N ranks, but for what the watchdog does."""
    error = None
    try:
        with quiet(not world.is_root):
            code = command(argv, lock, world)
    except UserError as e:
        error = e
    except SystemExit as e:
        if e.code not in (None, 0, 1):   # a second Ctrl-C on this rank: the job ends now
            dog.quit(e.code)
            world.abort(e.code)
        world.barrier()          # stop() (exit 1) is decided on every rank alike (the losses
        raise SystemExit(e.code) from None  # and a save's outcome agree): rank 0 said why
    if error is not None:
        alone = not getattr(error, "agreed", False)
        if alone:
            error = UserError(f"rank {world.rank} of {world.size}: {one_line(error)}")
        with quiet(not alone and not world.is_root):
            code = report_user_errors(raise_, error)
        if alone:
            dog.quit(code)
            world.abort(code)
    world.barrier()               # rank 0 has said it all before any rank exits
    return code


def raise_(error):
    raise error


@contextlib.contextmanager
def quiet(silent):
    """stdout and stderr to os.devnull while silent (a rank other than 0)."""
    if not silent:
        yield
        return
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
            contextlib.redirect_stderr(null):
        yield


def world_on(world, device):
    """The world for a model on device: world itself on the CPU; on 'cuda' this rank's GPU
    made current (GPU local_rank, an agreed UserError when there is none) and, across ranks,
    an NCCL world (nn/nccl.py: the gradients travel GPU to GPU)."""
    if device == "cpu":
        return world
    agreed(world, use_gpu, world)
    return world if world.size == 1 else nn.nccl.NcclWorld(world)   # collective


def use_gpu(world):
    try:
        nn.nccl.use_device(world)
        if world.size > 1:
            nn.nccl.cuda_modules()                 # NCCL: checked before any rank joins
    except (RuntimeError, ValueError) as e:
        raise UserError(f"--device cuda: {e}") from None


def code_version():
    """tinygrad_gpt's version and a sha256 of every .py file of its packages."""
    root, digest = Path(__file__).resolve().parent.parent, hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:16]}"


def start_agreed(world, model, settings, data_digest):
    """start()'s work for any command (train, finetune): every rank <- rank 0's weights,
    then agreement on the settings dict, the data's digest and the code version."""
    if world.size == 1:
        return
    world.broadcast_parameters(model.parameters())
    for what, value in (("settings", settings), ("data", data_digest),
                        ("code version", code_version())):
        try:
            world.check_agree(what, value)
        except ValueError as e:
            raise agreed_error(str(e)) from None


def on_root(world, fn):
    """fn() on rank 0 only; a SystemExit it raises (a failed save: stop()) ends every rank
    with the same code."""
    if world.size == 1:
        return fn()
    code = None
    if world.is_root:
        try:
            fn()
        except SystemExit as e:
            code = e.code if e.code is not None else 1
    code = world.broadcast_object(code)
    if code is not None:
        raise SystemExit(code)


class NoMetrics:
    """report.Metrics for the ranks that write nothing."""

    def write(self, **record):
        pass

    def read(self):
        return []
