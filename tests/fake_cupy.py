"""A stand-in for CuPy and cupy.cuda.nccl made of NumPy, and N ranks as N threads of one
process (ThreadWorld), for tests/test_nccl.py: the fake communicator finds the arrays behind
the pointers it is given (a pointer outside every fake device array, a count running past
one, a wrong data type or stream fails the test) and really sums, scatters and gathers, in
rank order.
"""
import threading
import types

import numpy as np

from nn import distributed

STREAM = 0x5EED                                 # the fake current stream's handle
TYPES = {"NCCL_INT8": 0, "NCCL_UINT8": 1, "NCCL_INT32": 2, "NCCL_UINT32": 3, "NCCL_INT64": 4,
         "NCCL_UINT64": 5, "NCCL_FLOAT16": 6, "NCCL_FLOAT32": 7, "NCCL_FLOAT64": 8}
DTYPE_OF = {code: np.dtype(name[5:].lower()) for name, code in TYPES.items()}


class FakeArray(np.ndarray):
    """A "device" array: NumPy's, with CuPy's .data.ptr (the address of its first value)."""

    @property
    def data(self):
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])


class Group:
    """What N ranks share: a barrier and one slot per rank; exchange(rank, x) -> every
    rank's x, in rank order, once every rank has given its own."""

    def __init__(self, n):
        self.n, self.slots = n, [None] * n
        self.barrier = threading.Barrier(n, timeout=20)

    def exchange(self, rank, value):
        self.slots[rank] = value
        self.barrier.wait()
        out = list(self.slots)
        self.barrier.wait()
        return out


def rank_sum(parts):
    total = parts[0].copy()
    for p in parts[1:]:
        total += p
    return total


class FakeCupy:
    """cupy for these tests: NumPy's functions, arrays made FakeArrays and remembered (so that
    pointers can be checked), cuda.Device/runtime/get_current_stream and cuda.nccl."""
    ndarray = FakeArray

    def __init__(self, gpus=8):
        self.arrays, self.groups, self.uids, self.lock = [], {}, [], threading.Lock()
        self.local = threading.local()               # .device: this thread's current GPU
        self.cuda = types.SimpleNamespace(
            Device=self.Device, get_current_stream=lambda: types.SimpleNamespace(ptr=STREAM),
            runtime=types.SimpleNamespace(getDeviceCount=lambda: self.gpus))
        self.cuda.nccl = types.SimpleNamespace(
            **TYPES, NCCL_SUM=0, get_unique_id=self.get_unique_id,
            NcclCommunicator=lambda n, uid, rank: FakeComm(self, n, uid, rank))
        self.gpus = gpus

    def __getattr__(self, name):
        return getattr(np, name)

    def _device(self, a):
        out = np.array(a, copy=True).view(FakeArray)
        with self.lock:
            self.arrays.append(out)
        return out

    def asarray(self, a, dtype=None):
        return a if isinstance(a, FakeArray) and dtype in (None, a.dtype) else \
            self._device(np.asarray(a, dtype))

    def zeros(self, shape, dtype=float):
        return self._device(np.zeros(shape, dtype))

    def empty(self, shape, dtype=float):
        return self._device(np.full(shape, np.nan, dtype))      # garbage shows

    def asnumpy(self, a):
        return np.array(a).view(np.ndarray)

    def Device(self, index):
        fake = self

        class Device:
            def use(self):
                assert 0 <= index < fake.gpus, f"no GPU {index}"
                fake.local.device = index
        return Device()

    def get_unique_id(self):
        with self.lock:
            self.uids.append(tuple(np.random.default_rng(len(self.uids)).integers(0, 256, 128)))
            return self.uids[-1]

    def view(self, ptr, count, code):
        """The count values of NCCL type `code` at ptr, inside one fake device array."""
        dtype = DTYPE_OF[code]
        for a in self.arrays:
            base = a.__array_interface__["data"][0]
            if base <= ptr and ptr + count * dtype.itemsize <= base + a.nbytes:
                assert a.dtype == dtype, f"NCCL type {code} for an array of {a.dtype}"
                return np.ndarray((count,), dtype, buffer=a.view(np.ndarray).reshape(-1),
                                  offset=ptr - base)
        raise AssertionError(f"{count} values at {ptr:#x} are in no device array")


class FakeComm:
    """cupy.cuda.nccl.NcclCommunicator over a Group; calls logs (name, count, type, root)."""

    def __init__(self, fake, n, uid, rank):
        assert len(uid) == 128 and uid in fake.uids and 0 <= rank < n
        assert fake.local.device == rank, "NCCL joined before the rank's GPU was made current"
        with fake.lock:
            self.group = fake.groups.setdefault(uid, Group(n))
        self.fake, self.rank, self.n, self.uid, self.calls = fake, rank, n, uid, []

    def _run(self, name, count, code, stream, root=None, op=0):
        assert stream == STREAM and op == 0, "not on the current stream, or not NCCL_SUM"
        self.calls.append((name, count, code, root))

    def allReduce(self, send, recv, count, code, op, stream):
        self._run("allReduce", count, code, stream, op=op)
        parts = self.group.exchange(self.rank, self.fake.view(send, count, code).copy())
        self.fake.view(recv, count, code)[...] = rank_sum(parts)

    def bcast(self, buff, count, code, root, stream):
        self._run("bcast", count, code, stream, root)
        parts = self.group.exchange(self.rank, self.fake.view(buff, count, code).copy())
        self.fake.view(buff, count, code)[...] = parts[root]

    def reduceScatter(self, send, recv, count, code, op, stream):
        self._run("reduceScatter", count, code, stream, op=op)
        parts = self.group.exchange(self.rank, self.fake.view(send, self.n * count, code).copy())
        mine = rank_sum(parts)[self.rank * count:(self.rank + 1) * count]
        self.fake.view(recv, count, code)[...] = mine

    def allGather(self, send, recv, count, code, stream):
        self._run("allGather", count, code, stream)
        parts = self.group.exchange(self.rank, self.fake.view(send, count, code).copy())
        self.fake.view(recv, self.n * count, code)[...] = np.concatenate(parts)


class ThreadWorld(distributed.World):
    """MPIWorld's stand-in: rank `rank` of a Group of threads, NumPy arrays only."""

    def __init__(self, group, rank):
        self.group, self.rank, self.size = group, rank, group.n
        self.local_rank, self.local_size = rank, group.n

    def allreduce_(self, a):
        distributed._host(a)[...] = rank_sum(self.group.exchange(self.rank, a.copy()))
        return a

    def iallreduce_(self, a):
        self.allreduce_(a)
        return distributed._Done()

    def broadcast_(self, a, root=0):
        distributed._host(a)[...] = self.group.exchange(self.rank, a.copy())[root]
        return a

    def allgather(self, value):
        return self.group.exchange(self.rank, value)

    def broadcast_object(self, value, root=0):
        return self.allgather(value)[root]

    def reduce_scatter(self, send, recv, counts):
        total = rank_sum(self.group.exchange(self.rank, distributed._host(send).copy()))
        start = sum(counts[:self.rank])
        recv[...] = total[start:start + counts[self.rank]]
        return recv

    def allgather_(self, a, counts):
        start = sum(counts[:self.rank])
        mine = distributed._host(a)[start:start + counts[self.rank]].copy()
        a[...] = np.concatenate(self.group.exchange(self.rank, mine))
        return a

    def gather(self, send, counts, root=0):
        parts = self.group.exchange(self.rank, send.copy())
        return np.concatenate(parts) if self.rank == root else None

    def barrier(self):
        self.group.exchange(self.rank, None)
