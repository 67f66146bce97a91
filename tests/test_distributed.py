"""nn.distributed, nn.GradientReducer, nn.ZeroAdamW across ranks.

`mpiexec -n 2` (and -n 3) runs tests/distributed_worker.py once per rank count; its
results are compared here with one process computing the same steps by gradient
accumulation (distributed_worker.reference_step): the reduced gradients, the
token-weighted average with masked targets, AdamW and ZeRO-1 training with and without
clipping (float64, and float32 bit for bit on 2 ranks), resuming N -> 1 -> N, broadcast,
the agreement check, ChainerMN-style collectives. Skipped, with the reason, without
mpi4py or mpiexec. What needs no MPI: tests/test_distributed_local.py.
"""
import importlib.util
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import distributed_worker as worker
import nn

MPIEXEC = shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(
    MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
    reason='needs mpi4py and mpiexec: pip install -e ".[mpi]"')
LAUNCH_VARS = ("OMPI_", "PMI_", "PMIX_", "MPI_LOCALRANKID", "MV2_")
CLOSE = {"rtol": 1e-6, "atol": 1e-12}           # float64 models: far below this in fact


def run_ranks(n, out):
    """Rank r's results of `mpiexec -n n distributed_worker.py out`, r = 0..n-1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCH_VARS)}
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OPENBLAS_NUM_THREADS="1")
    version = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True).stdout
    extra = ["--oversubscribe"] if "Open MPI" in version and n > (os.cpu_count() or 1) else []
    command = [MPIEXEC, "-n", str(n), *extra, sys.executable, worker.__file__, str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, \
        f"{' '.join(command)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(n)]


@pytest.fixture(scope="module", params=[2, 3], ids=["2 ranks", "3 ranks"])
def ranks(request, tmp_path_factory):
    if MPIEXEC is None or importlib.util.find_spec("mpi4py") is None:
        pytest.skip('needs mpi4py and mpiexec: pip install -e ".[mpi]"')
    return run_ranks(request.param, tmp_path_factory.mktemp(f"ranks{request.param}"))


def reference_grads(n, masked=False, micro=None):
    """One process: (loss, {name: gradient}) of micro-batches `micro` (default 0..n-1) of
    iteration 0, by accumulation (scale 1/n) or, masked, over all counted targets."""
    model = worker.tiny_gpt()
    if masked:
        x, y = (np.concatenate(a) for a in zip(*[worker.micro_batch(0, j, True) for j in micro]))
        _, loss = model(x, y)
        loss.backward()
        loss = float(loss.item())
    else:
        loss = sum(nn.forward_backward(model, *worker.micro_batch(0, j), 1.0 / n) / n
                   for j in range(n))
    return loss, worker.grads_of(model)


def check_grads(result, label, expected):
    got = {k.split("/", 2)[2]: v for k, v in result.items() if k.startswith(f"{label}/grad/")}
    assert sorted(got) == sorted(expected)
    for name, g in expected.items():
        np.testing.assert_allclose(got[name], g, err_msg=f"{label}: {name}", **CLOSE)


@needs_mpi
def test_every_rank_ends_with_the_same_arrays(ranks):
    """Gradients, weights, losses and norms are bit for bit the same on every rank."""
    for key in ranks[0]:
        if key.startswith(("mean", "weighted", "holes", "ddp", "zero", "to_", "param/")) and \
                "/state/" not in key:
            for r, result in enumerate(ranks[1:], 1):
                assert np.array_equal(result[key], ranks[0][key]), f"{key}: rank {r} differs"


@needs_mpi
def test_mean_of_the_ranks_is_gradient_accumulation(ranks):
    n = len(ranks)
    loss, expected = reference_grads(n)
    for result in ranks:
        assert int(result["mean/buckets"]) == 1 and int(result["mean_small/buckets"]) > 10
        for label in ("mean", "mean_small"):
            check_grads(result, label, expected)
            assert float(result[f"{label}/loss"]) == pytest.approx(loss, rel=1e-12)
            assert float(result[f"{label}/count"]) == n


@needs_mpi
def test_token_weighted_mean_is_the_loss_over_all_counted_targets(ranks):
    n = len(ranks)
    loss, expected = reference_grads(n, masked=True, micro=range(n))
    counts = [worker.counted(worker.micro_batch(0, j, True)[1]) for j in range(n)]
    assert len(set(counts)) > 1                           # the ranks count differently
    for result in ranks:
        check_grads(result, "weighted", expected)
        assert float(result["weighted/loss"]) == pytest.approx(loss, rel=1e-12)
        assert float(result["weighted/count"]) == sum(counts)


@needs_mpi
def test_missing_gradients_count_as_zeros(ranks):
    """The last rank counts nothing; rank 0 lacks parameter 1's gradient; no rank has the
    last parameter's: sum over the ranks that have it of n_r g_r, over n = sum_r n_r."""
    n, names = len(ranks), [name for name, _ in worker.tiny_gpt().named_parameters()]
    micro = range(n - 1)
    loss, expected = reference_grads(n, masked=True, micro=micro)
    counts = [worker.counted(worker.micro_batch(0, j, True)[1]) for j in micro]
    _, rank0 = reference_grads(n, masked=True, micro=[0])
    expected[names[1]] = expected[names[1]] - counts[0] * rank0[names[1]] / sum(counts)
    if n == 2:                                            # rank 0 was the only one
        del expected[names[1]]
    del expected[names[-1]]
    for result in ranks:
        check_grads(result, "holes", expected)
        assert result["holes/none"][-1] and result["holes/none"][1] == (n == 2)
        assert float(result["holes/loss"]) == pytest.approx(loss, rel=1e-12)


