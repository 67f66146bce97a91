"""GradientReducer: every rank's gradients replaced by their average over the ranks.

Rank r runs forward and backward on its own micro-batch, n_r counted targets (positions
whose target is not ignore_index), mean loss loss_r = (1/n_r) sum_{i in r} l_i and
gradient g_r = d loss_r / dw. The whole batch over all ranks, n = sum_r n_r targets, has

    L     = (1/n) sum_r sum_{i in r} l_i  = sum_r (n_r / n) loss_r
    dL/dw = sum_r n_r g_r / n                                       (token-weighted)

and when every rank counts the same number of targets (training: B*T each) n_r = n/N:

    dL/dw = (1/N) sum_r g_r                                         (the mean)

which is what one process computes by gradient accumulation over the N micro-batches
(scale 1/N each, tinygrad_gpt/train.py's step). So each rank sends w_r g_r, w_r = n_r when
it passes count=n_r and 1 when it passes none; the allreduce sums; every rank divides by
sum_r w_r, which is reduced alongside (with sum_r w_r loss_r: the batch's loss L). A
parameter the loss did not reach on a rank (.grad None) sends zeros; one no rank reached
keeps .grad None, as a single process would (AdamW then skips it).

Afterwards every rank holds the same gradients, so anything computed from them is the same
everywhere: clip_grad_norm's global norm is the norm of the averaged gradient.

Speed: the gradients travel in buckets of about bucket_mb MB (PyTorch DDP's 25 by default),
each packed into one contiguous buffer, in reverse parameter order (the order in which
backward finishes them) and the same on every rank; all buckets are started at once
(non-blocking Iallreduce), then waited for. Not done yet: starting a bucket while backward
is still running (the engine has no per-parameter hook).
"""
import math
from collections import namedtuple

import numpy as np

from tensor import backend

from . import distributed
from .optim import clip_grad_norm

# What reduce() returns: the batch's loss L over all ranks, the total weight sum_r w_r
# (counted targets, or the number of ranks), and whether some rank asked to stop.
Reduced = namedtuple("Reduced", "loss count stop")


def plan_buckets(sizes, itemsize, bucket_mb):
    """Parameter indices in buckets: last parameter first, a new bucket whenever the next
    one would take the bucket over bucket_mb * 2^20 bytes (a larger parameter is a bucket
    of its own). sizes: values per parameter; itemsize: bytes per value.
    plan_buckets([4, 4, 4], 4, 32 / 2**20) -> [[2, 1], [0]]   (16 bytes each, 32 a bucket)"""
    cap = bucket_mb * 2 ** 20
    buckets, current, used = [], [], 0
    for i in reversed(range(len(sizes))):
        nbytes = sizes[i] * itemsize
        if current and used + nbytes > cap:
            buckets.append(current)
            current, used = [], 0
        current.append(i)
        used += nbytes
    return buckets + [current] if current else buckets


def trainable(params):
    """The parameters that train (requires_grad), each once, in the order given."""
    seen, out = set(), []
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    if not out:
        raise ValueError("no trainable parameters (requires_grad=True) to reduce")
    return out


def check_params(params, world, who):
    """The one dtype of the parameters; across ranks, they must be on the CPU."""
    dtypes = sorted({str(p.dtype) for p in params})
    if len(dtypes) > 1:
        raise TypeError(f"{who}: the parameters mix dtypes ({', '.join(dtypes)}); give them "
                        "one dtype (all float32 or all float64)")
    if world.size > 1 and any(p.device != "cpu" for p in params):
        raise RuntimeError(f"{who}: parameters on a GPU across ranks need NCCL, not done yet "
                           "(docs/parallel.md); use device 'cpu' under mpiexec")
    return np.dtype(dtypes[0])


def check_weight(count):
    """w_r: 1.0 for count None, else the count, a finite number >= 0."""
    if count is None:
        return 1.0
    weight = float(count)
    if not math.isfinite(weight) or weight < 0:
        raise ValueError(f"count must be a number of counted targets (>= 0), got {count!r}")
    return weight


