"""Signals and faults, with real processes: SIGTERM / SIGINT save one checkpoint and exit
143 / 130 (a second signal stops at once), kill -9 between every two steps of a save (child
processes replace checkpoint._step, a no-op) leaves a loadable checkpoint, a full disk keeps
the last checkpoint and stops the run, a second run on a busy --out_dir is refused."""
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import nn
import tensor
from gpt import GPT, GPTConfig
from tinygrad_gpt import checkpoint, classify, finetune, run_guard, sample, train

WORDS = ["good", "happy", "fine", "bad", "sad", "grim"]
TEXT = "".join(f"SPEAKER {i % 7}:\nO what a rogue and peasant slave am I, line {i}!\nthe day "
               f"was {WORDS[i % 6]}, by chance, quite {WORDS[i % 5]}.\n\n" for i in range(120))
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=16", "--block_size=8", "--batch_size=2",
        "--eval_iters=1", "--sample_tokens=0", "--log_interval=1", "--parallel=off"]
LONG = ["--max_iters=100000", "--eval_interval=100000"]       # runs until it is signalled
KILL = "os.kill(os.getpid(), signal.SIGKILL)"
TEAR = ("tmp = glob.glob('**/*.tmp', recursive=True)[0]; "   # a kill halfway through a write
        "os.truncate(tmp, os.path.getsize(tmp) // 2); " + KILL)
WRITE = """
import nn, tensor
from gpt import GPT, GPTConfig
tensor.manual_seed(2)
net = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
checkpoint.save(".", net, nn.AdamW(net.parameters()), {"iter": 2, "note": "new"})
"""


def hook(when, then):
    """Code that makes its process run `then` at the save step whose name makes `when` true."""
    return ("import glob, os, signal, time\nfrom tinygrad_gpt import checkpoint\n"
            f"def step(name):\n    if {when}:\n        {then}\ncheckpoint._step = step\n")


def tiny_net(seed):
    tensor.manual_seed(seed)
    net = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
    return net, nn.AdamW(net.parameters())


@pytest.fixture
def corpus(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYGRAD_GPT_CACHE", str(tmp_path / "cache"))
    (path := tmp_path / "tiny.txt").write_text(TEXT, encoding="utf-8")
    return path


def start(tmp_path, args, module="tinygrad_gpt.train", prelude=""):
    """A real `python -m module args` (prelude run first, in the same process)."""
    code = prelude + f"\nimport runpy, sys\nsys.argv = ['x', *{list(map(str, args))!r}]\n" \
        f"runpy.run_module({module!r}, run_name='__main__')\n"
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)


def finish(child, timeout=30):
    """(exit code, stdout, the lines of stderr that are not the progress bar)."""
    out, err = child.communicate(timeout=timeout)
    return child.returncode, out, [line for line in err.splitlines()
                                   if "|" not in line and line.strip()]


def wait_for_steps(out_dir, n, child, key="lr"):
    """Until the run has written n steps to metrics.jsonl."""
    path, deadline = out_dir / "metrics.jsonl", time.monotonic() + 60
    while not (path.exists() and path.read_text().count(f'"{key}"') >= n):
        assert child.poll() is None and time.monotonic() < deadline, child.kill() or finish(child)
        time.sleep(0.05)


def steps(out_dir):
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iter"]: r["loss"] for r in rows if "lr" in r}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_one_checkpoint_and_resume_continues(corpus, tmp_path, signum, capsys):
    out = tmp_path / "run"
    child = start(tmp_path, [f"--data={corpus}", f"--out_dir={out}", *LONG, *TINY])
    wait_for_steps(out, 3, child)
    child.send_signal(signum)
    code, printed, errors = finish(child)
    it, name = checkpoint.last_iter(out), run_guard.NAMES[signum]
    assert code == 128 + signum == (143 if signum == signal.SIGTERM else 130) and errors == []
    assert [line for line in printed.splitlines() if line.startswith("interrupted")] == [
        f"interrupted by {name}: checkpoint saved at iteration {it} in {out}; continue with "
        "--resume"]
    assert it >= 3 and sorted(steps(out)) == list(range(it))
    assert not (out / "run.lock").exists() and len(list(out.glob("ckpt-*"))) == 1
    assert train.main(["--resume", f"--out_dir={out}", f"--max_iters={it + 3}"]) == 0
    assert f"resuming from iteration {it} " in capsys.readouterr().out
    assert sorted(steps(out)) == list(range(it + 3)) and checkpoint.last_iter(out) == it + 3


