"""Processes that train together: who they are (the world) and what they exchange.

`mpiexec -n N python ...` starts N copies of a program, its ranks 0..N-1. world() tells
each copy which one it is and talks to the others through MPI (mpi4py). It reads the
launcher's environment variables first (nn/launch.py): with no launcher, or a launch of one
rank, it returns a SingleWorld (rank 0 of 1, every collective an identity) and mpi4py is
never imported, so a plain `python -m tinygrad_gpt.train` is exactly what it was.

The collectives work on NumPy arrays, in place where they can (names ending in `_`):

    allreduce_(a)          a <- sum over ranks of a                 (every rank)
    broadcast_(a, root)    a <- root's a
    reduce_scatter(s, r)   r <- my part of the sum over ranks of s  (parts: counts)
    allgather_(a, counts)  a <- every rank's own part of a, from its owner
    gather(s, counts)      the parts end to end, on root (None on the others)

and on top of them: sum(x) and any(flag) of Python numbers, broadcast_parameters (rank 0's
initial weights to everyone), check_agree (settings, data, code version the same on every
rank, else one error naming the ranks that differ). nn/reducer.py averages gradients with
them, nn/zero.py shards AdamW's moments (ZeRO-1); docs/parallel.md has the math.

GPUs: world(device="cuda") is nn/nccl.py's NcclWorld across ranks (CuPy arrays through
NCCL, the rest through MPI); nn/nccl.py is imported only then.
"""
import hashlib
import json
import os

import numpy as np
from tensor import backend

from .launch import INSTALL, Launch, launch_info  # noqa: F401 (nn.distributed.Launch ...)

_world = None
_gpu_world = None


def world(device="cpu"):
    """This process's World, made once: a SingleWorld unless a launcher started more than
    one rank (then an MPIWorld over MPI.COMM_WORLD; mpi4py imported here, and only then).
    device "cuda": this rank's GPU made current and, across ranks, the MPI world wrapped in
    an NcclWorld (nn/nccl.py's gpu_world; CuPy and NCCL imported then, and only then)."""
    global _world, _gpu_world
    if _world is None:
        _world = connect(launch_info())
    if backend.check_device(device) == "cpu":
        return _world
    if _gpu_world is None:
        from .nccl import gpu_world
        _gpu_world = gpu_world(_world)
    return _gpu_world


def connect(launch):
    """The World for a Launch (None: no launcher): see world()."""
    if launch is None or launch.size == 1:
        return SingleWorld()
    try:
        from mpi4py import MPI
    except ImportError as e:
        of = f" of {launch.size}" if launch.size else ""
        raise RuntimeError(f"started by {launch.launcher} as rank {launch.rank}{of}, but "
                           f"mpi4py cannot be imported ({e}): {INSTALL}, or run without "
                           "mpiexec") from None
    comm = MPI.COMM_WORLD
    if launch.size is not None and comm.Get_size() != launch.size:
        raise RuntimeError(f"{launch.launcher} started {launch.size} ranks but MPI sees "
                           f"{comm.Get_size()}: mpi4py is built against another MPI than this "
                           "mpiexec; use the mpiexec of the MPI mpi4py was built with "
                           "(python -c 'import mpi4py; print(mpi4py.get_config())')")
    return SingleWorld() if comm.Get_size() == 1 else MPIWorld(comm)


class World:
    """rank, size, local_rank / local_size (ranks on this machine), and the collectives.
    Subclasses supply the primitives; everything every rank must call is marked
    "collective": every rank calls it, in the same order, or the job waits forever."""
    rank, size, local_rank, local_size = 0, 1, 0, 1
    gpu = False          # True when the array collectives take CuPy arrays (nn/nccl.py)

    @property
    def is_root(self):
        """True on rank 0, the rank that prints and writes files."""
        return self.rank == 0

    def parts(self, total):
        """parts(total, size): this world's cut of `total` values, one part per rank."""
        return parts(total, self.size)

    def sum(self, value):
        """Collective: the sum over ranks of a Python number, as a float (every rank)."""
        return float(self.allreduce_(np.array([value], np.float64))[0])

    def any(self, flag):
        """Collective: True on every rank when flag is true on some rank."""
        return self.sum(1.0 if flag else 0.0) > 0

    def broadcast_parameters(self, params, root=0):
        """Collective: every parameter's weights <- root's, in place (the model's initial
        weights, so that every rank starts from rank 0's)."""
        if self.size == 1:
            return
        for p in params:
            host = np.ascontiguousarray(backend.to_numpy(p.data))
            self.broadcast_(host, root)
            p.data[...] = backend.to_device(host, p.device)

    def check_agree(self, what, value):
        """Collective: a ValueError on every rank unless `value` (a settings dict, a data hash,
        a code version: anything fingerprint() takes) is the same on every rank. The ranks
        compare sha256 fingerprints; when some differ, the message names them and, for
        dicts, the keys that differ."""
        digests = self.allgather(fingerprint(value))
        odd = [r for r, d in enumerate(digests) if d != digests[0]]
        if not odd:
            return
        values = self.allgather(value if isinstance(value, dict) else None)   # all take this
        first, other, keys = values[0], values[odd[0]], []
        if isinstance(first, dict) and isinstance(other, dict):
            keys = sorted((k for k in set(first) | set(other)
                           if first.get(k) != other.get(k)), key=str)
        detail = " (" + ", ".join(f"{k}: rank 0 has {first.get(k)!r}, rank {odd[0]} has "
                                  f"{other.get(k)!r}" for k in keys[:5]) + ")" if keys else ""
        ranks = ", ".join(map(str, odd))
        raise ValueError(f"the ranks disagree on {what}: rank{'s' * (len(odd) > 1)} {ranks} "
                         f"differ{'s' * (len(odd) == 1)} from rank 0{detail}; start every rank "
                         f"with the same {what}")


