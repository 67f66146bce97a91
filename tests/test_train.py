"""The training pipeline end to end, on a tiny model and a few KB of text (seconds each)."""
import json
import math

import numpy as np
import pytest

from tinygrad_gpt import checkpoint, train
from tinygrad_gpt.checkpoint import load

TEXT = "".join(f"SPEAKER {i % 7}:\nO what a rogue and peasant slave am I, line {i}!\n\n"
               for i in range(120))
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=16", "--batch_size=4",
        "--eval_iters=2", "--sample_tokens=8", "--log_interval=1", "--warmup_iters=2",
        "--lr_decay_iters=30", "--learning_rate=3e-3"]


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def run(args, expect=0):
    code = train.main(args)
    assert code == expect, f"train exited with {code}, expected {expect}"


def metrics(out_dir):
    return [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]


def step_losses(out_dir):
    return {r["iter"]: r["loss"] for r in metrics(out_dir) if "loss" in r}


def test_tiny_run_writes_metrics_checkpoint_plot_and_samples(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    run([f"--data={corpus}", f"--out_dir={out}", "--max_iters=20", "--eval_interval=10", *TINY])
    rows = metrics(out)
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    assert [r["iter"] for r in steps] == list(range(20))
    assert set(steps[0]) == {"iter", "loss", "lr", "dt_ms", "tokens_per_s"}
    assert [r["iter"] for r in evals] == [0, 10, 20]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]          # it learned something
    info, weights, optim = load(out)
    assert info["iter"] == 20 and info["best_val_loss"] == min(r["val_loss"] for r in evals)
    assert (out / "tokenizer").is_dir() and (out / "loss.png").stat().st_size > 1000
    samples = (out / "samples.txt").read_text()
    assert [line for line in samples.splitlines() if line.startswith("=== iter")] == [
        f"=== iter {r['iter']} (val loss {r['val_loss']:.4f}) ===" for r in evals]
    printed = capsys.readouterr().out
    assert "parameters" in printed and "memory estimate" in printed and "best val loss" in printed


def test_resume_reproduces_the_uninterrupted_run_exactly(corpus, tmp_path):
    common = [f"--data={corpus}", "--eval_interval=5", "--dropout=0.1", *TINY]
    run([*common, f"--out_dir={tmp_path / 'full'}", "--max_iters=16"])
    run([*common, f"--out_dir={tmp_path / 'split'}", "--max_iters=10"])
    run(["--resume", f"--out_dir={tmp_path / 'split'}", "--max_iters=16"])
    full, split = step_losses(tmp_path / "full"), step_losses(tmp_path / "split")
    assert sorted(split) == list(range(16))
    assert split == full                                           # bit for bit, every step
    evals = lambda d: [r for r in metrics(d) if "val_loss" in r]   # noqa: E731
    assert evals(tmp_path / "split") == evals(tmp_path / "full")


def test_ctrl_c_saves_and_resume_continues_exactly(corpus, tmp_path, monkeypatch):
    common = [f"--data={corpus}", "--eval_interval=50", "--max_iters=12", *TINY]
    run([*common, f"--out_dir={tmp_path / 'full'}"])

    class CtrlCAfterSevenSteps(train.Interrupt):
        checks = 0

        @property
        def requested(self):
            type(self).checks += 1
            return type(self).checks >= 7

        @requested.setter
        def requested(self, value):
            pass

    monkeypatch.setattr(train, "Interrupt", CtrlCAfterSevenSteps)
    run([*common, f"--out_dir={tmp_path / 'cut'}"], expect=130)
    assert load(tmp_path / "cut")[0]["iter"] == 7
    monkeypatch.undo()
    run(["--resume", f"--out_dir={tmp_path / 'cut'}"])
    assert step_losses(tmp_path / "cut") == step_losses(tmp_path / "full")


def test_a_crash_while_writing_a_checkpoint_leaves_the_previous_one(corpus, tmp_path,
                                                                      monkeypatch):
    out = tmp_path / "run"
    run([f"--data={corpus}", f"--out_dir={out}", "--max_iters=4", "--eval_interval=2", *TINY])
    before = load(out)
    assert before[0]["iter"] == 4
    written = []

    def half_written(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"\x00" * 100)            # a torn file, then the process dies
        written.append(path)
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(checkpoint, "save_file", half_written)
    run(["--resume", f"--out_dir={out}", "--max_iters=8"], expect=130)   # one line, no trace
    assert written
    after = load(out)                        # still loadable, still the old iteration
    assert after[0]["iter"] == 4
    for name, array in before[1].items():
        np.testing.assert_array_equal(after[1][name], array)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")     # overflow is the point of this test
def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        run([f"--data={corpus}", f"--out_dir={out}", "--max_iters=40", "--eval_interval=2",
             "--learning_rate=1e30", "--grad_clip=0", "--decay_lr=false", *TINY[:-1]])
    assert stop.value.code == 1
    message = capsys.readouterr().err
    assert "loss became" in message and "last good checkpoint" in message
    info = load(out)[0]                      # loads: its weights are finite
    assert all(np.isfinite(v).all() for v in load(out)[1].values())
    assert math.isfinite(info["best_val_loss"])


def test_overfit_batch_drives_the_loss_near_zero(corpus, tmp_path):
    out = tmp_path / "run"
    run([f"--data={corpus}", f"--out_dir={out}", "--max_iters=150", "--eval_interval=1000",
         "--overfit_batch", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=8",
         "--batch_size=2", "--eval_iters=1", "--sample_tokens=0", "--log_interval=1",
         "--learning_rate=1e-2", "--warmup_iters=0", "--lr_decay_iters=150",
         "--min_lr=1e-3", "--weight_decay=0"])
    losses = step_losses(out)
    assert losses[0] > 2.0 and losses[149] < 0.05


