"""The benchmark scripts run end to end (smoke size, our side only) and write the JSON
that benchmarks/README.md quotes; the train-step pooling takes the median of all steps; the
full-val yardstick of bench_e2e is the mean cross-entropy it says; ab_commits pairs and
compares two checkouts."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import ab_commits  # noqa: E402
import bench_e2e  # noqa: E402
import bench_train_step  # noqa: E402


def test_run_all_quick_writes_one_json_with_every_benchmark(tmp_path):
    text = tmp_path / "poem.txt"
    text.write_text("".join(f"Line {i}: the quick brown fox jumps over the lazy dog.\n"
                            for i in range(400)))
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_all.py"),
                           "--quick", "--no-torch", "--data", str(text), "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results) == {"meta", "train_step", "generate", "e2e"}
    ours = results["train_step"]["results"]["XS"]["ours"]
    assert ours["median_s"] > 0 and len(ours["times_s"]) == 2 and ours["peak_rss_mb"] > 0
    assert 0 < ours["fraction_of_peak"] < 1
    e2e = results["e2e"]["results"]["ours"]
    assert e2e["final_iter"] == 20 and 0 < e2e["val_loss"] < 10
    # the final checkpoint scored on every whole 64-token window of the val split
    assert e2e["scored_iter"] == 20 and 0 < e2e["full_val_loss"] < 10
    val_chars = len(text.read_text()) - int(0.9 * len(text.read_text()))
    assert val_chars - 64 <= e2e["full_val_tokens"] < val_chars
    assert e2e["full_val_tokens"] % 64 == 0
    assert "torch" not in results["train_step"]["results"]["XS"]


def test_gemm_floor_times_every_linear_product_of_our_model(tmp_path):
    """gemm_floor.py reads the Linears off our GPT (4 per attention, 2 per MLP, per layer,
    and the tied LM head), times their 3 products each, and reports our step beside them."""
    import gemm_floor
    shape = bench_train_step.SHAPES["XS"]
    C, V, L = shape["n_embd"], shape["vocab_size"], shape["n_layer"]
    pairs = gemm_floor.linear_shapes(shape)
    assert sorted(pairs) == sorted([(C, C)] * 4 * L + [(C, 4 * C), (4 * C, C)] * L + [(C, V)])
    out = tmp_path / "floor.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gemm_floor.py"),
                           "--quick", "--no-torch", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.read_text())["summary"]["XS"]
    N = shape["batch"] * shape["block_size"]
    assert row["products"] == 3 * len(pairs)
    assert row["gemm_gflop"] == pytest.approx(sum(6 * N * a * b for a, b in pairs) / 1e9)
    assert 0 < min(row["floor_ms"].values()) and row["ours_step_ms"] > 0
    assert "torch_step_ms" not in row


def test_rounds_pool_every_step_and_keep_the_highest_rss():
    shape = bench_train_step.SHAPES["XS"]
    children = [{"n_params": 1000, "median_s": 0.2, "times_s": [0.1, 0.2, 0.3],
                 "peak_rss_mb": 50.0, "load_at_start": 0.5, "losses": [4.0],
                 "adjacent_peak_gflops": 100.0, "steal_pct": 3.0},
                {"n_params": 1000, "median_s": 0.9, "times_s": [0.8, 0.9, 1.0],
                 "peak_rss_mb": 70.0, "load_at_start": 1.5, "losses": [4.0],
                 "adjacent_peak_gflops": 50.0, "steal_pct": 40.0}]
    merged = bench_train_step.merge_runs(children, shape)
    assert merged["times_s"] == [0.1, 0.2, 0.3, 0.8, 0.9, 1.0]
    assert merged["median_s"] == pytest.approx(0.55)
    assert merged["peak_rss_mb"] == 70.0 and merged["load_at_start"] == 1.5
    assert merged["steal_pct"] == 40.0 and merged["round_steal_pct"] == [3.0, 40.0]
    tokens = shape["batch"] * shape["block_size"]
    assert merged["tokens_per_s"] == pytest.approx(tokens / 0.55)
    # each child's own GFLOP/s over the peak measured around its own steps, then the median
    flops = bench_train_step.flops_per_token(1000, shape) * tokens / 1e9
    assert merged["round_fraction_of_adjacent_peak"] == pytest.approx(
        [flops / 0.2 / 100.0, flops / 0.9 / 50.0])
    assert merged["fraction_of_adjacent_peak"] == pytest.approx(
        (flops / 0.2 / 100.0 + flops / 0.9 / 50.0) / 2)
    assert bench_train_step.merge_runs([{"error": "boom"}] + children, shape) == {"error": "boom"}


def test_steps_are_shared_among_rounds():
    assert [len(r) for r in bench_train_step._split(12, 3)] == [4, 4, 4]
    assert [len(r) for r in bench_train_step._split(10, 3)] == [4, 3, 3]


def test_a_child_the_host_disturbed_is_run_again_and_the_least_disturbed_try_kept(monkeypatch):
    steals = iter([60.0, 35.0, 50.0])
    calls = []

    def fake_child(argv, env, timeout=None):
        calls.append(argv)
        return {"median_s": 1.0, "steal_pct": next(steals)}
    monkeypatch.setattr(bench_train_step.common, "run_child", fake_child)
    args = bench_train_step.parse_args(["--max-steal", "10", "--retries", "2"])
    result = bench_train_step.run_child("ours", "S", args, 4)
    assert len(calls) == 3 and result["steal_pct"] == 35.0
    assert result["discarded_tries_steal_pct"] == [60.0, 50.0]
    steals = iter([5.0])
    assert bench_train_step.run_child("ours", "S", args, 4)["steal_pct"] == 5.0
    args = bench_train_step.parse_args([])                     # without --max-steal: one try
    steals, calls[:] = iter([90.0]), []
    assert bench_train_step.run_child("ours", "S", args, 4)["steal_pct"] == 90.0
    assert len(calls) == 1


def test_steal_percent_is_the_stolen_share_of_the_cpu_time_between_two_readings():
    import common
    assert common.steal_percent((1000, 10), (1200, 60)) == pytest.approx(25.0)
    assert common.steal_percent((1000, 10), (1000, 10)) is None      # no time passed
    assert common.steal_percent(None, (1200, 60)) is None            # no /proc/stat
    ticks = common.cpu_ticks()
    if os.path.exists("/proc/stat"):
        assert ticks[0] > 0 and 0 <= ticks[1] <= ticks[0]


# ----- bench_e2e.full_split_loss: one yardstick for ours and nanoGPT's model --------------
def test_uniform_logits_score_log_V_on_every_window():
    ids = np.arange(1000) % 7
    seen = []

    def uniform(x):
        seen.append(x.copy())
        return np.zeros(x.shape + (7,), np.float32)
    loss, tokens = bench_e2e.full_split_loss(uniform, ids, block_size=16, batch_size=5)
    assert loss == pytest.approx(math.log(7), rel=1e-12)
    assert tokens == (999 // 16) * 16                  # whole windows only, tail left out
    windows = np.concatenate(seen)                     # (62, 16): s = 0, 16, 32, ...
    assert windows.shape == (62, 16)
    assert (windows == ids[:62 * 16].reshape(62, 16)).all()


@given(st.lists(st.integers(0, 4), min_size=3, max_size=80), st.integers(1, 9),
       st.integers(1, 4), st.integers(0, 2 ** 32 - 1))
def test_full_split_loss_is_the_mean_next_token_cross_entropy(ids, T, batch, seed):
    """A bigram table as the model: the loss equals the hand-summed -log softmax of every
    target in the whole windows, whatever the batch size."""
    ids = np.array(ids)
    if len(ids) < T + 1:
        with pytest.raises(ValueError):
            bench_e2e.full_split_loss(lambda x: np.zeros(x.shape + (5,)), ids, T)
        return
    table = np.random.default_rng(seed).normal(0, 3, (5, 5))          # logits[current, next]
    loss, tokens = bench_e2e.full_split_loss(lambda x: table[x], ids, T, batch_size=batch)
    n = (len(ids) - 1) // T * T
    log_p = table - np.log(np.exp(table).sum(axis=1, keepdims=True))
    expected = -np.mean([log_p[ids[i], ids[i + 1]] for i in range(n)])
    assert tokens == n and loss == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_val_ids_digest_tells_equal_splits_from_different_ones():
    a = np.array([1, 2, 3], np.uint16)
    assert bench_e2e.ids_digest(a) == bench_e2e.ids_digest(a.astype(np.int64))
    assert bench_e2e.ids_digest(a) != bench_e2e.ids_digest(a[::-1])


# ----- bench_train_step: ours as the CLI runs it, and --reference -------------------------
@pytest.mark.parametrize("parallel", ["off", "on"])
def test_the_timed_step_is_the_training_clis_step(parallel):
    """build_ours's step (written out, see its docstring) leaves the same losses and weights
    as tinygrad_gpt.train.step on the same model, batch and optimizer, bit for bit."""
    import functools

    import nn
    from tinygrad_gpt import train
    from tinygrad_gpt.settings import TrainConfig
    shape = bench_train_step.SHAPES["XS"]
    step, model, losses, is_parallel = bench_train_step.build_ours(shape, parallel)
    assert is_parallel == (parallel == "on")
    for _ in range(3):
        step()
    _, twin, _, _ = bench_train_step.build_ours(shape, "off")
    opt = nn.AdamW(nn.decay_groups(twin.parameters(), bench_train_step.WEIGHT_DECAY),
                   lr=bench_train_step.LR, betas=bench_train_step.BETAS)
    fb = nn.DataParallel(twin).forward_backward if parallel == "on" else \
        functools.partial(nn.forward_backward, twin)
    x, y = bench_train_step.batch(shape)
    config = TrainConfig(grad_clip=bench_train_step.CLIP)
    cli_losses = [train.step(twin, opt, fb, x, y, bench_train_step.LR, config)
                  for _ in range(3)]
    assert losses == cli_losses
    for p, q in zip(model.parameters(), twin.parameters()):
        assert np.array_equal(p.data, q.data)


def test_reference_children_run_with_the_fast_layer_off_and_the_clis_environment(monkeypatch):
    calls = []

    def fake_child(argv, env, timeout=None):
        calls.append((argv, env))
        return {"median_s": 1.0, "steal_pct": 0.0}
    monkeypatch.setattr(bench_train_step.common, "run_child", fake_child)
    monkeypatch.delenv("OPENBLAS_THREAD_TIMEOUT", raising=False)
    args = bench_train_step.parse_args(["--reference"])
    for kind in ("ours", "reference", "torch"):
        bench_train_step.run_child(kind, "S", args, 4)
    (ours, ours_env), (ref, ref_env), (torch_argv, torch_env) = calls
    assert ours[ours.index("--child") + 1] == "ours"
    assert ref[ref.index("--child") + 1] == "reference"
    assert ours_env["OPENBLAS_THREAD_TIMEOUT"] == ref_env["OPENBLAS_THREAD_TIMEOUT"] == "4"
    assert "OPENBLAS_THREAD_TIMEOUT" not in torch_env


def test_a_reference_child_times_the_reference_ops():
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks",
                                                        "bench_train_step.py"),
                           "--child", "reference", "--shape", "XS", "--steps", "1",
                           "--warmup", "0", "--quick"], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1].split(" ", 1)[1])
    # fast layer off; --parallel auto then stays off, as in the CLI with TINYGRAD_GPT_FAST=0
    assert result["fast"] is False and result["parallel"] is False


# ----- ab_commits: two checkouts, taking turns --------------------------------------------
def test_pairs_flip_the_order_and_the_ratio_is_the_median_of_the_pairs():
    args = ab_commits.parse_args(["--before", ROOT, "--pairs", "4"])
    order, times = [], {"before": iter([[1.0, 3.0], [2.0], [4.0], [1.0]]),
                        "after": iter([[1.0], [3.0], [2.0], [1.5]])}

    def measure(side):
        order.append(side)
        return {"times": next(times[side]), "peak_rss_mb": 10.0 if side == "before" else 9.0,
                "load_at_start": 0.5, "process_steal_pct": None, "summary": ""}
    runs = ab_commits.pairs(args, measure)
    assert order == ["before", "after", "after", "before"] * 2
    s = ab_commits.summarize(runs, lambda r: r["times"])
    assert s["ratios"] == [0.5, 1.5, 0.5, 1.5]          # per pair: after / before medians
    assert s["ratio"] == 1.0 and (s["ratio_min"], s["ratio_max"]) == (0.5, 1.5)
    assert s["before"]["median"] == 2.0 and s["after"]["median"] == 1.75
    assert s["before"]["peak_rss_mb"] == 10.0 and s["after"]["peak_rss_mb"] == 9.0
    runs["after"][1]["error"] = "boom"                  # a pair with an error is left out
    assert ab_commits.summarize(runs, lambda r: r["times"])["pairs"] == 3
    assert ab_commits.same(runs, lambda r: r["peak_rss_mb"]) is False


def test_children_get_their_own_tree_first_and_no_openblas_setting(monkeypatch):
    monkeypatch.setenv("OPENBLAS_THREAD_TIMEOUT", "1")
    monkeypatch.setenv("PYTHONPATH", "/elsewhere")
    env = ab_commits.child_env("/trees/before", 2)
    assert env["PYTHONPATH"] == "/trees/before" and "OPENBLAS_THREAD_TIMEOUT" not in env
    assert env["OPENBLAS_NUM_THREADS"] == "2"


def test_ab_quick_runs_each_trees_own_step_child(tmp_path):
    out = tmp_path / "ab.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ab_commits.py"),
                           "--before", ROOT, "--after", ROOT, "--quick", "--json", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    step = json.loads(out.read_text())["step"]["XS"]
    s = step["summary"]
    assert s["pairs"] == 1 and s["ratio"] > 0 and s["same_losses"] is True
    for side in ("before", "after"):
        child = step[side][0]
        assert child["imports"]["files"]["tensor"] == os.path.join(ROOT, "tensor",
                                                                  "__init__.py")
        assert child["imports"]["OPENBLAS_THREAD_TIMEOUT"] == "4"   # set by the child
        assert child["imports"]["fast_enabled"] is True
        assert child["peak_rss_mb"] > 0 and len(child["result"]["times_s"]) == 2


def test_finetune_bench_splits_our_steps_into_linear_products_and_the_rest(tmp_path):
    """bench_finetune.py --gemm (smoke size, our side): every kind's Linear-product time is
    found by the profile (not zero) and is a part of the whole step (the rest is the remainder)."""
    import bench_finetune
    assert bench_finetune.work_skipped(bench_finetune.SHAPE, "full") == 0
    assert 0.5 < bench_finetune.work_skipped(bench_finetune.SHAPE, "last_block") < 0.6
    out = tmp_path / "ft.json"
    kinds = "ours-full,ours-last_block,ours-lora"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_finetune.py"),
                           "--quick", "--gemm", "--kinds", kinds, "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(out.read_text())["summary"]
    assert set(summary) == set(kinds.split(","))
    for kind, row in summary.items():
        assert 0 < row["gemm_ms"] < row["median_ms"], kind
        assert math.isclose(row["gemm_ms"] + row["rest_ms"], row["median_ms"])
    assert summary["ours-lora"]["trainable"] < summary["ours-last_block"]["trainable"] \
        < summary["ours-full"]["trainable"]


def test_distributed_bench_runs_every_kind_on_two_ranks(tmp_path):
    """bench_distributed.py --quick: every default kind (one process with and without
    DataParallel, 2 ranks with and without overlap, ZeRO-1, PyTorch when installed) trains
    and reports its steps, the ranks their reduce times, and peak RSS."""
    import importlib.util
    import shutil
    pytest.importorskip("mpi4py")
    if shutil.which("mpiexec") is None:
        pytest.skip('mpiexec not found (pip install -e ".[mpi]")')
    out = tmp_path / "dist.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks",
                                                        "bench_distributed.py"),
                           "--quick", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = json.loads(out.read_text())["shapes"]["XS"]["runs"]
    expected = {"parallel-on", "parallel-off", "plain", "overlap-off", "zero"}
    assert set(runs) == expected | ({"torch"} if importlib.util.find_spec("torch") else set())
    for kind, results in runs.items():
        assert "error" not in results[0], (kind, results[0])
        assert len(results[0]["dt_ms"]) == 3 and results[0]["peak_rss_mb"] > 0, kind
        ranks = kind in ("plain", "overlap-off", "zero")
        assert len(results[0].get("reduce_ms", [])) == (3 if ranks else 0), kind


def test_gpu_bench_runs_on_the_cpu(tmp_path):
    """bench_gpu.py --device cpu --quick: the GPU benchmark's every path but the device's
    (ours and PyTorch when installed, step and generation) runs and reports its numbers."""
    import importlib.util
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_gpu.py"),
                           "--device", "cpu", "--quick", "--json", str(out)],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    step, generate = results["XS/step"], results["XS/generate"]
    assert set(step) == {"ours"} | ({"torch"} if importlib.util.find_spec("torch") else set())
    for who, runs in step.items():
        assert "error" not in runs[0], (who, runs[0])
        assert len(runs[0]["times_s"]) == 2 and runs[0]["peak_mb"] > 0 and runs[0]["loss"] > 0
    assert generate["ours"][0]["cached"] > 0 and generate["ours"][0]["uncached"] > 0


def test_gpu_check_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", os.path.join(ROOT, "benchmarks", "gpu_check.sh")],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