def parts(total, n):
    """(counts, starts): `total` values cut into n contiguous parts, part r holding
    total // n values, plus one for r < total % n: parts(7, 3) -> ([3, 2, 2], [0, 3, 5])."""
    counts = [total // n + (r < total % n) for r in range(n)]
    return counts, [sum(counts[:r]) for r in range(n)]


def fingerprint(value):
    """sha256 hex digest of bytes, a str, a NumPy array (dtype, shape and values) or anything
    JSON can write (dicts with keys sorted): equal values, equal digests, on any rank."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
    elif isinstance(value, str):
        raw = value.encode()
    elif isinstance(value, np.ndarray):
        raw = f"{value.dtype.str}{value.shape}".encode() + np.ascontiguousarray(value).tobytes()
    else:
        raw = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(raw).hexdigest()


class _Done:
    """The request of a collective that has already finished."""

    def wait(self):
        pass

    def test(self):
        return True


class _Pending:
    """An MPI request under way; wait() returns once it has finished, test() lets MPI move
    it on and says whether it has."""

    def __init__(self, request):
        self.request = request

    def wait(self):
        self.request.Wait()

    def test(self):
        return self.request.Test()


class SingleWorld(World):
    """One process (rank 0 of 1): every collective gives back what it was given."""

    def allreduce_(self, a):
        return a

    def iallreduce_(self, a):
        return _Done()

    def broadcast_(self, a, root=0):
        return a

    def allgather(self, value):
        return [value]

    def broadcast_object(self, value, root=0):
        return value

    def reduce_scatter(self, send, recv, counts):
        recv[...] = send
        return recv

    def allgather_(self, a, counts):
        return a

    def gather(self, send, counts, root=0):
        return send.copy()

    def barrier(self):
        pass

    def abort(self, code=1):
        os._exit(code)


class MPIWorld(World):
    """The ranks of an mpi4py communicator (MPI.COMM_WORLD from world()). Arrays are NumPy,
    C-contiguous; MPI finds their type from the array."""

    def __init__(self, comm):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)        # the ranks on this machine
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        node.Free()

    def allreduce_(self, a):
        self.comm.Allreduce(self.MPI.IN_PLACE, _host(a), op=self.MPI.SUM)
        return a

    def iallreduce_(self, a):
        """Start allreduce_(a); a holds the sum once the returned request's wait() returns."""
        return _Pending(self.comm.Iallreduce(self.MPI.IN_PLACE, _host(a), op=self.MPI.SUM))

    def broadcast_(self, a, root=0):
        self.comm.Bcast(_host(a), root=root)
        return a

    def allgather(self, value):
        return self.comm.allgather(value)

    def broadcast_object(self, value, root=0):
        return self.comm.bcast(value, root=root)

    def reduce_scatter(self, send, recv, counts):
        self.comm.Reduce_scatter(_host(send), _host(recv), recvcounts=list(counts),
                                 op=self.MPI.SUM)
        return recv

    def allgather_(self, a, counts):
        displacements = [sum(counts[:r]) for r in range(self.size)]
        self.comm.Allgatherv(self.MPI.IN_PLACE, [_host(a), (list(counts), displacements)])
        return a

    def gather(self, send, counts, root=0):
        full = np.empty(sum(counts), send.dtype) if self.rank == root else None
        displacements = [sum(counts[:r]) for r in range(self.size)]
        self.comm.Gatherv(_host(send), [full, (list(counts), displacements)]
                          if self.rank == root else None, root=root)
        return full

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        """End every rank of the job now (MPI_Abort), as after an error on one rank."""
        self.comm.Abort(code)


def _host(a):
    """a itself, checked to be what MPI can read and write in place."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"MPI collectives take NumPy arrays, got {type(a).__name__}: arrays on "
                        "a GPU need an NCCL world, nn.distributed.world(device='cuda')")
    if not a.flags.c_contiguous:
        raise ValueError(f"MPI collectives need C-contiguous arrays, got one of shape {a.shape}"
                         f" with strides {a.strides}: pass np.ascontiguousarray(a)")
    return a
