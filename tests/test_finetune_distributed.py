"""`mpiexec -n 2 python -m tinygrad_gpt.finetune classify|instruct`: each step's batch is
shared out by items and the gradients are averaged weighted by each rank's counted targets,
so two ranks train what one process trains (losses, evaluations, weights, test
results), with --zero 1 too (ZeroAdamW, whose checkpoint AdamW continues); only rank 0
writes; --resume continues a run of 2 ranks on 2 or on 1 (and one of 1
on 2), and a SIGTERM or Ctrl-C to one rank saves once and stops every rank. Skipped without
mpiexec/mpi4py."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import tensor
from gpt import GPT, GPTConfig
from tinygrad_gpt import checkpoint
from tinygrad_gpt.finetune_data import format_prompt
from tokenizer import BPETokenizer

pytest.importorskip("mpi4py")
MPIEXEC = shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="mpiexec not found (pip install "
                                "-e '.[mpi]')")
TEXT = ("the cat sat on the mat. the dog ran in the park. a good day, a bad day. "
        "to be or not to be, that is the question. ") * 4
# batch_size 5 on 2 ranks: 3 and 2 items a step, so the ranks count different numbers
STEADY = ["--batch_size=5", "--learning_rate=1e-2", "--grad_clip=0.5"]
COMMON = [*STEADY, "--max_iters=4", "--eval_interval=2", "--trainable=all"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A random tiny GPT-2 folder, a labeled CSV and an Alpaca JSON file."""
    folder = tmp_path_factory.mktemp("ft")
    tok = BPETokenizer.train(TEXT + format_prompt("Name an animal.", "good") * 4, 400)
    tensor.manual_seed(0)
    GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=96, n_layer=1, n_head=2,
                  n_embd=16, bias=True)).save_pretrained(folder / "base")
    tok.save(folder / "base")
    rng = np.random.default_rng(0)
    words = {"pos": ["good", "happy", "fine"], "neg": ["bad", "sad", "poor"]}
    rows = ["text,label"] + [f"\"the day was {' and '.join(rng.choice(words[lab], 1 + k % 3))}\""
                             f",{lab}" for k in range(40) for lab in ["pos" if k % 2 else "neg"]]
    (folder / "reviews.csv").write_text("\n".join(rows) + "\n")
    items = [{"instruction": "Say the opposite word.", "input": w, "output": o}
             for w, o in [("good", "bad"), ("happy", "sad and grim"), ("fine", "poor"),
                          ("great", "awful, bad"), ("nice", "grim")] * 4]
    items += [{"instruction": "Name an animal.", "input": "", "output": "the cat"}] * 5
    (folder / "alpaca.json").write_text(json.dumps(items))
    return folder


def environment(cache):
    return {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
            "TINYGRAD_GPT_CACHE": str(cache), "OPENBLAS_NUM_THREADS": "1"}