@needs_mpi
@pytest.mark.parametrize("label", ["ovl_mean", "ovl_holes"])
def test_buckets_started_during_backward_give_the_same_bits(ranks, label):
    """GradientReducer.start's leaf_done (buckets sent while backward runs) against reduce
    alone: equal gradients and loss on every rank, with buckets really started early on the
    ranks that ran a backward (ovl_holes: the last rank runs none, rank 0 never reaches one
    parameter: the ranks start different numbers of buckets early, and nothing hangs)."""
    for r, result in enumerate(ranks):
        np.testing.assert_array_equal(result[f"{label}/overlap/grads"],
                                      result[f"{label}/plain/grads"], err_msg=f"rank {r}")
        assert result[f"{label}/overlap/loss"] == result[f"{label}/plain/loss"]
        np.testing.assert_array_equal(result[f"{label}/plain/grads"], ranks[0][f"{label}/plain/grads"])
        idle = label == "ovl_holes" and r == len(ranks) - 1
        assert (int(result[f"{label}/early"]) == 0) == idle, f"rank {r}"


@needs_mpi
def test_collectives_as_chainermn_checks_them(ranks):
    n = len(ranks)
    for result in ranks:
        for k in (1, 2):
            np.testing.assert_array_equal(result[f"fill{k}/grads"], k * (n - 1) / 2)
            np.testing.assert_array_equal(result[f"bcast{k}"], 10.0 * k)
        assert not result["fill1/stop"] and result["fill2/stop"]    # rank 1 asked, all stop
        assert float(result["sum"]) == n * (n + 1) / 2
        assert list(result["any"]) == [True, False]


@needs_mpi
def test_broadcast_makes_differently_seeded_ranks_rank_0s(ranks):
    expected = worker.tiny_gpt(seed=100).named_parameters()
    assert not np.array_equal(worker.tiny_gpt(101).parameters()[0].data, expected[0][1].data)
    for result in ranks:
        for name, p in expected:
            np.testing.assert_array_equal(result[f"param/{name}"], p.data, err_msg=name)


