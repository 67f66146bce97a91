"""`mpiexec -n 2 python -m tinygrad_gpt.train`: two ranks train what one process trains
with twice the accumulation steps in the same (per_step) batch stream; errors are one line
on rank 0; a checkpoint of 2 ranks resumes on 2 or on 1. Skipped without mpiexec/mpi4py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tinygrad_gpt import checkpoint

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install "
                                "-e '.[mpi]')")
TINY = ["--n_layer=1", "--n_embd=16", "--n_head=2", "--block_size=8", "--batch_size=2",
        "--eval_iters=3", "--eval_interval=2", "--sample_tokens=0", "--log_interval=1",
        "--warmup_iters=0", "--learning_rate=1e-2"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    (folder / "c.txt").write_text("".join(rng.choice(list("abcdefgh \n"), 6000)))
    return folder / "c.txt"


def environment(cache):
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "TINYGRAD_GPT_CACHE": str(cache), "OPENBLAS_NUM_THREADS": "1"}


def train(args, tmp_path, ranks=2, expect=0):
    """Run train on `ranks` ranks (1: no launcher); its CompletedProcess."""
    command = [sys.executable, "-m", "tinygrad_gpt.train", *args]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    out = subprocess.run(command, env=environment(tmp_path / "cache"), capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == expect, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def metrics(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [(r["iter"], r["loss"]) for r in rows if "loss" in r]
    evals = [(r["iter"], r["train_loss"], r["val_loss"]) for r in rows if "val_loss" in r]
    return np.array(steps), np.array(evals)


def weights(out_dir):
    info, model, optim = checkpoint.load(out_dir)
    return info, model, optim


def assert_same_run(a, b, rtol):
    (sa, ea), (sb, eb) = metrics(a), metrics(b)
    assert sa.shape == sb.shape and ea.shape == eb.shape and len(sa) > 0
    np.testing.assert_allclose(sa, sb, rtol=rtol, atol=0)          # every step's loss
    np.testing.assert_allclose(ea, eb, rtol=rtol, atol=0)          # every evaluation
    ia, wa, oa = weights(a)
    ib, wb, ob = weights(b)
    assert ia["iter"] == ib["iter"]
    for name in wa:
        np.testing.assert_allclose(wa[name], wb[name], rtol=rtol, atol=rtol)
    for name in ("m", "v"):
        scale = float(np.abs(ob[name]).max())     # float32: moments of rounding-noise gradients
        np.testing.assert_allclose(oa[name], ob[name], rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("dtype, extra, rtol", [
    ("float64", [], 1e-10),
    ("float64", ["--zero=1", "--grad_clip=0.05"], 1e-10),    # ZeRO-1, clipping every step
    ("float32", ["--bucket_mb=0.001"], 1e-5),                 # many buckets
])
def test_two_ranks_train_what_one_process_trains_with_twice_the_accumulation(
        corpus, tmp_path, dtype, extra, rtol):
    common = [f"--data={corpus}", "--max_iters=5", f"--dtype={dtype}", *TINY, *extra]
    out = train([*common, f"--out_dir={tmp_path / 'two'}"], tmp_path)
    assert out.stdout.count("done:") == 1                      # rank 0 alone prints
    assert checkpoint.read_info(tmp_path / "two")["world_size"] == 2
    assert checkpoint.read_info(tmp_path / "two")["train_config"]["batch_stream"] == "per_step"
    train([*common, f"--out_dir={tmp_path / 'one'}", "--gradient_accumulation_steps=2",
           "--batch_stream=per_step"], tmp_path, ranks=1)
    assert_same_run(tmp_path / "two", tmp_path / "one", rtol)


def test_a_checkpoint_of_two_ranks_resumes_on_two_and_on_one(corpus, tmp_path):
    common = [f"--data={corpus}", "--dtype=float64", "--zero=1", *TINY]
    train([*common, "--max_iters=6", f"--out_dir={tmp_path / 'full'}"], tmp_path)
    train([*common, "--max_iters=2", f"--out_dir={tmp_path / 'cut'}"], tmp_path)
    shutil.copytree(tmp_path / "cut", tmp_path / "cut1")
    train(["--resume", "--max_iters=6", f"--out_dir={tmp_path / 'cut'}"], tmp_path)
    steps_full, evals_full = metrics(tmp_path / "full")
    steps_cut, evals_cut = metrics(tmp_path / "cut")
    assert np.array_equal(steps_full, steps_cut) and np.array_equal(evals_full, evals_cut)
    train(["--resume", "--max_iters=6", f"--out_dir={tmp_path / 'cut1'}"], tmp_path, ranks=1)
    assert checkpoint.read_info(tmp_path / "cut1")["train_config"][
        "gradient_accumulation_steps"] == 2                     # 2 ranks x 1 -> 1 x 2
    assert_same_run(tmp_path / "full", tmp_path / "cut1", 1e-10)


def test_a_bad_setting_is_one_line_from_rank_0_and_every_rank_exits(corpus, tmp_path):
    out = train([f"--data={corpus}", "--n_embd=15", f"--out_dir={tmp_path / 'r'}",
                 *TINY[2:]], tmp_path, expect=2)
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "n_embd" in lines[0], out.stderr
    assert not (tmp_path / "r").exists()


def test_ranks_that_disagree_on_the_settings_refuse_to_start(corpus, tmp_path):
    base = [sys.executable, "-m", "tinygrad_gpt.train", f"--data={corpus}", *TINY,
            f"--out_dir={tmp_path / 'r'}", "--max_iters=2"]
    out = subprocess.run([MPIEXEC, "-n", "1", *base, "--seed=1", ":", "-n", "1", *base,
                          "--seed=2"], env=environment(tmp_path / "cache"),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "disagree on settings" in lines[0] and "seed" in lines[0], \
        out.stderr
    assert not (tmp_path / "r" / "ckpt.json").exists()


def test_parallel_on_with_two_ranks_on_one_machine_is_refused(corpus, tmp_path):
    out = train([f"--data={corpus}", "--parallel=on", f"--out_dir={tmp_path / 'r'}", *TINY],
                tmp_path, expect=2)
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "--parallel off" in lines[0], out.stderr


def test_one_process_imports_no_mpi(corpus, tmp_path):
    argv = [f"--data={corpus}", f"--out_dir={tmp_path / 'r'}", "--max_iters=1", *TINY]
    code = ("import sys; from tinygrad_gpt import train; "
            f"rc = train.main({argv!r}); assert rc == 0, rc; "
            "assert 'mpi4py' not in sys.modules; print('ok')")
    env = {k: v for k, v in environment(tmp_path / "cache").items()
           if not k.startswith(("OMPI_", "PMI", "PMIX", "MV2_"))}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def rank_pids(out_dir):
    """The pids of the train processes writing to out_dir (the ranks), from /proc."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                words = f.read().decode(errors="replace").split("\0")
        except (OSError, ValueError):
            continue
        launcher = os.path.basename(words[0]).startswith(("mpiexec", "mpirun", "prte"))
        if not launcher and "tinygrad_gpt.train" in words and f"--out_dir={out_dir}" in words:
            pids.append(int(entry))
    return sorted(pids)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the ranks")
