"""ZeroAdamW: AdamW whose moments are cut into one shard per rank (ZeRO stage 1).

Lay the P trainable values end to end in the optimizer's order (nn.AdamW.state_dict()'s
layout). Rank r of N owns the values [lo_r, hi_r), P // N of them (one more for
r < P % N; World.parts). One step:

  1. reduce(): each rank packs w_r g_r (w_r as in nn/reducer.py: its counted targets, or
     1) into one flat buffer of P values; a reduce-scatter leaves on rank r only its part
     of sum_r w_r g_r, divided by sum_r w_r: its shard of the averaged gradient g.
  2. clip_grad_norm(): ||g||^2 = sum over ranks of the sums of squares of their shards
     (an allreduce of one number; each shard adds its parameters' parts in the flat
     layout's order): the same global norm on every rank, and the shard
     scaled by max_norm / (norm + 1e-6) when that is below 1, as nn.clip_grad_norm does.
  3. step(): rank r runs nn.AdamW's update (adamw_update_all, one weight-decay group at a
     time) on its weights [lo_r, hi_r) with its moments m, v; an allgather then gives
     every rank's parameters the owners' updated values.

Each value goes through exactly nn.AdamW's operations, so ZeroAdamW's weights are
nn.AdamW's on the averaged gradient (bit for bit on one rank).

Per rank: moments 2P/N values (nn.AdamW: 2P), the gradient's shard P/N, one flat buffer
of P (the reduce-scatter's input, then the allgather's output); .grad is released once
packed. AdamW's arithmetic: P/N values instead of P. Traffic: reduce-scatter + allgather,
the volume of one allreduce.

state_dict() gathers the shards on rank 0 in nn.AdamW.state_dict()'s layout, so the two
optimizers' checkpoints are the same files; load_state_dict takes that full state on any
number of ranks (every rank passes it whole and keeps its part): N ranks resume on M.

On GPUs (world: nn/nccl.py's NcclWorld) m, v, the shard and the flat buffer are CuPy
arrays and the reduce-scatter and all-gather run through NCCL; only gathered() (a
checkpoint) copies the moments to the host, to gather them through MPI.
"""
import math

from tensor import backend, dispatch

from . import distributed
from .optim import Optimizer, adamw_update_all, scale_in_place, sum_of_squares
from .reducer import Reduced, check_params, check_weight, local_stats, pack_, summary


def shard_segments(sizes, lo, hi):
    """The parameters' pieces inside values [lo, hi) of the flat layout, as (parameter
    index, start and end in the shard, start in the parameter), in parameter order:
    shard_segments([3, 4], 2, 5) -> [(0, 0, 1, 2), (1, 1, 3, 0)]."""
    out, offset = [], 0
    for i, size in enumerate(sizes):
        a, b = max(offset, lo), min(offset + size, hi)
        if a < b:
            out.append((i, a - lo, b - lo, a - offset))
        offset += size
    return out


class GatheredState:
    """A ZeroAdamW's whole state on one rank, shaped like an optimizer for checkpoint.save:
    t, state_names, state_parts(name) (one flat array), state_dict()."""

    def __init__(self, t, arrays):
        self.t, self.arrays, self.state_names = t, arrays, tuple(arrays)

    def state_parts(self, name):
        return [self.arrays[name]]

    def state_dict(self):
        return {"t": self.t, **self.arrays}