def finetune(args, cache, ranks):
    command = [sys.executable, "-m", "tinygrad_gpt.finetune", *args]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    out = subprocess.run(command, env=environment(cache), capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def same_run(one, two):
    """Two run folders hold the same run to float32 rounding: metrics, weights and AdamW's
    moments."""
    rows = [[json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
            for d in (one, two)]
    assert [sorted(r) for r in rows[0]] == [sorted(r) for r in rows[1]]   # no line twice
    for a, b in zip(*rows):
        for key in a:
            assert np.allclose(a[key], b[key], rtol=1e-5, atol=1e-7), (key, a, b)
    (info1, w1, o1), (info2, w2, o2) = checkpoint.load(one), checkpoint.load(two)
    assert info1["iter"] == info2["iter"] == 4
    for name in w1:         # the key's bias: d loss / d b_k = 0 exactly (softmax ignores a
        if "key.bias" in name:      # shift of every score), AdamW turns its rounding into steps
            continue
        assert np.allclose(w1[name], w2[name], rtol=1e-5, atol=1e-6), name
    assert np.array_equal(np.asarray(o1["t"]), np.asarray(o2["t"]))       # AdamW's steps
    return rows[0]


def test_classify_two_ranks_equal_one_process(files, tmp_path):
    """With and without --zero 1 (AdamW's moments sharded over the ranks: ZeroAdamW)."""
    args = ["classify", "--init_from", str(files / "base"), "--data",
            str(files / "reviews.csv"), *COMMON]
    finetune(args + ["--out_dir", str(tmp_path / "one")], tmp_path / "c", 1)
    out = finetune(args + ["--out_dir", str(tmp_path / "two")], tmp_path / "c", 2)
    zero = finetune(args + ["--zero=1", "--out_dir", str(tmp_path / "zero")], tmp_path / "c", 2)
    for run in ("two", "zero"):
        rows = same_run(tmp_path / "one", tmp_path / run)
        assert any("val_acc" in r for r in rows)
    results = {d: json.loads((tmp_path / d / "results.json").read_text())
               for d in ("one", "two", "zero")}
    for run in ("two", "zero"):
        assert results[run]["confusion"] == results["one"]["confusion"]
        assert np.isclose(results[run]["test_loss"], results["one"]["test_loss"], rtol=1e-5)
    assert out.stdout.count("test: accuracy") == zero.stdout.count("test: accuracy") == 1


def test_instruct_masked_two_ranks_equal_one_process(files, tmp_path):
    """Also with --zero 1 on 2 ranks for 2 steps, then --resume on one process with --zero 0:
    the checkpoint holds ZeroAdamW's shards gathered in nn.AdamW's layout, which AdamW
    continues, and the whole run equals one process's. On one process --zero 1 is a no-op,
    as train's: the same run bit for bit."""
    args = ["instruct", "--init_from", str(files / "base"), "--data",
            str(files / "alpaca.json"), "--mask_prompt=true", "--responses=2",
            "--max_new_tokens=4", *COMMON]
    finetune(args + ["--out_dir", str(tmp_path / "one")], tmp_path / "c", 1)
    out = finetune(args + ["--out_dir", str(tmp_path / "two")], tmp_path / "c", 2)
    same_run(tmp_path / "one", tmp_path / "two")
    one, two = ((tmp_path / d / "responses.md").read_text() for d in ("one", "two"))
    assert one == two
    assert out.stdout.count("responses of the base") == 1
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == \
        sorted(p.name for p in (tmp_path / "two").iterdir())
    finetune(args + ["--zero=1", "--out_dir", str(tmp_path / "one_zero")], tmp_path / "c", 1)
    identical_runs(tmp_path / "one", tmp_path / "one_zero")
    cut = tmp_path / "zero"
    finetune([*(a for a in args if a != "--max_iters=4"), "--max_iters=2", "--zero=1",
              "--out_dir", str(cut)], tmp_path / "c", 2)
    info, _, state = checkpoint.load(cut)
    plain = checkpoint.load(tmp_path / "one")[2]
    assert info["iter"] == 2 and info["finetune_config"]["zero"] == 1
    assert sorted(state) == sorted(plain) and state["m"].shape == plain["m"].shape
    finetune(["instruct", "--resume", "--zero=0", "--max_iters=4", "--out_dir", str(cut)],
             tmp_path / "c", 1)
    assert checkpoint.read_info(cut)["finetune_config"]["zero"] == 0
    same_run(tmp_path / "one", cut)


def test_zero_settings_and_the_memory_estimate_per_rank():
    """--zero takes 0 or 1 (one line otherwise); with it each of N ranks keeps 1/N of AdamW's
    moments (and ZeroAdamW's flat buffer and shard), as train's estimate counts them."""
    from types import SimpleNamespace

    from tinygrad_gpt import finetune as cli
    from tinygrad_gpt.cli import UserError
    from tinygrad_gpt.finetune_task import check_memory
    with pytest.raises(UserError, match="--zero must be one of 0, 1, got 2"):
        cli.parse(["instruct", "--zero=2"])
    shape = GPTConfig(vocab_size=64, block_size=8, n_layer=2, n_head=2, n_embd=32)
    P = shape.num_parameters()
    two = SimpleNamespace(size=2, local_size=2)
    parts = {zero: check_memory(cli.parse(["instruct", f"--zero={zero}"])[0], shape, two)
             for zero in (0, 1)}
    assert parts[0]["optimizer moments"] == 2 * P * 4 and parts[0]["reduce buffers"] == P * 4
    assert parts[1]["optimizer moments"] == P * 4
    assert parts[1]["reduce buffers"] == (P + P // 2) * 4
    assert parts[0]["activations"] == parts[1]["activations"]
    one = check_memory(cli.parse(["instruct", "--zero=1"])[0], shape)
    assert one["optimizer moments"] == 2 * P * 4


def identical_runs(one, two):
    """Two run folders hold bit for bit the same run: metrics, weights, AdamW's state."""
    assert (one / "metrics.jsonl").read_text() == (two / "metrics.jsonl").read_text()
    (info1, w1, o1), (info2, w2, o2) = checkpoint.load(one), checkpoint.load(two)
    assert info1["iter"] == info2["iter"] and sorted(w1) == sorted(w2)
    for name in w1:
        assert np.array_equal(w1[name], w2[name]), name
    for name in o1:
        assert np.array_equal(np.asarray(o1[name]), np.asarray(o2[name])), name


def test_a_checkpoint_resumes_on_two_ranks_and_on_one_with_lora(files, tmp_path):
    """2 -> 2 is bit-exact (the same sums in the same order); 2 -> 1 and 1 -> 2 equal the
    uninterrupted run to float32 rounding: one process sums a step's counted targets in one
    mean, two ranks add two partial sums, and finetune has no float64 (--dtype) to shrink
    that rounding to 1e-10."""
    args = ["instruct", "--init_from", str(files / "base"), "--data",
            str(files / "alpaca.json"), "--mask_prompt=true", "--responses=0", *STEADY,
            "--eval_interval=2", "--trainable=lora", "--lora_rank=2"]
    run = {name: [*args, "--out_dir", str(tmp_path / name)] for name in ("full", "cut", "one")}
    finetune([*run["full"], "--max_iters=4"], tmp_path / "c", 2)
    finetune([*run["cut"], "--max_iters=2"], tmp_path / "c", 2)
    finetune([*run["one"], "--max_iters=2"], tmp_path / "c", 1)       # a checkpoint of 1 rank
    assert checkpoint.read_info(tmp_path / "cut")["lora"]["rank"] == 2
    shutil.copytree(tmp_path / "cut", tmp_path / "cut1")
    finetune(["instruct", "--resume", "--max_iters=4", "--out_dir", str(tmp_path / "cut")],
             tmp_path / "c", 2)
    identical_runs(tmp_path / "full", tmp_path / "cut")
    finetune(["instruct", "--resume", "--max_iters=4", "--out_dir", str(tmp_path / "cut1")],
             tmp_path / "c", 1)
    same_run(tmp_path / "full", tmp_path / "cut1")
    finetune(["instruct", "--resume", "--max_iters=4", "--out_dir", str(tmp_path / "one")],
             tmp_path / "c", 2)
    same_run(tmp_path / "full", tmp_path / "one")


RANK = """
import sys
import nn
from tinygrad_gpt import finetune
rank = nn.distributed.world().rank
code = finetune.main(sys.argv[1:])
print(f"rank {rank} exits with {code}", flush=True)
sys.exit(code)
"""


def rank_pids(script):
    """{rank: pid} of the processes running script (not the launcher), from /proc: the rank
    is the one Open MPI (OMPI_COMM_WORLD_RANK) or PMIx (PMIX_RANK) gave the process."""
    pids = {}
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                words = f.read().decode(errors="replace").split("\0")
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(v.partition("=")[::2] for v in f.read().decode(errors="replace")
                           .split("\0"))
        except (OSError, ValueError):
            continue
        launcher = os.path.basename(words[0]).startswith(("mpiexec", "mpirun", "prte"))
        rank = env.get("OMPI_COMM_WORLD_RANK", env.get("PMIX_RANK"))
        if not launcher and str(script) in words and rank is not None:
            pids[int(rank)] = int(entry)
    return pids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc to find the ranks")
@pytest.mark.parametrize("signum, victim", [(signal.SIGTERM, 1), (signal.SIGINT, 0)],
                         ids=["SIGTERM-to-rank-1", "Ctrl-C-to-rank-0"])
def test_a_signal_to_one_rank_saves_once_and_the_resume_ends_as_an_unbroken_run(
        files, tmp_path, signum, victim):
    """Every rank stops after the same step, rank 0 saves, and a resume on 2 ranks ends bit
    for bit as a run never stopped, dropout included: each rank's masks come from (seed,
    step, rank), not from the generator the checkpoint keeps (rank 0's)."""
    script, out_dir = tmp_path / "rank.py", tmp_path / "r"
    script.write_text(RANK)
    args = ["instruct", "--init_from", str(files / "base"), "--data",
            str(files / "alpaca.json"), "--responses=0", *STEADY, "--eval_interval=10000",
            "--trainable=all", "--dropout=0.2"]
    job = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, str(script), *args,
                            "--max_iters=5000", "--out_dir", str(out_dir)],
                           env=environment(tmp_path / "c"), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(600):                        # until rank 0 has logged 3 steps
            rows = out_dir / "metrics.jsonl"
            if rows.exists() and len(rows.read_text().splitlines()) > 3:
                break
            time.sleep(0.05)
        pids = rank_pids(script)
        assert sorted(pids) == [0, 1], pids
        os.kill(pids[victim], signum)               # one rank only
        stdout, stderr = job.communicate(timeout=60)
    finally:
        job.kill()
    codes = {f"rank {r} exits with {128 + (signum if r == victim else signal.SIGINT)}"
             for r in (0, 1)}
    assert codes <= set(stdout.splitlines()), stdout + stderr     # every rank left the loop
    assert stdout.count("checkpoint saved at step") == 1, stdout + stderr
    assert ("interrupted by a signal to another rank" in stdout) == (victim != 0)
    stopped = checkpoint.load(out_dir)[0]["iter"]
    assert 3 <= stopped < 5000
    if victim == 0:                                 # the resume once (the file's time)
        return
    total = f"--max_iters={stopped + 2}"
    finetune(["instruct", "--resume", total, "--out_dir", str(out_dir)], tmp_path / "c", 2)
    finetune([*args, total, "--out_dir", str(tmp_path / "full")], tmp_path / "c", 2)
    identical_runs(tmp_path / "full", out_dir)
