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
What keeps the ranks together outside the arithmetic (errors agreed, the job run under the
watchdog, rank 0 alone writing, the start-up agreement, the GPU of each rank) is in
tinygrad_gpt/agreement.py; its names are importable from here as well (ranks.agreed ...).
"""
import math
import time

import numpy as np

import nn
from tensor import backend

from . import data
from .agreement import (NoMetrics, agreed, agreed_error, code_version,  # noqa: F401 (ranks.X)
                        on_root, quiet, run, start_agreed, world_on)
from .cli import UserError


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
    if config.parallel == "on" and world.local_size > 1:
        raise UserError(f"--parallel on with {world.local_size} ranks on one machine: the ranks "
                        "already share its cores; use --parallel off (or auto)")
    return config


def start(world, model, config, dataset):
    """Every rank <- rank 0's weights; the ranks agree on settings, data and code, or every
    rank raises agreed_error naming what differs. One rank: nothing."""
    if world.size == 1:
        return
    from dataclasses import asdict
    start_agreed(world, model, asdict(config), dataset.meta.get("source_sha256", ""))


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
    (the mean loss over every rank's micro-batches, whether any rank asked to stop, the
    seconds sync.reduce took: what the step waited for the other ranks); a loss or norm
    that is not finite is returned without a step. forward_backward(x, y, scale,
    leaf_done) runs forward and backward of scale * loss on one micro-batch and returns its
    loss: nn.forward_backward, or nn.DataParallel's (the same sums, two halves at once)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    k = config.gradient_accumulation_steps
    optimizer.zero_grad()
    loss = 0.0
    for j, (xm, ym) in enumerate(zip(np.split(x, k), np.split(y, k))):  # (B, T) each
        hook = sync.start() if j == k - 1 and config.overlap and hasattr(sync, "start") \
            else None                     # the last backward sends buckets as it finishes
        loss += forward_backward(xm, ym, 1.0 / k, hook) / k   # gradients add up over the k
    waited = time.perf_counter()
    if sync is not None:                  # before the check: a NaN on one rank stops all
        loss, _, stop = sync.reduce(loss, stop=stop)
    waited = time.perf_counter() - waited
    if not math.isfinite(loss):
        return loss, stop, waited
    if config.grad_clip:
        norm = optimizer.clip_grad_norm(config.grad_clip) if config.zero else \
            nn.clip_grad_norm(model.parameters(), config.grad_clip)
        if not math.isfinite(norm):
            return norm, stop, waited
    optimizer.step()
    return loss, stop, waited