@needs_mpi
def test_agreement_check_names_the_rank_that_differs(ranks):
    last = len(ranks) - 1
    for result in ranks:
        settings, data = str(result["agree/settings"]), str(result["agree/data"])
        assert settings == (f"the ranks disagree on settings: rank {last} differs from rank 0 "
                            f"(batch_size: rank 0 has 4, rank {last} has 5); start every rank "
                            "with the same settings")
        assert data.startswith(f"the ranks disagree on data: rank {last} differs from rank 0")


@needs_mpi
@pytest.mark.parametrize("label", ["ddp_clip", "ddp_masked", "zero_clip", "zero_masked_clip"])
def test_training_on_ranks_equals_one_process(ranks, label):
    """5 AdamW steps (nn.AdamW + GradientReducer, or ZeroAdamW): losses, clipping norms,
    weights and rank 0's optimizer state equal one process's over the same batches."""
    masked, clip = "masked" in label, 0.05 if "clip" in label else 0.0
    model = worker.tiny_gpt()
    opt = worker.optimizer(model)
    steps = [worker.reference_step(model, opt, it, len(ranks), masked, clip)
             for it in range(worker.STEPS)]
    result = ranks[0]
    np.testing.assert_allclose(result[f"{label}/losses"], [s[0] for s in steps], rtol=1e-12)
    if clip:
        norms = [s[1] for s in steps]
        assert min(norms) > clip                              # every step clipped
        np.testing.assert_allclose(result[f"{label}/norms"], norms, rtol=1e-10)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(result[f"{label}/param/{name}"], p.data, err_msg=name, **CLOSE)
    state = opt.state_dict()
    assert int(result[f"{label}/state/t"]) == state["t"] == worker.STEPS
    for key in ("m", "v"):
        assert result[f"{label}/state/{key}"].shape == state[key].shape
        np.testing.assert_allclose(result[f"{label}/state/{key}"], state[key], **CLOSE)


@needs_mpi
@pytest.mark.parametrize("label", ["f32_ddp_clip", "f32_zero"])
def test_two_ranks_in_float32_are_one_process_bit_for_bit(ranks, label):
    """float32 on 2 ranks: (g0 + g1) / 2 is what one process gets when it makes each
    micro-batch's gradient (scaled by 1/2, exact) on its own and adds the two. (With 3
    ranks the order of MPI's sum is its own: rounding differs, and AdamW turns the
    rounding noise of the key biases' gradients, 0 in exact arithmetic, into visible
    weight differences; in float64 that noise stays far below AdamW's eps.)"""
    if len(ranks) != 2:
        pytest.skip("bit for bit needs a sum whose order one process can repeat: 2 ranks")
    clip = 0.05 if "clip" in label else 0.0
    model = worker.tiny_gpt(dtype=np.float32)
    opt = worker.optimizer(model)
    losses = [worker.reference_step(model, opt, it, 2, clip=clip, separate=True)[0]
              for it in range(worker.STEPS)]
    np.testing.assert_array_equal(ranks[0][f"{label}/losses"], losses)
    np.testing.assert_array_equal(ranks[0][f"{label}/params"],
                                  np.concatenate([p.data.reshape(-1) for p in model.parameters()]))


@needs_mpi
def test_optimizer_state_moves_between_rank_counts(ranks):
    """nn.AdamW's state after 3 steps continued by ZeroAdamW on N ranks, and ZeroAdamW's
    gathered state continued by one process, both end where 5 single-process steps end."""
    model = worker.tiny_gpt()
    opt = worker.optimizer(model)
    for it in range(worker.STEPS):
        worker.reference_step(model, opt, it, len(ranks))
    expected = np.concatenate([p.data.reshape(-1) for p in model.parameters()])
    for result in ranks:
        np.testing.assert_allclose(result["to_n/params"], expected, **CLOSE)
        np.testing.assert_allclose(result["to_1/params"], expected, **CLOSE)
