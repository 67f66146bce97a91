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
backward finishes them) and the same on every rank, with non-blocking Iallreduce. With
start() before the last backward, a bucket is started as soon as backward has finished
its gradients (Tensor.backward's leaf_done), while backward computes the earlier layers',
as PyTorch DDP overlaps; without it, reduce() starts them all at once, then waits. On a
GPU the buffers are CuPy arrays and travel through NCCL (nn/nccl.py), packed and averaged
on the GPU.
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
    """The one dtype of the parameters, all on one device; across ranks on a GPU the world
    must move GPU arrays (world.gpu: nn/nccl.py's NcclWorld)."""
    dtypes = sorted({str(p.dtype) for p in params})
    if len(dtypes) > 1:
        raise TypeError(f"{who}: the parameters mix dtypes ({', '.join(dtypes)}); give them "
                        "one dtype (all float32 or all float64)")
    devices = sorted({p.device for p in params})
    if len(devices) > 1:
        raise TypeError(f"{who}: the parameters are on several devices ({', '.join(devices)});"
                        " move the model to one (model.to(device))")
    if world.size > 1 and devices != ["cpu"] and not world.gpu:
        raise RuntimeError(f"{who}: parameters on a GPU across {world.size} ranks need an NCCL "
                           f"world, got a {type(world).__name__}: pass "
                           "nn.distributed.world(device='cuda') (nn/nccl.py), or use device 'cpu'")
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
        self._started = None         # (weight, requests of buckets 0..) between start and reduce

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
        self._make_buffers()
        if self._started is not None and self._started[0] != weight:
            raise ValueError(f"reduce(count={count!r}) after start(count) with another count: "
                             "give both the same count")
        requests = self._started[1] if self._started is not None else []
        self._started = None
        for b in range(len(requests), len(self.buckets)):       # the rest, in bucket order
            pack_(self.buffers[b], self.buckets[b], weight)
            requests.append(self.world.iallreduce_(self.buffers[b]))
        # stats last: every rank starts the same collectives in the same order, however many
        # buckets backward started. They stay a NumPy array, through MPI even on a GPU:
        # 3 + (parameters) float64 values, read by the host anyway (the loss is a float)
        requests.append(self.world.iallreduce_(stats))
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

    def start(self, count=None):
        """Before the step's last backward: a leaf_done for Tensor.backward that starts each
        bucket's allreduce as soon as backward has finished its gradients (the last layers
        first), while backward goes on with the earlier layers; reduce(loss, count), with the
        same count, then starts the rest and waits for all. One rank: None (nothing to send).
        Buckets start in their order (bucket b once 0..b are finished): collectives must
        start in the same order on every rank, and a rank may finish some later (a bucket
        that a parameter unreached on that rank holds starts in reduce). While backward
        runs, each finished leaf lets MPI move the buckets under way (request.test()): MPI
        progresses a non-blocking collective only inside MPI calls."""
        if self.world.size == 1:
            return None
        weight = check_weight(count)
        self._make_buffers()
        started, waiting = [], [len(bucket) for bucket in self.buckets]
        self._started = (weight, started)
        bucket_of = {id(p): b for b, bucket in enumerate(self.buckets) for p in bucket}

        def leaf_done(leaf):
            b = bucket_of.get(id(leaf))
            if b is None:
                return                                  # not one of ours (frozen, another model)
            waiting[b] -= 1
            while len(started) < len(waiting) and waiting[len(started)] == 0:
                b = len(started)                        # buckets start in order, on every rank
                pack_(self.buffers[b], self.buckets[b], weight)
                started.append(self.world.iallreduce_(self.buffers[b]))
            for request in started:
                request.test()
        return leaf_done

    def _make_buffers(self):
        """One buffer per bucket, where the gradients are (NumPy, or CuPy on a GPU)."""
        device = self.params[0].device
        if self.buffers is None or backend.device_of(self.buffers[0]) != device:
            xp = backend.get_xp(device)
            self.buffers = [xp.empty(sum(p.size for p in b), self.dtype) for b in self.buckets]

    def clip_grad_norm(self, max_norm):
        """nn.clip_grad_norm of the (reduced) gradients: the same norm on every rank."""
        return clip_grad_norm(self.params, max_norm)
