"""NcclWorld: the ranks of an MPI world whose arrays live on GPUs, one GPU per rank.

    world = nn.distributed.world(device="cuda")    # = gpu_world(nn.distributed.world())

gpu_world picks this rank's GPU (use_device: cupy.cuda.Device(local_rank), so the ranks on
one machine take GPUs 0..local_size-1) and, across ranks, wraps the MPI world in an
NcclWorld. Rank 0 asks NCCL for a unique id (cupy.cuda.nccl.get_unique_id), MPI broadcasts
it, and every rank joins one cupy.cuda.nccl.NcclCommunicator(size, id, rank), as ChainerMN
and llm.c do. Then:

    CuPy arrays   allreduce_, iallreduce_, broadcast_, reduce_scatter, allgather_, gather
                  go through NCCL, on CuPy's current stream, from device memory to device
                  memory (a.data.ptr): no copy through the host;
    NumPy arrays  (the reducer's float64 step statistics, sum(), any()) and Python objects
                  (allgather, broadcast_object, barrier, abort) go through MPI as before.

NCCL's reduce-scatter and all-gather move equal parts, World.parts cuts unequal ones
(7 values on 3 ranks: 3, 2, 2): unequal parts travel in a padded buffer of
size * max(counts) values, part r at r * max(counts), the rest never read (see _padded).

cupy and cupy.cuda.nccl are imported by the functions here, never at import time, and this
module is imported only when a GPU world is asked for: a CPU run loads neither.
Run on real hardware: not yet (the machine this was written on has no GPU); tests/test_nccl.py
checks the logic with a NumPy stand-in for CuPy and NCCL, tests/test_cuda.py a one-rank
communicator when a GPU is there.
"""
from tensor import backend

from . import distributed

# NumPy/CuPy dtype name -> the name of NCCL's data type in cupy.cuda.nccl
NCCL_TYPES = {"int8": "NCCL_INT8", "uint8": "NCCL_UINT8", "int32": "NCCL_INT32",
              "uint32": "NCCL_UINT32", "int64": "NCCL_INT64", "uint64": "NCCL_UINT64",
              "float16": "NCCL_FLOAT16", "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64"}


def cuda_modules():
    """(cupy, cupy.cuda.nccl), or a RuntimeError saying how to install them."""
    try:
        import cupy
        from cupy.cuda import nccl
    except Exception as e:            # ImportError, or a CuPy built without NCCL
        raise RuntimeError(f"device 'cuda' across ranks needs CuPy with NCCL ({e}): pip "
                           "install cupy-cuda12x (its NCCL: python -m cupyx.tools.install_library "
                           "--library nccl --cuda 12.x), or use device 'cpu'") from None
    return cupy, nccl


def use_device(world, cupy=None):
    """Make GPU world.local_rank this process's current device (one GPU per rank: the ranks
    of a machine take GPUs 0..local_size-1) and return its index. RuntimeError when the
    machine has fewer visible GPUs than ranks."""
    if cupy is None:                  # CuPy alone: one rank on a GPU needs no NCCL
        backend.check_device("cuda")
        cupy = backend.get_xp("cuda")
    try:
        visible = cupy.cuda.runtime.getDeviceCount()
    except Exception as e:
        raise RuntimeError(f"device 'cuda': CuPy sees no GPU ({e}); check nvidia-smi and the "
                           "driver, or use device 'cpu'") from None
    if world.local_size > visible:
        raise RuntimeError(f"{world.local_size} ranks on this machine but {visible} visible "
                           f"GPU{'s' * (visible != 1)}: one GPU per rank; start at most "
                           f"{visible} ranks per machine (mpiexec -n / --npernode), or show "
                           "more GPUs (CUDA_VISIBLE_DEVICES)")
    cupy.cuda.Device(world.local_rank).use()
    return world.local_rank