def test_sigterm_on_one_rank_stops_every_rank_at_the_same_step_with_one_checkpoint(
        corpus, tmp_path):
    out_dir = tmp_path / "r"
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "tinygrad_gpt.train",
               f"--data={corpus}", f"--out_dir={out_dir}", *TINY, "--max_iters=5000",
               "--eval_interval=10000"]
    job = subprocess.Popen(command, env=environment(tmp_path / "cache"),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):                             # until rank 0 has logged 5 steps
            metrics_file = out_dir / "metrics.jsonl"
            if metrics_file.exists() and len(metrics_file.read_text().splitlines()) > 5:
                break
            time.sleep(0.05)
        pids = rank_pids(out_dir)
        assert len(pids) == 2, pids
        os.kill(pids[-1], signal.SIGTERM)                # one rank only
        stdout, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode != 0
    assert stdout.count("checkpoint saved at iteration") == 1, stdout + stderr
    assert "interrupted by a signal to another rank" in stdout     # rank 1 had the SIGTERM
    steps, _ = metrics(out_dir)
    info, _, _ = checkpoint.load(out_dir)            # loadable, and after the last step
    assert info["iter"] == int(steps[-1][0]) + 1 < 5000
    assert info["world_size"] == 2


FULL_DISK_ON_RANK_0 = """
import errno, sys
import nn
from tinygrad_gpt import checkpoint, train
saves = []
def full_disk(name):
    if name == "start":
        saves.append(1)
        if len(saves) == 2 and nn.distributed.world().is_root:
            raise OSError(errno.ENOSPC, "No space left on device")
checkpoint._step = full_disk
sys.exit(train.main(sys.argv[1:]))
"""


def test_a_failed_save_on_rank_0_stops_every_rank_and_keeps_the_last_checkpoint(corpus,
                                                                               tmp_path):
    script = tmp_path / "full_disk.py"
    script.write_text(FULL_DISK_ON_RANK_0)
    out = subprocess.run([MPIEXEC, "-n", "2", sys.executable, str(script), f"--data={corpus}",
                          f"--out_dir={tmp_path / 'r'}", *TINY, "--max_iters=6"],
                         env=environment(tmp_path / "cache"), capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "disk is full" in lines[0], out.stderr
    assert checkpoint.load(tmp_path / "r")[0]["iter"] == 0        # the first save, intact


def test_the_memory_estimate_is_per_rank():
    from gpt import GPTConfig
    from tinygrad_gpt import memory
    config = GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32)
    P = config.num_parameters()
    one = memory.estimate(config, 4)
    plain = memory.estimate(config, 4, n_ranks=2)
    zero = memory.estimate(config, 4, n_ranks=2, zero=1)
    assert "reduce buffers" not in one
    assert plain["reduce buffers"] == P * 4 and plain["optimizer moments"] == 2 * P * 4
    assert zero["reduce buffers"] == (P + P // 2) * 4 and zero["optimizer moments"] == P * 4
    assert plain["activations"] == one["activations"] and plain["batch"] == one["batch"]
