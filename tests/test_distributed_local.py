"""nn.distributed, nn.GradientReducer, nn.ZeroAdamW in one process (no MPI): launch
detection from the environment with no mpi4py imported, the single-process world, the
bucket and shard arithmetic (Hypothesis), ZeroAdamW on one rank bit for bit nn.AdamW, and
the errors. Across ranks: tests/test_distributed.py.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, strategies as st

import distributed_worker as worker
import nn
import tensor.fast
from nn import distributed
from nn.reducer import plan_buckets
from nn.zero import shard_segments

LAUNCH_VARS = ("OMPI_", "PMI_", "PMIX_", "MPI_LOCALRANKID", "MV2_")
PROBE = ("import json, sys, numpy as np, nn\n"
         "w = nn.distributed.world()\n"
         "a = np.arange(3.0)\n"
         "ok = (w.allreduce_(a) is a and list(a) == [0, 1, 2] and w.sum(2.5) == 2.5\n"
         "      and w.allgather('x') == ['x'] and w.any(True) and not w.any(False))\n"
         "w.check_agree('settings', {'lr': 1})\n"
         "print(json.dumps([type(w).__name__, w.rank, w.size, ok, 'mpi4py' in sys.modules]))")


@pytest.mark.parametrize("launch", [{}, {"OMPI_COMM_WORLD_SIZE": "1", "OMPI_COMM_WORLD_RANK": "0"},
                                    {"PMI_SIZE": "1", "PMI_RANK": "0"}],
                         ids=["no launcher", "mpiexec -n 1", "hydra -n 1"])
def test_a_single_process_world_imports_no_mpi4py(launch):
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARS)}
    done = subprocess.run([sys.executable, "-c", PROBE], env={**env, **launch},
                          capture_output=True, text=True, check=True)
    assert done.stdout.strip() == '["SingleWorld", 0, 1, true, false]'


@pytest.mark.parametrize("environ, expected", [
    ({}, None),
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "2",
      "OMPI_COMM_WORLD_LOCAL_RANK": "0", "PMIX_RANK": "2"}, ("Open MPI", 4, 2, 0)),
    ({"PMI_SIZE": "3", "PMI_RANK": "1", "MPI_LOCALRANKID": "1"}, ("MPICH/Hydra", 3, 1, 1)),
    ({"MV2_COMM_WORLD_SIZE": "2", "MV2_COMM_WORLD_RANK": "1"}, ("MVAPICH2", 2, 1, None)),
    ({"PMIX_RANK": "5"}, ("PMIx", None, 5, None)),
])
def test_launch_read_from_the_launchers_variables(environ, expected):
    launch = distributed.launch_info(environ)
    got = launch and (launch.launcher, launch.size, launch.rank, launch.local_rank)
    assert got == expected


@pytest.mark.parametrize("environ", [{"PMI_SIZE": "2", "PMI_RANK": "x"},
                                     {"OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "2"}])
def test_a_broken_launch_environment_is_one_clear_error(environ):
    with pytest.raises(ValueError, match="launcher's environment is broken"):
        distributed.launch_info(environ)


def test_more_than_one_rank_without_mpi4py_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mpi4py", None)        # import mpi4py now fails
    with pytest.raises(RuntimeError, match=r'rank 1 of 2.*pip install -e "\.\[mpi\]"'):
        distributed.connect(distributed.Launch("Open MPI", 2, 1, 1))


def test_fingerprints_follow_values_not_key_order():
    f = distributed.fingerprint
    assert f({"a": 1, "b": [2, 3]}) == f({"b": [2, 3], "a": 1}) != f({"a": 1, "b": [2, 4]})
    assert f(np.zeros(3)) != f(np.zeros(3, np.float32)) != f(np.zeros((1, 3), np.float32))
    assert f(b"abc") == f("abc") != f("abd")


@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=30),
       itemsize=st.sampled_from([4, 8]), cap=st.integers(1, 2000))
def test_buckets_hold_every_parameter_once_last_first_within_the_cap(sizes, itemsize, cap):
    buckets = plan_buckets(sizes, itemsize, cap / 2 ** 20)
    assert [i for b in buckets for i in b] == list(reversed(range(len(sizes))))
    for k, bucket in enumerate(buckets):
        nbytes = sum(sizes[i] for i in bucket) * itemsize
        assert nbytes <= cap or len(bucket) == 1                  # a big one on its own
        if k + 1 < len(buckets):                                  # and none closed too soon
            assert nbytes + sizes[buckets[k + 1][0]] * itemsize > cap


@given(sizes=st.lists(st.integers(1, 50), min_size=1, max_size=12), n=st.integers(1, 7))
def test_shards_cover_every_value_of_every_parameter_once(sizes, n):
    counts, starts = distributed.parts(sum(sizes), n)
    assert sum(counts) == sum(sizes) and max(counts) - min(counts) <= 1
    covered = [np.zeros(s, int) for s in sizes]
    for lo, count in zip(starts, counts):
        for i, a, b, start in shard_segments(sizes, lo, lo + count):
            assert 0 <= a < b <= count
            covered[i][start:start + b - a] += 1
    assert all((c == 1).all() for c in covered)


@pytest.mark.parametrize("fast", [False, True], ids=["reference ops", "fast kernels"])
def test_zero_on_one_rank_is_adamw_bit_for_bit(fast):
    """Decay groups, clipping, a parameter without a gradient for a step, and state_dict in
    nn.AdamW's layout; a state loaded back continues identically."""
    if fast:
        tensor.fast.enable(tune_malloc=False)
    models = [worker.tiny_gpt(), worker.tiny_gpt()]
    plain, zero = worker.optimizer(models[0]), worker.optimizer(models[1], zero=True)
    for it in range(4):
        for model, opt in zip(models, (plain, zero)):
            opt.zero_grad()
            model(*worker.micro_batch(it, 0))[1].backward()
            if it == 1:
                model.parameters()[3].grad = None
            if opt is zero:
                assert zero.reduce(0.5).loss == 0.5
                norm = zero.clip_grad_norm(0.05)
            else:
                norm_plain = nn.clip_grad_norm(opt.params, 0.05)   # the flat layout's order
            opt.step()
        assert norm == norm_plain > 0.05
        for a, b in zip(*(m.parameters() for m in models)):
            np.testing.assert_array_equal(a.data, b.data)
    state = plain.state_dict()
    for key, value in zero.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    again = worker.optimizer(models[1], zero=True)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.state_dict()["v"], state["v"])


