"""`mpiexec -n 2 python -m tinygrad_gpt.finetune classify|instruct`: each step's batch is
shared out by items and the gradients are averaged weighted by each rank's counted targets,
so two ranks train what one process trains (losses, evaluations, weights, test
results); only rank 0 writes. Skipped without mpiexec/mpi4py."""
import json
import os
import shutil
import subprocess
import sys

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
COMMON = ["--batch_size=5", "--max_iters=4", "--eval_interval=2", "--learning_rate=1e-2",
          "--grad_clip=0.5", "--trainable=all"]


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


def finetune(args, cache, ranks):
    command = [sys.executable, "-m", "tinygrad_gpt.finetune", *args]
    if ranks > 1:
        command = [MPIEXEC, "-n", str(ranks), *command]
    env = {**os.environ, "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "TINYGRAD_GPT_CACHE": str(cache), "OPENBLAS_NUM_THREADS": "1"}
    out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out


def same_run(one, two):
    """Two run folders hold the same run: metrics, weights and AdamW's moments."""
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
    args = ["classify", "--init_from", str(files / "base"), "--data",
            str(files / "reviews.csv"), *COMMON]
    finetune(args + ["--out_dir", str(tmp_path / "one")], tmp_path / "c", 1)
    out = finetune(args + ["--out_dir", str(tmp_path / "two")], tmp_path / "c", 2)
    rows = same_run(tmp_path / "one", tmp_path / "two")
    assert any("val_acc" in r for r in rows)
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert one["confusion"] == two["confusion"]
    assert np.isclose(one["test_loss"], two["test_loss"], rtol=1e-5)
    assert out.stdout.count("test: accuracy") == 1          # rank 0 alone speaks


def test_instruct_masked_two_ranks_equal_one_process(files, tmp_path):
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
