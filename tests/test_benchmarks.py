"""The benchmark scripts run end to end (smoke size, our side only) and write the JSON
that benchmarks/README.md quotes; the train-step pooling takes the median of all steps."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
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
