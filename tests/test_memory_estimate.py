"""tinygrad_gpt/memory.py's estimate against the peak RSS of real training steps.

Each case runs in a fresh process what a training run does to its memory (the speed layer
on, as the CLIs run; a GPT of the case's shape, AdamW over its trainable parameters, two
steps of forward, backward, clipping and update, then a checkpoint) and reports its peak
resident set size (VmHWM: this process image's own; getrusage's ru_maxrss would keep the
peak of the process it was forked from, pytest's). The estimate, made from the settings alone, must be within 25% of it. The trainable counts
are checked exactly against the models themselves.
"""
import json
import os
import subprocess
import sys

import pytest

from gpt import GPT, GPTConfig
from tinygrad_gpt import memory
from tinygrad_gpt.cli import UserError

CHILD = """
import json, sys
import numpy as np
import nn, tensor.fast
from gpt import GPT, GPTConfig
from tinygrad_gpt import checkpoint
case = json.loads(sys.argv[1])
with tensor.fast.on():
    model = GPT(GPTConfig(**case["config"]))
    if case["trainable"] == "last_block":
        model.freeze()
        model.unfreeze(f"blocks.{model.config.n_layer - 1}", "ln_final")
    elif case["trainable"] == "lora":
        nn.apply_lora(model, 8, 16.0, ("attn", "mlp"))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = nn.AdamW(nn.decay_groups(params, 0.1), lr=1e-3)
    rng = np.random.default_rng(0)
    shape = (case["batch_size"], model.config.block_size)
    for _ in range(2):
        x, y = (rng.integers(0, model.config.vocab_size, shape) for _ in "xy")
        opt.zero_grad()
        _, loss = model(x, y)
        loss.backward()
        del loss
        nn.clip_grad_norm(params, 1.0)
        opt.step()
    checkpoint.save(sys.argv[2], model, opt, {"iter": 2})   # streamed: adds no copy
print(next(int(line.split()[1]) * 1024 for line in open("/proc/self/status")
           if line.startswith("VmHWM:")))
"""

CASES = {   # three sizes of full training, and the two fine-tuning shapes of the biggest
    "small": (dict(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=256), 16, "all"),
    "medium": (dict(vocab_size=65, block_size=128, n_layer=6, n_head=6, n_embd=384,
                    dropout=0.1), 8, "all"),
    "large": (dict(vocab_size=2048, block_size=128, n_layer=8, n_head=8, n_embd=512), 8, "all"),
    "large, last block": (dict(vocab_size=2048, block_size=128, n_layer=8, n_head=8,
                               n_embd=512), 8, "last_block"),
    "large, LoRA": (dict(vocab_size=2048, block_size=128, n_layer=8, n_head=8, n_embd=512),
                    8, "lora"),
}


@pytest.mark.skipif(not sys.platform.startswith("linux"),
                    reason="reads the peak RSS from /proc/self/status")
@pytest.mark.parametrize("name", CASES)
def test_the_estimate_is_within_a_quarter_of_the_measured_peak(name, tmp_path):
    config, batch_size, trainable = CASES[name]
    case = {"config": {**config, "bias": False}, "batch_size": batch_size,
            "trainable": trainable}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(case), str(tmp_path)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.split()[-1])
    parts = memory.estimate(GPTConfig(**case["config"]), batch_size, trainable=trainable,
                            lora_rank=8)
    ratio = sum(parts.values()) / peak
    assert 0.75 <= ratio <= 1.25, (name, ratio, memory.describe(parts), peak / 2**20)


