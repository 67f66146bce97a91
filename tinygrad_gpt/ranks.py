"""What `python -m tinygrad_gpt.train` does differently on N ranks (mpiexec -n N ...).

One process (no launcher, or one rank) is today's run: world is an nn.distributed
SingleWorld, nothing MPI is imported, and every function here is the identity or today's
code. On N ranks (docs/parallel.md has the math):
- errors found before training are agreed on: every rank raises the same UserError and
  only rank 0 prints it (agreed_error); an error seen by one rank alone ends the job
  (world.abort) so that no rank waits forever;
- every rank starts from rank 0's weights, and the ranks check that they agree on the
  settings, the data and the code;
- batches come from the per_step stream: micro-batch j of iteration it is drawn from
  np.random.default_rng([seed, it, j]) and rank r takes j = r k ... r k + k - 1, so N ranks
  of k accumulation steps see what one process of N k steps sees (--batch_stream per_step);
- gradients are averaged by nn.GradientReducer (or nn.ZeroAdamW, --zero 1) and evaluation
  sums the ranks' totals: every number is the same on every rank;
- only rank 0 prints and writes (the others' stdout and stderr go to os.devnull), and a
  checkpoint it fails to write stops every rank.
"""
import contextlib
import hashlib
import math
import os
from pathlib import Path

import numpy as np

import nn
from tensor import backend

from . import __version__, data
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
    line on that rank and ends the whole job (MPI_Abort), as no other rank can know of it."""
    if world.size == 1:
        return command(argv, lock, world)
    error = None
    try:
        with quiet(not world.is_root):
            code = command(argv, lock, world)
    except UserError as e:
        error = e
    except SystemExit as e:
        if e.code not in (None, 0, 1):   # a second Ctrl-C on this rank: the job ends now
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


def check_config(config, world, explicit, saved):
    """The settings a run on world.size ranks needs (UserError otherwise); on N ranks the
    batch stream becomes per_step, and a resumed run's accumulation steps are set so that
    every step still sees the checkpoint's number of micro-batches."""
    n = world.size
    if saved:
        micro = saved.get("world_size", 1) * saved["train_config"]["gradient_accumulation_steps"]
        if micro % n:
            raise UserError(f"--resume: the checkpoint's steps are {micro} micro-batches, "
                            f"which {n} ranks cannot share; resume on a number of ranks that "
                            f"divides {micro}")
        if "gradient_accumulation_steps" in explicit and \
                config.gradient_accumulation_steps != micro // n:
            raise UserError(f"--resume: on {n} rank(s) --gradient_accumulation_steps must be "
                            f"{micro // n} (the checkpoint's steps are {micro} micro-batches)")
        config.gradient_accumulation_steps = micro // n
    if n == 1:
        return config
    if config.batch_stream != "per_step":
        if "batch_stream" in explicit or saved:
            raise UserError(f"{n} ranks need --batch_stream per_step (one stream shared by the "
                            "ranks); a run of sequential batches continues on one process")
        config.batch_stream = "per_step"
    if config.device != "cpu":
        raise UserError(f"--device {config.device} on {n} ranks needs NCCL, not done yet: use "
                        "--device cpu under mpiexec (docs/parallel.md)")
    if config.parallel == "on" and world.local_size > 1:
        raise UserError(f"--parallel on with {world.local_size} ranks on one machine: the ranks "
                        "already share its cores; use --parallel off (or auto)")
    return config


def code_version():
    """tinygrad_gpt's version and a sha256 of every .py file of its packages."""
    root, digest = Path(__file__).resolve().parent.parent, hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:16]}"


def start(world, model, config, dataset):
    """Every rank <- rank 0's weights; the ranks agree on settings, data and code, or every
    rank raises agreed_error naming what differs. One rank: nothing."""
    if world.size == 1:
        return
    from dataclasses import asdict
    start_agreed(world, model, asdict(config), dataset.meta.get("source_sha256", ""))


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


def apply_lora(model, lora):
    """nn.apply_lora(model, **lora), a bad target one UserError."""
    try:
        nn.apply_lora(model, **lora)
    except ValueError as e:
        raise UserError(f"--lora_targets: {e}") from None


