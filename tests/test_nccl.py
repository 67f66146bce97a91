"""nn/nccl.py's NcclWorld on the CPU: CuPy and cupy.cuda.nccl replaced by a stand-in made of
NumPy (tests/fake_cupy.py), N ranks as N threads of this process. So the logic is checked:
the padding of unequal parts, data types, counts, root, stream, the unique id's broadcast,
the choice of GPU; and GradientReducer / ZeroAdamW through NcclWorld give bit for bit what
they give on the CPU through the MPI path (here a thread world standing in for MPIWorld),
which equals one process's gradient accumulation (tests/test_distributed.py checks that
over real MPI). On a real GPU: tests/test_cuda.py.
"""
import subprocess
import sys
import threading
import types

import numpy as np
import pytest

import distributed_worker as worker
from fake_cupy import FakeArray, FakeCupy, Group, ThreadWorld
import nn
from nn import distributed, nccl
from tensor import backend


@pytest.fixture
def fake(monkeypatch):
    """The fake CuPy installed as `cupy`, `cupy.cuda`, `cupy.cuda.nccl` and as the backend's."""
    cupy = FakeCupy()
    for name, module in (("cupy", cupy), ("cupy.cuda", cupy.cuda),
                         ("cupy.cuda.nccl", cupy.cuda.nccl)):
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(backend, "_cupy", cupy)
    return cupy


def on_ranks(n, fn, gpu=True):
    """[fn(world) for each rank], rank r run by thread r: world an NcclWorld (gpu_world over a
    ThreadWorld) or, gpu=False, the ThreadWorld itself; an error on a rank is raised here."""
    group, results, errors = Group(n), [None] * n, []

    def rank(r):
        try:
            world = ThreadWorld(group, r)
            results[r] = fn(nccl.gpu_world(world) if gpu else world)
        except BaseException as e:          # noqa: B036 - reported below, with its rank
            errors.append((r, e))
            group.barrier.abort()
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise min(errors, key=lambda e: isinstance(e[1], threading.BrokenBarrierError))[1]
    return results


# ----- the collectives ---------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 3])
@pytest.mark.parametrize("dtype, code", [(np.float32, 7), (np.float64, 8), (np.int64, 4)])
def test_allreduce_sums_and_broadcast_gives_the_roots_values_twice(fake, n, dtype, code):
    """ChainerMN's style: rank r's array filled with r + 1; after the allreduce every rank
    holds the sum, after a broadcast from the last rank its values; both run twice."""
    def rank(world):
        a = fake.asarray(np.full((2, 3), world.rank + 1, dtype))
        got = []
        for _ in range(2):
            assert world.allreduce_(a) is a
            got.append(a.copy())
            b = fake.asarray(np.arange(4, dtype=dtype) * (world.rank + 1))
            world.broadcast_(b, root=world.size - 1)
            got.append(b.copy())
            world.iallreduce_(a).wait()
        return got, world.comm.calls if n > 1 else []
    for got, calls in on_ranks(n, rank):
        s = n * (n + 1) // 2
        np.testing.assert_array_equal(got[0], np.full((2, 3), s, dtype))
        np.testing.assert_array_equal(got[2], np.full((2, 3), n * n * s, dtype))  # 2 more sums
        np.testing.assert_array_equal(got[1], np.arange(4, dtype=dtype) * n)
        if n > 1:
            assert calls[:2] == [("allReduce", 6, code, None), ("bcast", 4, code, n - 1)]