class ZeroAdamW(Optimizer):
    """nn.AdamW (same arguments, same parameter groups) with moments sharded over the ranks
    of world. Per step, on every rank: zero_grad, backward, reduce, [clip_grad_norm], step."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 world=None):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps,
                                  "weight_decay": weight_decay}, ("m", "v"))
        self.world = distributed.world() if world is None else world
        self.dtype = check_params(self.params, self.world, "ZeroAdamW")
        sizes = [p.size for p in self.params]
        self.offsets = [sum(sizes[:i]) for i in range(len(sizes))]
        self.counts, starts = self.world.parts(sum(sizes))
        self.lo = starts[self.world.rank]
        self.hi = self.lo + self.counts[self.world.rank]
        self.segments = shard_segments(sizes, self.lo, self.hi)
        group_of = {id(p): k for k, group in enumerate(self.param_groups)
                    for p in group["params"]}
        self.group_segments = [[s for s in self.segments if group_of[id(self.params[s[0]])] == k]
                               for k in range(len(self.param_groups))]     # by decay group
        self.m = self.v = self.flat = self.grad_shard = None    # made on the params' device
        self.reached = None          # per parameter: some rank had its gradient (reduce)

    def _ready(self):
        """m, v, the gradient's shard and the flat buffer, on the parameters' device."""
        device, n = self.params[0].device, self.hi - self.lo
        xp = backend.get_xp(device)
        if self.m is None:
            self.m, self.v = xp.zeros(n, self.dtype), xp.zeros(n, self.dtype)
        elif backend.device_of(self.m) != device:
            self.m, self.v = (backend.to_device(a, device) for a in (self.m, self.v))
        if self.flat is None or backend.device_of(self.flat) != device:
            self.flat = xp.empty(sum(p.size for p in self.params), self.dtype)
            self.grad_shard = xp.empty(n, self.dtype)

    def reduce(self, loss=0.0, count=None, stop=False):
        """Collective: this rank's shard of the averaged gradient sum_r w_r g_r / sum_r w_r
        (w_r = count, or 1 when None), kept for step(); every .grad released. Returns
        Reduced(loss, count, stop) as GradientReducer.reduce does."""
        weight = check_weight(count)
        single = self.world.size == 1
        stats = local_stats(self.params, loss, weight, stop)
        request = self.world.iallreduce_(stats)
        self._ready()
        pack_(self.flat, self.params, 1.0 if single else weight)    # one rank: g itself
        for p in self.params:
            p.grad = None
        self.world.reduce_scatter(self.flat, self.grad_shard, self.counts)
        request.wait()
        result, self.reached = summary(stats)
        if single:
            return Reduced(float(loss), weight, bool(stop))
        self.grad_shard /= result.count
        return result

    def _check_reduced(self, caller):
        if self.reached is None:
            raise RuntimeError(f"ZeroAdamW.{caller}: call reduce() first, on every rank, "
                               "after backward (it averages the gradients into the shards)")

    def clip_grad_norm(self, max_norm):
        """Collective: nn.clip_grad_norm of the averaged gradient, on the shards; returns the
        global norm before clipping (the same on every rank)."""
        self._check_reduced("clip_grad_norm")
        sum_sq = dispatch.kernel("sum_of_squares", sum_of_squares)
        g = self.grad_shard
        local = sum(sum_sq(g[a:b]) for i, a, b, _ in self.segments if self.reached[i])
        norm = math.sqrt(self.world.sum(local))
        scale = max_norm / (norm + 1e-6)
        if scale < 1:
            dispatch.kernel("scale_", scale_in_place)(g, scale)
        return norm

    def step(self):
        """Collective: AdamW on this rank's shard, then every rank's weights <- the owners'."""
        self._check_reduced("step")
        update_all = dispatch.kernel("adamw_update_all", adamw_update_all)
        self.t += 1
        w, g = self.flat[self.lo:self.hi], self.grad_shard           # (P/N,) each
        for i, a, b, start in self.segments:                         # this rank's weights
            w[a:b] = self.params[i].data.reshape(-1)[start:start + b - a]
        for group, segments in zip(self.param_groups, self.group_segments):
            b1, b2 = group["betas"]
            arrays = [(w[a:b], g[a:b], self.m[a:b], self.v[a:b])    # (p, g, m, v)
                      for i, a, b, _ in segments if self.reached[i]]
            update_all(arrays, group["lr"], b1, b2, group["eps"], group["weight_decay"], self.t)
        self.world.allgather_(self.flat, self.counts)                # (P,): every shard
        for p, offset in zip(self.params, self.offsets):
            p.data[...] = self.flat[offset:offset + p.size].reshape(p.shape)
        self.reached = None

    # ----- state: nn.AdamW's layout, gathered and scattered ------------------------------
    def gathered(self, root=0):
        """Collective: the whole state on root as a GatheredState (checkpoint.save takes it
        in place of the optimizer), None on the other ranks."""
        self._ready()
        arrays = {name: self.world.gather(backend.to_numpy(getattr(self, name)),
                                          self.counts, root) for name in self.state_names}
        return GatheredState(self.t, arrays) if self.world.rank == root else None

    def state_dict(self, root=0):
        """Collective: nn.AdamW.state_dict()'s {"t", "m", "v"} on root, None elsewhere."""
        state = self.gathered(root)
        return None if state is None else state.state_dict()

    def state_parts(self, name):
        if self.world.size > 1:
            raise RuntimeError("ZeroAdamW.state_parts: the moments are spread over the ranks; "
                               "call gathered() on every rank and save what rank 0 gets")
        return self.gathered().state_parts(name)

    def state_of(self, p):
        raise TypeError("ZeroAdamW keeps no per-parameter state: its moments are one flat "
                        "shard per rank (see state_dict)")

    def load_state_dict(self, state):
        """The full state (nn.AdamW's or a gathered ZeroAdamW's, from any number of ranks),
        passed on every rank: each keeps its own part."""
        self.check_state(state)
        self._ready()
        self.t = int(state["t"])
        for name in self.state_names:
            part = backend.to_numpy(state[name])[self.lo:self.hi]
            getattr(self, name)[...] = backend.to_device(part, self.params[0].device)