@pytest.mark.parametrize("trainable", ["all", "last_block", "lora", "head"])
@pytest.mark.parametrize("bias", [False, True])
def test_trainable_counts_are_the_models_own(trainable, bias):
    import nn
    from gpt.classifier import GPTClassifier
    config = GPTConfig(vocab_size=50, block_size=16, n_layer=3, n_head=2, n_embd=8, bias=bias)
    model = GPTClassifier(GPT(config), n_classes=3)
    if trainable == "last_block":
        model.freeze()
        model.unfreeze("gpt.blocks.2", "gpt.ln_final", "head")
    elif trainable == "head":
        model.freeze()
        model.unfreeze("head")
    elif trainable == "lora":
        nn.apply_lora(model, 4, 8.0, ("attn", "mlp"))
        model.unfreeze("head")
    counted = memory.trainable_parameters(config, trainable, 4, ("attn", "mlp"), n_classes=3)
    assert counted == model.num_trainable_parameters()


def test_a_run_that_cannot_fit_is_refused_with_the_parts_and_what_to_lower():
    config = GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384)
    parts = memory.estimate(config, 64)
    lower = {"activations": "--batch_size or --block_size", "model": "--n_layer or --n_embd"}
    assert memory.check(parts, "cpu", lower, free=sum(parts.values())) == sum(parts.values())
    with pytest.raises(UserError, match=r"activations .* MiB.*lower --batch_size") as e:
        memory.check(parts, "cpu", lower, free=sum(parts.values()) - 1)
    assert "\n" not in str(e.value)
    big = memory.estimate(GPTConfig(vocab_size=65, block_size=8, n_layer=48, n_head=16,
                                    n_embd=2048), 1)
    with pytest.raises(UserError, match="lower --n_layer or --n_embd"):
        memory.check(big, "cpu", lower, free=2**30)


def test_zero_shards_the_moments_and_the_twin_doubles_the_gradients():
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=2, n_head=2, n_embd=32)
    one = memory.estimate(config, 4)
    assert memory.estimate(config, 4, n_ranks=4, zero=1)["optimizer moments"] == \
        one["optimizer moments"] // 4
    assert memory.estimate(config, 4, n_ranks=4)["optimizer moments"] == \
        one["optimizer moments"]
    assert memory.estimate(config, 4, parallel=True)["gradients"] == 2 * one["gradients"]
    assert memory.estimate(config, 4, itemsize=8)["weights"] == 2 * one["weights"]


@pytest.mark.parametrize("argv", [
    ["train", "--n_layer", "48", "--n_embd", "4096", "--n_head", "32"],
    ["train", "--tokenizer", "bpe", "--vocab_size", "50000", "--batch_size", "4096"],
])
def test_train_refuses_a_run_that_cannot_fit_before_it_reads_the_data(argv, tmp_path):
    """The check runs from the settings alone: no token cache built, no --out_dir made, and
    one line naming the parts and what to lower."""
    corpus = tmp_path / "text.txt"
    corpus.write_text("to be or not to be\n" * 200)
    env = {**os.environ, "TINYGRAD_GPT_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", f"tinygrad_gpt.{argv[0]}", *argv[1:],
                           "--data", str(corpus), "--out_dir", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: this run needs about"), lines
    assert "optimizer moments" in lines[0] and "lower" in lines[0]
    assert not (tmp_path / "run").exists()
    assert not list((tmp_path / "cache").glob("datasets/*/train.bin"))


@pytest.mark.parametrize("mode", ["classify", "instruct"])
def test_finetune_refuses_before_the_weights_are_read(mode, tmp_path, monkeypatch, capsys):
    import gpt.hf
    import tensor
    from tinygrad_gpt import finetune
    from tokenizer import BPETokenizer
    base = tmp_path / "base"
    tok = BPETokenizer.train("the cat sat on the mat. " * 20, 300)
    tensor.manual_seed(0)
    GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=32, n_layer=1, n_head=2,
                  n_embd=8)).save_pretrained(base)
    tok.save(base)

    def refuse(*args, **kwargs):
        raise AssertionError("weights read before the memory check")
    monkeypatch.setattr(gpt.hf, "load_file", refuse)
    monkeypatch.setattr(memory, "available", lambda device: 1)
    code = finetune.main([mode, "--init_from", str(base), "--out_dir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "needs about" in err[0], err
    assert "--batch_size (8) or --max_length (32)" in err[0]
    assert not (tmp_path / "run").exists()