def test_a_second_signal_stops_at_once_without_a_checkpoint(corpus, tmp_path):
    """The first SIGTERM's save is held up (a hook sleeps in it); the second one ends the
    process at once: exit 143, one line, the previous checkpoint, no temp file, no lock."""
    out = tmp_path / "run"
    child = start(tmp_path, [f"--data={corpus}", f"--out_dir={out}", *LONG, *TINY], prelude=hook(
        "name.endswith('.safetensors.tmp written') and not name.startswith('ckpt-0.')",
        "open('saving', 'w'); time.sleep(60)"))
    wait_for_steps(out, 2, child)
    child.send_signal(signal.SIGTERM)
    while not (tmp_path / "saving").exists():
        assert child.poll() is None
        time.sleep(0.02)
    t0 = time.monotonic()
    child.send_signal(signal.SIGTERM)
    code, printed, errors = finish(child)
    assert code == 143 and time.monotonic() - t0 < 5
    assert errors == [f"error: a second SIGTERM: stopped at once, without a checkpoint; the "
                      f"last good checkpoint (iteration 0) in {out} is intact"]
    assert checkpoint.load(out)[0]["iter"] == 0
    assert not list(out.glob("*.tmp")) and not (out / "run.lock").exists()


def test_kill_9_between_every_step_of_a_save_leaves_a_good_checkpoint(tmp_path):
    template = tmp_path / "template"
    template.mkdir()
    checkpoint.save(template, *tiny_net(1), {"iter": 1, "note": "old"})
    old, new = tiny_net(1)[0].state_dict(), tiny_net(2)[0].state_dict()
    shutil.copytree(template, tmp_path / "listing")
    names = subprocess.run([sys.executable, "-c", hook("True", "print(name)") + WRITE],
                           cwd=tmp_path / "listing", capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert names == ["start", "ckpt-2.safetensors.tmp written", "ckpt-2.safetensors.tmp synced",
                     "ckpt-2.safetensors renamed", "ckpt-2.safetensors rename synced",
                     "ckpt.json.tmp written", "ckpt.json.tmp synced", "ckpt.json renamed",
                     "ckpt.json rename synced", "deleting ckpt-1.safetensors", "done"]
    switch = names.index("ckpt.json renamed")        # from here on the new checkpoint counts
    for k, how in [(k, KILL) for k in range(len(names))] + [(1, TEAR), (5, TEAR)]:
        folder = tmp_path / f"kill-{k}-{how == TEAR}"
        shutil.copytree(template, folder)
        child = subprocess.run([sys.executable, "-c", hook(f"name == {names[k]!r}", how) + WRITE],
                               cwd=folder, capture_output=True, text=True)
        assert child.returncode == -signal.SIGKILL, (names[k], child.stderr)
        info, weights, _ = checkpoint.load(folder)            # verifies the sha256
        assert info["note"] == ("new" if k >= switch else "old"), names[k]
        for key, array in (new if k >= switch else old).items():
            np.testing.assert_array_equal(weights[key], array, err_msg=f"{names[k]}: {key}")
        checkpoint.save(folder, *tiny_net(3), {"iter": 3, "note": "next"})   # leftovers or not
        assert checkpoint.load(folder)[0]["note"] == "next"
        assert sorted(p.name for p in folder.iterdir()) == ["ckpt-3.safetensors", "ckpt.json"]


def test_kill_9_in_a_training_save_then_resume_takes_over_the_lock(corpus, tmp_path, capsys):
    """A training run killed in its save at iteration 4 (a torn weights file left): --resume
    takes the stale lock over, continues from 2 and ends as an uninterrupted run, bit for bit."""
    common = [f"--data={corpus}", "--eval_interval=2", "--max_iters=6", *TINY]
    out = tmp_path / "run"
    child = start(tmp_path, [*common, f"--out_dir={out}"],
                  prelude=hook("name == 'ckpt-4.safetensors.tmp written'", TEAR))
    code, printed, errors = finish(child)
    assert code == -signal.SIGKILL and checkpoint.last_iter(out) == 2, errors
    assert (out / "run.lock").exists() and list(out.glob("*.tmp"))     # left by the kill
    assert train.main(["--resume", f"--out_dir={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"note: {out / 'run.lock'} was left by pid {child.pid}" in printed
    assert "taking it over" in printed and "resuming from iteration 2 " in printed
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("ckpt", "run."))) == [
        "ckpt-6.safetensors", "ckpt.json"]
    assert train.main([*common, f"--out_dir={tmp_path / 'straight'}"]) == 0
    assert steps(out) == steps(tmp_path / "straight")


def fail(code):
    raise OSError(code, os.strerror(code))


@pytest.mark.parametrize("it", [2, 1])          # 1: the current checkpoint's own iteration
@pytest.mark.parametrize("k", range(11))
def test_a_save_that_fails_at_any_step_leaves_one_good_checkpoint(tmp_path, k, it, monkeypatch):
    """OSError(ENOSPC) at step k of a save: it propagates; before the switch the previous
    checkpoint is current and nothing of the new one is left; after it, the new one. A save
    of the current iteration goes to ckpt-1-b.safetensors, never over the file ckpt.json
    names, and the next one back to ckpt-1.safetensors."""
    checkpoint.save(tmp_path, *tiny_net(1), {"iter": 1, "note": "old"})
    seen = []
    monkeypatch.setattr(checkpoint, "_step", lambda name: seen.append(name) or (
        len(seen) > k and fail(errno.ENOSPC)))
    with pytest.raises(OSError):
        checkpoint.save(tmp_path, *tiny_net(2), {"iter": it, "note": "new"})
    monkeypatch.undo()
    switched = k >= 7                                      # "ckpt.json renamed" and after
    info, left = checkpoint.load(tmp_path)[0], sorted(p.name for p in tmp_path.iterdir())
    assert (info["note"], info["weights"]) == (("new", f"ckpt-{it}{'-b' * (it == 1)}.safetensors")
                                               if switched else ("old", "ckpt-1.safetensors"))
    assert not any(n.endswith(".tmp") for n in left), seen
    assert switched or left == ["ckpt-1.safetensors", "ckpt.json"], seen
    checkpoint.save(tmp_path, *tiny_net(3), {"iter": 1, "note": "next"})
    assert checkpoint.load(tmp_path)[0]["weights"] == ("ckpt-1.safetensors" if switched
                                                       else "ckpt-1-b.safetensors")


def test_a_full_disk_stops_the_run_and_keeps_the_last_checkpoint(corpus, tmp_path, capsys,
                                                                 monkeypatch):
    out = tmp_path / "run"
    real = checkpoint.save_file

    def fills_up(tensors, path, metadata=None):
        if "ckpt-4." in str(path):
            Path(path).write_bytes(b"\x00" * 4096)           # part written, then no room
            fail(errno.ENOSPC)
        return real(tensors, path, metadata=metadata)
    monkeypatch.setattr(checkpoint, "save_file", fills_up)
    with pytest.raises(SystemExit) as stop:
        train.main([f"--data={corpus}", f"--out_dir={out}", "--eval_interval=2",
                    "--max_iters=8", *TINY])
    assert stop.value.code == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert errors == [f"error: the disk is full (No space left on device): the checkpoint of "
                      f"iteration 4 was not saved in {out}; stopping. the last good checkpoint "
                      f"(iteration 2) in {out} is intact. Free some space (a save needs room "
                      "for a second copy of the weights) and continue with --resume."]
    assert sorted(p.name for p in out.glob("ckpt*")) == ["ckpt-2.safetensors", "ckpt.json"]
    assert not list(out.glob("*.tmp")) and not (out / "run.lock").exists()
    monkeypatch.undo()
    assert train.main(["--resume", f"--out_dir={out}"]) == 0 and checkpoint.last_iter(out) == 8


def test_a_real_write_error_of_the_weights_is_an_oserror(tmp_path):
    """safetensors' I/O errors (EFBIG from a size limit here) come out as OSError."""
    script = ("import resource, signal, sys\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
              "from tinygrad_gpt import checkpoint\n" + WRITE.replace(
                  "checkpoint.save(", "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n"
                  "try:\n    checkpoint.save(") + "except OSError as e:\n    print(e.errno)\n")
    child = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
                           text=True)
    assert child.stdout.split() == [str(errno.EFBIG)] and not list(tmp_path.iterdir())