@pytest.mark.parametrize("total, n", [(7, 3), (6, 3), (1, 2), (10, 4)])
def test_unequal_parts_travel_padded_reduce_scatter_allgather_gather(fake, total, n):
    counts, starts = distributed.parts(total, n)

    def rank(world):
        r = world.rank
        send = fake.asarray(np.arange(total, dtype=np.float32) * (r + 1) + r)
        recv = fake.asarray(np.full(counts[r], -1, np.float32))
        world.reduce_scatter(send, recv, counts)
        a = fake.asarray(np.full(total, np.nan, np.float32))
        a[starts[r]:starts[r] + counts[r]] = 10 * r + np.arange(counts[r])
        world.allgather_(a, counts)
        own = fake.asarray(np.arange(counts[r], dtype=np.float32) + 100 * r)
        return recv.copy(), a.copy(), world.gather(own, counts, root=1), world.comm.calls
    expected = sum(np.arange(total, dtype=np.float32) * (r + 1) + r for r in range(n))
    gathered = np.concatenate([10 * r + np.arange(c) for r, c in enumerate(counts)])
    for r, (recv, a, full, calls) in enumerate(on_ranks(n, rank)):
        np.testing.assert_array_equal(recv, expected[starts[r]:starts[r] + counts[r]])
        np.testing.assert_array_equal(a, gathered)
        if r == 1:
            np.testing.assert_array_equal(
                full, np.concatenate([100 * q + np.arange(c) for q, c in enumerate(counts)]))
        else:
            assert full is None
        width = max(counts)                          # NCCL's equal parts: the widest one
        assert [c[:2] for c in calls] == [("reduceScatter", width), ("allGather", width),
                                          ("allGather", width)]


def test_numpy_arrays_and_objects_go_through_the_base_world(fake):
    def rank(world):
        a = np.full(3, world.rank + 1.0)                        # host stats: through "MPI"
        world.iallreduce_(a).wait()
        return a, world.sum(world.rank), world.allgather(world.rank), world.comm.calls
    for a, total, ranks, calls in on_ranks(2, rank):
        np.testing.assert_array_equal(a, [3.0, 3.0, 3.0])
        assert total == 1.0 and ranks == [0, 1] and calls == []


def test_one_unique_id_from_rank_0_broadcast_and_each_rank_on_its_gpu(fake):
    def rank(world):
        return world.comm.uid, world.comm.rank, world.comm.n, fake.local.device
    got = on_ranks(3, rank)
    assert len(fake.uids) == 1                                 # asked once, on rank 0
    assert got == [(fake.uids[0], r, 3, r) for r in range(3)]


def test_more_ranks_on_a_machine_than_gpus_is_one_clear_error(fake):
    fake.gpus = 2
    world = types.SimpleNamespace(local_rank=2, local_size=3)
    with pytest.raises(RuntimeError, match="3 ranks on this machine but 2 visible GPUs"):
        nccl.use_device(world, fake)
    assert nccl.use_device(types.SimpleNamespace(local_rank=1, local_size=2), fake) == 1
    assert fake.local.device == 1


def test_one_rank_on_a_gpu_keeps_its_world_and_needs_no_nccl(fake, monkeypatch):
    monkeypatch.setattr(distributed, "_world", None)
    monkeypatch.setattr(distributed, "_gpu_world", None)
    monkeypatch.setattr(distributed, "launch_info", lambda: None)      # no launcher
    monkeypatch.delattr(fake.cuda, "nccl")                             # CuPy without NCCL
    monkeypatch.setitem(sys.modules, "cupy.cuda.nccl", None)
    world = distributed.world(device="cuda")
    assert type(world) is distributed.SingleWorld and fake.local.device == 0
    assert distributed.world(device="cuda") is world is distributed.world()
    with pytest.raises(RuntimeError, match="needs CuPy with NCCL"):
        nccl.NcclWorld(world)


def test_bad_arrays_are_clear_errors(fake):
    def rank(world):
        with pytest.raises(TypeError, match="NCCL has no data type for complex128"):
            world.allreduce_(fake.asarray(np.zeros(2, complex)))
        with pytest.raises(ValueError, match="C-contiguous"):
            world.allreduce_(fake.asarray(np.zeros((3, 2)))[:, 0])
        with pytest.raises(ValueError, match="counts"):
            world.reduce_scatter(fake.zeros(5), fake.zeros(2), [2, 2])
        return True
    assert on_ranks(2, rank) == [True, True]


# ----- GradientReducer and ZeroAdamW through NcclWorld -------------------------------------
def training(n, zero, masked, steps=3, on_gpu=True):
    """On n ranks: steps of forward, backward, reduce, clip, step on each rank's
    micro-batches; each rank's [loss, norm, ...] and weights (NumPy). The models are built
    here, one thread, as tiny_gpt seeds the one global generator."""
    models = [worker.tiny_gpt() for _ in range(n)]
    return on_ranks(n, lambda w: train(w, models[w.rank], zero, masked, steps, on_gpu),
                    gpu=on_gpu)