def test_reducer_and_zero_refuse_bad_input():
    model = worker.tiny_gpt()
    with pytest.raises(ValueError, match="bucket_mb must be a positive"):
        nn.GradientReducer(model.parameters(), bucket_mb=0)
    reducer = nn.GradientReducer(model.parameters())
    with pytest.raises(ValueError, match="count must be"):
        reducer.reduce(1.0, count=-1)
    with pytest.raises(ValueError, match="no rank counted any target"):
        reducer.reduce(float("nan"), count=0)
    zero = worker.optimizer(model, zero=True)
    with pytest.raises(RuntimeError, match="call reduce"):
        zero.step()
    with pytest.raises(ValueError, match="has shape"):
        zero.load_state_dict({"t": 1, "m": np.zeros(3), "v": np.zeros(3)})
    model.parameters()[0].data = model.parameters()[0].data.astype(np.float32)
    with pytest.raises(TypeError, match="mix dtypes"):
        nn.GradientReducer(model.parameters())


def test_on_n_ranks_each_rank_draws_its_own_dropout_masks_at_every_step(monkeypatch):
    """tinygrad_gpt/ranks.py's train_batch seeds dropout from (seed, it, rank) on N ranks:
    two ranks draw different masks, a step drawn again draws the same ones (resume)."""
    from types import SimpleNamespace

    from tensor import backend
    from tinygrad_gpt import ranks, settings
    monkeypatch.setattr(backend, "_seed", backend._seed)         # put back afterwards
    monkeypatch.setattr(backend, "_generators", {})
    dataset = SimpleNamespace(train=np.arange(1000) % 50)
    config = settings.TrainConfig(batch_stream="per_step", block_size=8, batch_size=2)

    def masks(rank, it):
        ranks.train_batch(dataset, config, SimpleNamespace(rank=rank, size=2), it, None)
        return backend.generator("cpu").random(8)
    assert not np.array_equal(masks(0, 3), masks(1, 3))
    np.testing.assert_array_equal(masks(1, 3), masks(1, 3))
    assert not np.array_equal(masks(1, 3), masks(1, 4))