def test_a_busy_out_dir_is_refused_and_readers_ignore_the_lock(corpus, tmp_path, capsys):
    """Refused while the run holds the lock; one nobody holds is taken over (the flock
    decides, not the pid or host in the file); sample only reads and ignores it."""
    out = tmp_path / "run"
    child = start(tmp_path, [f"--data={corpus}", f"--out_dir={out}", *LONG, *TINY])
    wait_for_steps(out, 1, child)
    refusal = f"error: --out_dir {out} is in use by another run (pid {child.pid} on host "
    for argv in ([f"--data={corpus}", f"--out_dir={out}"], ["--resume", f"--out_dir={out}"]):
        assert train.main(argv) == 2 and (err := capsys.readouterr().err).startswith(refusal)
        assert err.count("\n") == 1, err
    assert finetune.main(["classify", "--resume", "--out_dir", str(out)]) == 2
    assert capsys.readouterr().err.startswith(refusal)
    assert sample.main(["--out_dir", str(out), "--num_samples=1", "--max_new_tokens=4"]) == 0
    child.send_signal(signal.SIGTERM)
    assert finish(child)[0] == 143 and not (out / "run.lock").exists()
    (out / "run.lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "x"}))
    assert train.main(["--resume", f"--out_dir={out}",
                       f"--max_iters={checkpoint.last_iter(out) + 1}"]) == 0
    assert (f"note: {out / 'run.lock'} was left by pid 1 on host elsewhere (started x), which "
            "no longer holds it: taking it over") in capsys.readouterr().out


def test_only_one_of_several_processes_gets_the_lock(tmp_path):
    """Four try at once; the winner holds the lock until the three others are refused."""
    script = ("import glob, os, sys, time\nfrom tinygrad_gpt import run_guard\ntry:\n"
              "    run_guard.RunLock().acquire('.')\nexcept run_guard.UserError:\n"
              "    open(f'lost-{os.getpid()}', 'w'); sys.exit(3)\nend = time.monotonic() + 20\n"
              "while len(glob.glob('lost-*')) < 3 and time.monotonic() < end:\n"
              "    time.sleep(0.02)\n")
    children = [subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path)
                for _ in range(4)]
    assert sorted(c.wait(timeout=30) for c in children) == [0, 3, 3, 3]