def train(world, model, zero, masked, steps, on_gpu):
    if on_gpu:
        model.to("cuda")
    opt = worker.optimizer(model, zero, world)
    reducer = opt if zero else nn.GradientReducer(model.parameters(), world, bucket_mb=1e-3)
    losses = []
    for it in range(steps):
        opt.zero_grad()
        x, y = worker.micro_batch(it, world.rank, masked)
        _, loss = model(x, y)
        loss.backward()
        count = worker.counted(y) if masked else None
        losses.append(reducer.reduce(float(loss.item()), count=count).loss)
        losses.append(reducer.clip_grad_norm(0.05))
        opt.step()
    if on_gpu:                          # the gradients and weights went through NCCL
        names = {c[0] for c in world.comm.calls}
        assert names == ({"reduceScatter", "allGather"} if zero else {"allReduce"})
        assert all(isinstance(p.data, FakeArray) for p in model.parameters())
        assert not zero or isinstance(opt.m, FakeArray)
    return losses, [backend.to_numpy(p.data) for p in model.parameters()]


@pytest.mark.parametrize("zero", [False, True], ids=["GradientReducer", "ZeroAdamW"])
@pytest.mark.parametrize("masked", [False, True], ids=["mean", "token-weighted"])
def test_training_through_nccl_equals_the_cpu_path_bit_for_bit(fake, zero, masked):
    gpu, cpu = training(2, zero, masked), training(2, zero, masked, on_gpu=False)
    for (losses, weights), (cpu_losses, cpu_weights) in zip(gpu, cpu):
        assert losses == cpu_losses
        for a, b in zip(weights, cpu_weights):
            np.testing.assert_array_equal(a, b)
    assert gpu[0][0] == gpu[1][0]                               # every rank alike


def test_one_process_accumulating_gives_the_same_weights(fake):
    """2 ranks through NcclWorld = one process, 2 accumulation steps (float64)."""
    (_, weights), _ = training(2, True, False)
    model = worker.tiny_gpt()
    opt = worker.optimizer(model)
    for it in range(3):
        worker.reference_step(model, opt, it, 2, clip=0.05)
    for a, p in zip(weights, model.parameters()):
        np.testing.assert_allclose(a, p.data, rtol=1e-9, atol=1e-12)


def test_a_gpu_model_across_ranks_needs_an_nccl_world(fake):
    model = worker.tiny_gpt()
    model.to("cuda")
    world = ThreadWorld(Group(2), 0)                            # an MPI world: no NCCL
    with pytest.raises(RuntimeError, match="need an NCCL world.*world\\(device='cuda'\\)"):
        nn.GradientReducer(model.parameters(), world)
    with pytest.raises(RuntimeError, match="need an NCCL world"):
        worker.optimizer(model, True, world)


def test_a_cpu_run_imports_neither_cupy_nccl_nor_nn_nccls_cuda_modules():
    probe = ("import sys, nn\nw = nn.distributed.world()\n"
             "print(sorted(m for m in sys.modules if m.startswith(('cupy.cuda.nccl', 'mpi4py'))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          check=True, env={"PATH": "/usr/bin:/bin"})
    assert done.stdout.strip() == "[]"


# ----- the CLIs' choice of world (tinygrad_gpt/agreement.py world_on) -------------------------
def test_the_clis_world_for_cuda_is_nccl_across_ranks_and_a_gpu_shortage_one_agreed_error(fake):
    from tinygrad_gpt import ranks
    from tinygrad_gpt.cli import UserError
    single = distributed.SingleWorld()
    assert ranks.world_on(single, "cpu") is single
    assert ranks.world_on(single, "cuda") is single and fake.local.device == 0
    worlds = on_ranks(2, lambda world: ranks.world_on(world, "cuda"), gpu=False)
    assert [type(w).__name__ for w in worlds] == ["NcclWorld", "NcclWorld"]
    fake.gpus = 1                                       # two ranks on a machine with one GPU

    def refused(world):
        with pytest.raises(UserError) as error:
            ranks.world_on(world, "cuda")
        return str(error.value), getattr(error.value, "agreed", False)
    for message, agreed in on_ranks(2, refused, gpu=False):
        assert agreed and message.startswith("--device cuda: 2 ranks on this machine but 1 "
                                             "visible GPU")