def gpu_world(world):
    """The World for ranks whose parameters are on GPUs: this rank's GPU made current
    (use_device); one rank keeps `world` (its collectives are identities on any array),
    N ranks get an NcclWorld over it. Collective on N ranks (the NCCL id is broadcast)."""
    use_device(world)
    return world if world.size == 1 else NcclWorld(world)


class _Queued:
    """The request of an NCCL collective: it is queued on the current stream, and every
    later kernel on that stream (the reducer's unpacking, AdamW) runs after it, while a
    read by the host (float(), .get()) waits for the stream. So wait() has nothing to do:
    an event synchronize would only stall the host, which never reads these buffers raw."""

    def wait(self):
        pass

    def test(self):
        return True


class NcclWorld(distributed.World):
    """The ranks of `base` (an MPIWorld, or any World: rank, size, local_rank and the object
    collectives come from it) with CuPy arrays exchanged by one NCCL communicator. Make the
    rank's GPU current first (gpu_world does): NCCL binds the communicator to it."""
    gpu = True

    def __init__(self, base):
        self.cupy, self.nccl = cuda_modules()
        self.base = base
        self.rank, self.size = base.rank, base.size
        self.local_rank, self.local_size = base.local_rank, base.local_size
        uid = self.nccl.get_unique_id() if base.rank == 0 else None
        uid = base.broadcast_object(uid, root=0)                     # over MPI
        self.comm = self.nccl.NcclCommunicator(base.size, uid, base.rank)
        self._pads = {}              # (dtype, values) -> padded buffer, reused every step

    # ----- what is not an array on a GPU: through the base world (MPI) ------------------
    def allgather(self, value):
        return self.base.allgather(value)

    def broadcast_object(self, value, root=0):
        return self.base.broadcast_object(value, root)

    def barrier(self):
        self.base.barrier()

    def abort(self, code=1):
        self.base.abort(code)

    # ----- arrays: CuPy through NCCL, NumPy through the base world ------------------------
    def _on_gpu(self, a):
        return isinstance(a, self.cupy.ndarray)

    def _args(self, a):
        """(pointer, NCCL data type) of a C-contiguous CuPy array."""
        if not a.flags.c_contiguous:
            raise ValueError(f"NCCL collectives need C-contiguous arrays, got one of shape "
                             f"{a.shape} with strides {a.strides}: pass cupy.ascontiguousarray(a)")
        name = NCCL_TYPES.get(str(a.dtype))
        if name is None:
            raise TypeError(f"NCCL has no data type for {a.dtype}: use one of "
                            f"{', '.join(NCCL_TYPES)}")
        return a.data.ptr, getattr(self.nccl, name)

    def _stream(self):
        return self.cupy.cuda.get_current_stream().ptr

    def allreduce_(self, a):
        if not self._on_gpu(a):
            return self.base.allreduce_(a)
        ptr, dtype = self._args(a)
        self.comm.allReduce(ptr, ptr, a.size, dtype, self.nccl.NCCL_SUM, self._stream())
        return a

    def iallreduce_(self, a):
        """Start allreduce_(a): an MPI request for a NumPy array, a _Queued for a CuPy one."""
        if not self._on_gpu(a):
            return self.base.iallreduce_(a)
        self.allreduce_(a)
        return _Queued()

    def broadcast_(self, a, root=0):
        if not self._on_gpu(a):
            return self.base.broadcast_(a, root)
        ptr, dtype = self._args(a)
        self.comm.bcast(ptr, a.size, dtype, root, self._stream())
        return a

    def broadcast_parameters(self, params, root=0):
        """Collective: every parameter's weights <- root's, in place, GPU to GPU."""
        for p in params:
            if self._on_gpu(p.data) and p.data.flags.c_contiguous:
                self.broadcast_(p.data, root)
            else:
                super().broadcast_parameters([p], root)

    def _check_counts(self, counts, total):
        counts = [int(c) for c in counts]
        if len(counts) != self.size or sum(counts) != total or min(counts) < 0:
            raise ValueError(f"counts {counts} must be {self.size} parts (one per rank) adding "
                             f"up to the array's {total} values: use World.parts({total})")
        return counts

    def _padded(self, dtype, values):
        """A buffer of `values` values of dtype, made once and reused (stream order keeps one
        call's use before the next); what a padding slot holds is never read."""
        key = (str(dtype), values)
        if key not in self._pads:
            self._pads[key] = self.cupy.zeros(values, dtype)
        return self._pads[key]

    def reduce_scatter(self, send, recv, counts):
        """recv <- this rank's part of the sum over ranks of send (parts: counts)."""
        if not self._on_gpu(send):
            return self.base.reduce_scatter(send, recv, counts)
        counts = self._check_counts(counts, send.size)
        if recv.size != counts[self.rank]:
            raise ValueError(f"recv holds {recv.size} values, rank {self.rank}'s part is "
                             f"{counts[self.rank]}")
        width = max(counts)                                  # NCCL: equal parts of `width`
        if min(counts) == width:
            source = send
        else:                                                # part r at r * width, padded
            source = self._padded(send.dtype, self.size * width)
            for r, (start, count) in enumerate(zip(_starts(counts), counts)):
                source[r * width:r * width + count] = send.reshape(-1)[start:start + count]
        out = recv if min(counts) == width else self._padded(send.dtype, width)
        (ptr, dtype), (out_ptr, _) = self._args(source), self._args(out)
        self.comm.reduceScatter(ptr, out_ptr, width, dtype, self.nccl.NCCL_SUM, self._stream())
        if out is not recv:
            recv.reshape(-1)[...] = out[:counts[self.rank]]
        return recv

    def _gather_all(self, a, counts, own):
        """Every rank's part of a (parts: counts; this rank's from `own`), end to end in a
        padded buffer of size * max(counts) values (part r at r * max(counts))."""
        width = max(counts)
        full = self._padded(a.dtype, self.size * width)
        mine = full[self.rank * width:(self.rank + 1) * width]
        mine[:counts[self.rank]] = own                      # in place: NCCL sends `mine`
        (ptr, dtype), (full_ptr, _) = self._args(mine), self._args(full)
        self.comm.allGather(ptr, full_ptr, width, dtype, self._stream())
        return full, width

    def allgather_(self, a, counts):
        """a <- every rank's own part of a, from its owner (in place)."""
        if not self._on_gpu(a):
            return self.base.allgather_(a, counts)
        counts = self._check_counts(counts, a.size)
        starts, flat = _starts(counts), a.reshape(-1)
        if min(counts) == max(counts):                      # in place: NCCL's own layout
            width = counts[0]
            ptr, dtype = self._args(a)
            self.comm.allGather(ptr + self.rank * width * a.itemsize, ptr, width, dtype,
                                self._stream())
            return a
        mine = flat[starts[self.rank]:starts[self.rank] + counts[self.rank]]
        full, width = self._gather_all(a, counts, mine)
        for r, (start, count) in enumerate(zip(starts, counts)):
            flat[start:start + count] = full[r * width:r * width + count]
        return a

    def gather(self, send, counts, root=0):
        """The parts end to end, on root (None on the others). NCCL has no gather(v): an
        all-gather, every rank receiving (checkpoints only, not every step)."""
        if not self._on_gpu(send):
            return self.base.gather(send, counts, root)
        counts = self._check_counts(counts, sum(int(c) for c in counts))
        if send.size != counts[self.rank]:
            raise ValueError(f"send holds {send.size} values, rank {self.rank}'s part is "
                             f"{counts[self.rank]}")
        full, width = self._gather_all(send, counts, send.reshape(-1))
        if self.rank != root:
            return None
        return self.cupy.concatenate([full[r * width:r * width + c] for r, c in enumerate(counts)])


def _starts(counts):
    return [sum(counts[:r]) for r in range(len(counts))]