def sync_of(world, model, optimizer, config):
    """What reduces the gradients: the ZeroAdamW itself (--zero 1), a GradientReducer on N
    ranks, or None (one process: today's step)."""
    if config.zero:
        return optimizer
    if world.size == 1:
        return None
    return nn.GradientReducer(model.parameters(), world, bucket_mb=config.bucket_mb)


def optimizer_of(model, config, world):
    groups = nn.decay_groups(model.parameters(), config.weight_decay)
    betas = (config.beta1, config.beta2)
    if config.zero:
        return nn.ZeroAdamW(groups, lr=config.learning_rate, betas=betas, world=world)
    return nn.AdamW(groups, lr=config.learning_rate, betas=betas)


def train_batch(dataset, config, world, it, rng):
    """This rank's k micro-batches of iteration it, (k*B, T) each of x and y: from rng
    (sequential), or micro-batches r k ... r k + k - 1 of the per_step stream."""
    k, B, T = config.gradient_accumulation_steps, config.batch_size, config.block_size
    if config.batch_stream == "sequential":
        return data.get_batch(dataset.train, T, B * k, rng)
    if world.size > 1:         # dropout's masks: this rank's own, drawn from (seed, it, rank)
        backend.manual_seed(np.random.SeedSequence([config.seed, it, world.rank])
                            .generate_state(1)[0])
    parts = [data.get_batch(dataset.train, T, B, np.random.default_rng([config.seed, it, j]))
             for j in range(world.rank * k, world.rank * k + k)]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def overfit_batch(dataset, config, world):
    """--overfit_batch: the one batch of all ranks (N k B windows), this rank's part."""
    kB = config.batch_size * config.gradient_accumulation_steps
    x, y = data.get_batch(dataset.train, config.block_size, kB * world.size,
                          np.random.default_rng(config.seed))
    return x[world.rank * kB:(world.rank + 1) * kB], y[world.rank * kB:(world.rank + 1) * kB]


def evaluate(model, dataset, config, it, world=None):
    """Mean loss over eval_iters batches of each split, with batches fixed by (seed, it);
    on N ranks rank r computes the batches i = r mod N and the totals are summed."""
    from tensor import no_grad
    world = nn.distributed.world() if world is None else world
    losses = {}
    model.eval()
    with no_grad():
        for k, split in enumerate(("train", "val")):
            rng = np.random.default_rng([config.seed, it, k])
            total = 0.0
            for i in range(config.eval_iters):
                x, y = data.get_batch(getattr(dataset, split), config.block_size,
                                      config.batch_size, rng)
                if i % world.size == world.rank:
                    total += model(x, y)[1].item()
            losses[split] = world.sum(total) / config.eval_iters
    model.train()
    return losses


def step(model, optimizer, forward_backward, x, y, lr, config, sync=None, stop=False):
    """One optimizer step on this rank's batch x, y (k*B, T), k micro-batches whose
    gradients add up, then sync.reduce (the ranks' average; None: one process). Returns
    (the mean loss over every rank's micro-batches, whether any rank asked to stop); a
    loss or norm that is not finite is returned without a step. forward_backward(x, y,
    scale) runs forward and backward of scale * loss on one micro-batch and returns its
    loss: nn.forward_backward, or nn.DataParallel's (the same sums, two halves at once)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    k = config.gradient_accumulation_steps
    optimizer.zero_grad()
    loss = 0.0
    for xm, ym in zip(np.split(x, k), np.split(y, k)):                  # (B, T) each
        loss += forward_backward(xm, ym, 1.0 / k) / k     # gradients add up over the k
    if sync is not None:                  # before the check: a NaN on one rank stops all
        loss, _, stop = sync.reduce(loss, stop=stop)
    if not math.isfinite(loss):
        return loss, stop
    if config.grad_clip:
        norm = optimizer.clip_grad_norm(config.grad_clip) if config.zero else \
            nn.clip_grad_norm(model.parameters(), config.grad_clip)
        if not math.isfinite(norm):
            return norm, stop
    optimizer.step()
    return loss, stop


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