def test_sigterm_stops_finetune_with_one_checkpoint_that_resumes(corpus, tmp_path, capsys):
    base = tmp_path / "base"
    assert train.main([f"--data={corpus}", f"--out_dir={base}", "--max_iters=1", *TINY]) == 0
    data = tmp_path / "labels.csv"
    data.write_text("text,label\n" + "".join(f"the day was {w},{'pos' if k < 3 else 'neg'}\n"
                                             for _ in range(5) for k, w in enumerate(WORDS)))
    out = tmp_path / "tuned"
    child = start(tmp_path, ["classify", "--init_from", base, "--data", data, "--out_dir", out,
                             "--batch_size", 2, *LONG], "tinygrad_gpt.finetune")
    wait_for_steps(out, 3, child, key="loss")
    child.send_signal(signal.SIGTERM)
    code, printed, errors = finish(child)
    it = checkpoint.last_iter(out)
    assert code == 143 and errors == [] and it >= 3 and not (out / "run.lock").exists()
    assert (f"interrupted by SIGTERM: checkpoint saved at step {it} in {out}; continue with "
            "--resume") in printed.splitlines()
    assert finetune.main(["classify", "--resume", "--out_dir", str(out),
                          "--max_iters", str(it + 2)]) == 0
    assert checkpoint.last_iter(out) == it + 2 and f"resuming from step {it}" in \
        capsys.readouterr().out
    with run_guard.RunLock() as lock:             # classify only reads: a held lock is no matter
        lock.acquire(out)
        assert classify.main(["--out_dir", str(out), "--text", "the day was good"]) == 0