def local_stats(params, loss, weight, stop):
    """float64 [w_r, w_r loss_r, stop, has a gradient (1/0) per parameter]: what the ranks
    sum. A rank that counted nothing (w_r = 0) adds nothing, whatever its loss."""
    stats = np.zeros(3 + len(params), np.float64)
    stats[0], stats[1], stats[2] = weight, weight * float(loss) if weight else 0.0, bool(stop)
    stats[3:] = [p.grad is not None for p in params]
    return stats


def summary(stats):
    """(Reduced, reached: per parameter, True when some rank had its gradient) of the
    summed stats."""
    total = float(stats[0])
    if total == 0:
        raise ValueError("no rank counted any target in this step (every count was 0): "
                         "nothing to average; give every step at least one counted target")
    return Reduced(float(stats[1]) / total, total, bool(stats[2] > 0)), stats[3:] > 0


def pack_(buffer, params, weight):
    """buffer <- the params' gradients end to end, times weight (zeros for .grad None)."""
    start = 0
    for p in params:
        part = buffer[start:start + p.size]
        if p.grad is None:
            part[...] = 0
        elif weight == 1:
            part[...] = p.grad.reshape(-1)
        else:
            backend.xp_of(buffer).multiply(p.grad.reshape(-1), weight, out=part)
        start += p.size


class GradientReducer:
    """Average the gradients of params over the ranks of world (see the module docstring).

        reducer = GradientReducer(model.parameters(), world, bucket_mb=25)
        ... forward, backward ...
        loss, count, stop = reducer.reduce(loss, count=None)   # collective
        reducer.clip_grad_norm(1.0)                             # the same on every rank
        optimizer.step()
    """

    def __init__(self, params, world=None, bucket_mb=25.0):
        self.world = distributed.world() if world is None else world
        self.params = trainable(params)
        if not (isinstance(bucket_mb, (int, float)) and math.isfinite(bucket_mb)
                and bucket_mb > 0):
            raise ValueError(f"bucket_mb must be a positive number of megabytes, got "
                             f"{bucket_mb!r}")
        self.dtype = check_params(self.params, self.world, "GradientReducer")
        plan = plan_buckets([p.size for p in self.params], self.dtype.itemsize, bucket_mb)
        self.buckets = [[self.params[i] for i in bucket] for bucket in plan]
        self.buffers = None          # one per bucket, made at the first reduce across ranks

    def reduce(self, loss=0.0, count=None, stop=False):
        """Collective: every .grad <- sum_r w_r g_r / sum_r w_r, w_r = count (this rank's
        counted targets) or 1 when count is None. Returns Reduced(loss, count, stop): the
        batch's loss sum_r w_r loss_r / sum_r w_r, sum_r w_r, and whether any rank passed
        stop=True (a Ctrl-C seen on one rank stops them all at the same step). One rank:
        the gradients stay as they are."""
        weight = check_weight(count)
        stats = local_stats(self.params, loss, weight, stop)
        if self.world.size == 1:
            summary(stats)                                   # a count of 0 is an error
            return Reduced(float(loss), weight, bool(stop))
        if self.buffers is None:
            self.buffers = [np.empty(sum(p.size for p in b), self.dtype) for b in self.buckets]
        requests = [self.world.iallreduce_(stats)]
        for bucket, buffer in zip(self.buckets, self.buffers):       # last layers first
            pack_(buffer, bucket, weight)
            requests.append(self.world.iallreduce_(buffer))
        for request in requests:
            request.wait()
        result, reached = summary(stats)
        reached = {id(p): bool(r) for p, r in zip(self.params, reached)}
        for bucket, buffer in zip(self.buckets, self.buffers):
            buffer /= result.count                                   # sum_r w_r g_r / sum_r w_r
            start = 0
            for p in bucket:
                mean = buffer[start:start + p.size].reshape(p.shape)
                start += p.size
                if not reached[id(p)]:
                    p.grad = None                                    # no rank reached it
                elif p.grad is None:
                    p.grad = mean.copy()
                else:
                    p.grad[...] = mean
        return result

    def clip_grad_norm(self, max_norm):
        """nn.clip_grad_norm of the (reduced) gradients: the same norm on every rank."""
        return clip_grad_norm(self.params, max_norm)