def test_gradient_accumulation_equals_one_big_batch(corpus, tmp_path):
    """k micro-batches of B give the same update as one batch of k*B (same sequences)."""
    common = [f"--data={corpus}", "--max_iters=3", "--eval_interval=1000", "--eval_iters=1",
              "--sample_tokens=0", "--n_layer=1", "--n_head=2", "--n_embd=16",
              "--block_size=16", "--dtype=float64", "--log_interval=1"]
    run([*common, f"--out_dir={tmp_path / 'big'}", "--batch_size=8"])
    run([*common, f"--out_dir={tmp_path / 'acc'}", "--batch_size=4",
         "--gradient_accumulation_steps=2"])
    big, acc = load(tmp_path / "big")[1], load(tmp_path / "acc")[1]
    for name in big:
        np.testing.assert_allclose(acc[name], big[name], rtol=1e-10, atol=1e-12)
    for it, loss in step_losses(tmp_path / "big").items():
        assert step_losses(tmp_path / "acc")[it] == pytest.approx(loss, rel=1e-10)


def test_parallel_halves_train_the_same_as_one_thread(corpus, tmp_path, capsys):
    """--parallel on (both halves of each batch at once) and off give the same run (float64,
    no dropout, with gradient accumulation), and the CLI says when it is on."""
    common = [f"--data={corpus}", "--max_iters=4", "--eval_interval=2", "--eval_iters=1",
              "--sample_tokens=0", "--n_layer=1", "--n_head=2", "--n_embd=16",
              "--block_size=16", "--dtype=float64", "--log_interval=1", "--batch_size=5",
              "--gradient_accumulation_steps=2"]
    run([*common, f"--out_dir={tmp_path / 'on'}", "--parallel=on"])
    assert "parallel: each batch's two halves" in capsys.readouterr().out
    run([*common, f"--out_dir={tmp_path / 'off'}", "--parallel=off"])
    assert "parallel:" not in capsys.readouterr().out
    on, off = load(tmp_path / "on")[1], load(tmp_path / "off")[1]
    for name in off:
        np.testing.assert_allclose(on[name], off[name], rtol=1e-9, atol=1e-12)
    for it, loss in step_losses(tmp_path / "off").items():
        assert step_losses(tmp_path / "on")[it] == pytest.approx(loss, rel=1e-10)


def test_fast_kernels_train_the_same_as_the_reference_ops(corpus, tmp_path, monkeypatch):
    """The CLI runs tensor.fast's kernels; TINYGRAD_GPT_FAST=0 runs every op's reference
    code. In float64 (so rounding cannot hide a wrong kernel) the two runs agree to 1e-9,
    parallel halves and dropout off; the fast layer is off again after main() returns."""
    import tensor.fast
    common = [f"--data={corpus}", "--max_iters=4", "--eval_interval=2", "--eval_iters=1",
              "--sample_tokens=0", "--n_layer=2", "--n_head=2", "--n_embd=16",
              "--block_size=16", "--dtype=float64", "--log_interval=1", "--batch_size=4",
              "--parallel=off", "--grad_clip=0.5"]
    run([*common, f"--out_dir={tmp_path / 'fast'}"])
    assert not tensor.fast.enabled()
    monkeypatch.setenv("TINYGRAD_GPT_FAST", "0")
    run([*common, f"--out_dir={tmp_path / 'reference'}"])
    fast, reference = load(tmp_path / "fast")[1], load(tmp_path / "reference")[1]
    moved = False
    for name in reference:
        np.testing.assert_allclose(fast[name], reference[name], rtol=1e-9, atol=1e-12)
    for it, loss in step_losses(tmp_path / "reference").items():
        assert step_losses(tmp_path / "fast")[it] == pytest.approx(loss, rel=1e-9)
        moved = moved or it > 0 and loss != step_losses(tmp_path / "reference")[0]
    assert moved


def test_the_checkpoint_keeps_every_random_state_as_one_object(corpus, tmp_path):
    out = tmp_path / "run"
    run([f"--data={corpus}", f"--out_dir={out}", "--max_iters=3", "--eval_interval=3",
         "--dropout=0.1", "--parallel=on", *TINY])
    info = load(out)[0]
    state = info["random_state"]
    assert set(state) == {"batches", "dropout"}
    assert set(state["dropout"]) <= {"0", "1"} and "0" in state["dropout"]
    assert not any(key.startswith("dropout_rng") or key == "rng" for key in info)


def test_a_checkpoint_from_before_the_one_random_state_object_resumes_the_same(corpus,
                                                                                tmp_path):
    """Older checkpoints kept the random states as rng / dropout_rng / dropout_rng_stream1;
    resuming one gives exactly what resuming the same checkpoint in today's form gives."""
    import shutil
    common = [f"--data={corpus}", "--eval_interval=3", "--dropout=0.1", "--parallel=on", *TINY]
    new = tmp_path / "new"
    run([*common, f"--out_dir={new}", "--max_iters=3"])
    old = tmp_path / "old"
    shutil.copytree(new, old)
    meta = json.loads((old / "ckpt.json").read_text())
    state = meta.pop("random_state")
    meta["rng"], meta["dropout_rng"] = state["batches"], state["dropout"]["0"]
    if "1" in state["dropout"]:
        meta["dropout_rng_stream1"] = state["dropout"]["1"]
    (old / "ckpt.json").write_text(json.dumps(meta))
    for folder in (new, old):
        run([*common, f"--out_dir={folder}", "--max_iters=6", "--resume"])
    a, b = load(new)[1], load(old)[1]
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
