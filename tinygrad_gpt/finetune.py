"""python -m tinygrad_gpt.finetune classify|instruct: fine-tune a pretrained GPT on a task.

    python -m tinygrad_gpt.finetune classify --init_from out --out_dir out-classify
    python -m tinygrad_gpt.finetune classify --init_from gpt2/ --data spam.csv --trainable lora
    python -m tinygrad_gpt.finetune instruct --init_from gpt2/ --data alpaca.json

classify (Raschka ch. 6): a head C -> n_classes on the last real token's hidden state
(gpt/classifier.py), trained on a CSV/TSV/JSON Lines file of text and label; reports loss and
accuracy per evaluation, then test accuracy and a confusion matrix (tinygrad_gpt/classify.py).
instruct (Raschka ch. 7): the language model itself on Alpaca-format instructions, the loss
only on the responses (tinygrad_gpt/instruct.py). Without --data both use tasks made from the
embedded Shakespeare (tinygrad_gpt/shakespeare_tasks.py). --init_from is a Hugging Face
GPT-2 folder or one of our runs (default: out, what python -m tinygrad_gpt.train writes).

The loop, the checkpoints (atomic; --resume continues bit-exactly on the CPU), Ctrl-C, SIGTERM,
NaN and full-disk handling and the one-run-per-folder lock are train's (run_guard.py); the
task decides the data, the loss and what an evaluation reports.
"""
if __name__ == "__main__":     # run as a program: tune this process's OpenBLAS before NumPy
    import os                  # loads it (idle BLAS threads sleep at once; tensor/fast)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import argparse
import functools
import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import nn
import tensor
from tensor import backend

from . import checkpoint, finetune_task, ranks, report, run_guard, tokenizer_io
from .cli import UserError, check_device, check_writable
from .corpus import sha256
from .run_guard import Interrupt
from .settings import convert, parse_bool, unknown_key

MODES = ("classify", "instruct")
TRAINABLE = ("head", "last_block", "all", "lora")


@dataclass
class FinetuneConfig:
    mode: str = "classify"              # classify | instruct (the sub-command)
    init_from: str = "out"              # a Hugging Face GPT-2 folder or one of our run folders
    data: str = ""                      # the task's file ("" = made from the embedded Shakespeare)
    out_dir: str = ""                   # checkpoints, metrics.jsonl, plots ("" = out-<mode>)
    text_column: str = "text"           # classify: the column holding the text
    label_column: str = "label"         # classify: the column holding the label
    trainable: str = ""                 # head | last_block | all | lora ("" = last_block for
    #                                     classify, all for instruct)
    epochs: int = 0                     # passes over the train split (0 = use max_iters)
    max_iters: int = 0                  # optimizer steps; when given it wins over epochs
    batch_size: int = 8                 # items per step
    learning_rate: float = 5e-5         # AdamW's (constant) learning rate
    weight_decay: float = 0.1           # AdamW decay on 2-D weights
    grad_clip: float = 1.0              # clip the global gradient norm to this (0 = off)
    eval_interval: int = 0              # evaluate (and checkpoint) every this many steps (0 =
    #                                     at the end of every epoch)
    max_length: int = 0                 # truncate items to this many tokens (0 = block_size)
    mask_prompt: bool = True            # instruct: only response tokens count in the loss
    dropout: float = 0.0                # dropout while fine-tuning
    lora_rank: int = 8                  # --trainable lora: the rank r of B A
    lora_alpha: float = 16.0            # --trainable lora: B A is scaled by alpha / r
    lora_targets: str = "attn,mlp"      # --trainable lora: which Linear layers get adapters
    responses: int = 10                 # instruct: val items answered in responses.md
    max_new_tokens: int = 64            # instruct: response length cap in responses.md
    export_hf: str = ""                 # write a merged Hugging Face GPT-2 folder here at the end
    device: str = "cpu"                 # cpu | cuda
    zero: int = 0                       # 1: ZeRO-1, AdamW's moments sharded over the ranks
    seed: int = 123                     # seeds the split, the head, LoRA, shuffling, dropout

    def validate(self):
        if self.mode not in MODES:
            raise UserError(f"unknown task {self.mode!r}: choose classify or instruct")
        if self.trainable not in TRAINABLE + ("",):
            raise UserError(f"--trainable must be one of {', '.join(TRAINABLE)}, got "
                            f"{self.trainable!r}")
        if self.mode == "instruct" and self.trainable in ("head", "last_block"):
            raise UserError(f"--trainable {self.trainable} is for classify; instruct trains "
                            "all or lora")
        for name in ("batch_size", "responses", "max_new_tokens", "lora_rank"):
            if getattr(self, name) < 1 and not (name == "responses" and self.responses == 0):
                raise UserError(f"--{name} must be a positive integer, got "
                                f"{getattr(self, name)}")
        for name in ("epochs", "max_iters", "eval_interval", "max_length", "weight_decay",
                     "grad_clip"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0, got {getattr(self, name)}")
        if not self.learning_rate > 0 or not self.lora_alpha > 0:
            raise UserError("--learning_rate and --lora_alpha must be > 0")
        if not 0 <= self.dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("device", ("cpu", "cuda")), ("zero", (0, 1))):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(map(str, allowed))}, "
                                f"got {getattr(self, name)!r}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        if self.export_hf:                     # found now, not after the whole run
            check_writable("--export_hf", self.export_hf)
        return self

    @property
    def trainable_part(self):
        return self.trainable or ("last_block" if self.mode == "classify" else "all")


FIELDS = {f.name: f for f in fields(FinetuneConfig) if f.name != "mode"}


def parse(argv):
    """argv (the sub-command first) -> (FinetuneConfig, resume, keys given explicitly)."""
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[0] + "\n\nsettings (--key value or --key=value):")
        for name, f in FIELDS.items():
            print(f"  --{name:<16} default {f.default!r}")
        raise SystemExit(0)
    mode, values, resume = argv[0], {}, False
    if mode not in MODES:
        raise UserError(f"unknown task {mode!r}: python -m tinygrad_gpt.finetune classify|"
                        "instruct --init_from PATH ...")
    rest = list(argv[1:])
    while rest:
        arg = rest.pop(0)
        if not arg.startswith("--"):
            raise UserError(f"unexpected argument {arg!r}: settings look like --key value")
        key, eq, value = arg[2:].partition("=")
        key = key.replace("-", "_")
        if key == "resume":
            try:
                resume = parse_bool(value) if eq else True
            except argparse.ArgumentTypeError as e:
                raise UserError(f"--resume: {e}") from None
            continue
        if key not in FIELDS:
            raise unknown_key(key, list(FIELDS) + ["resume"])
        if key in values:
            raise UserError(f"--{key} is given twice: keep one")
        if not eq:
            is_bool = isinstance(FIELDS[key].default, bool)
            if rest and not rest[0].startswith("--"):
                value = rest.pop(0)
            elif is_bool:
                value = "true"
            else:
                raise UserError(f"--{key} needs a value")
        values[key] = convert(key, value, FinetuneConfig)
    config = FinetuneConfig(mode=mode, **values).validate()
    if not config.out_dir:
        config.out_dir = f"out-{mode}"
    return config, resume, sorted(values)


def main(argv=None):
    world = nn.distributed.world()        # one process: a SingleWorld, no MPI imported
    return run_guard.run_loop(functools.partial(ranks.run, world, finetune),
                              sys.argv[1:] if argv is None else argv)


def setup(argv, world):
    """The settings (and the checkpoint's info on --resume), every check made."""
    config, resume, explicit = parse(argv)
    out_dir = Path(config.out_dir)
    run_guard.check_free(out_dir)             # another run there: refused before any work
    saved = checkpoint.read_info(out_dir) if resume else None    # the weights come later
    if saved:
        stored = saved["finetune_config"]
        changed = [k for k in explicit if k not in ("max_iters", "epochs", "out_dir",
                                                    "device", "responses", "export_hf", "zero")
                   and getattr(config, k) != stored[k]]
        if changed or stored["mode"] != config.mode:
            raise UserError(f"--resume: {', '.join('--' + k for k in changed) or 'the task'} "
                            f"differ from the checkpoint in {out_dir}")
        config = FinetuneConfig(**{**stored, **{k: getattr(config, k) for k in explicit}})
    check_device(config.device)
    if not saved:
        check_new_run(out_dir)
    return config, saved


def make_task(config, saved, world):
    from .classify import ClassifyTask
    from .instruct import InstructTask
    tensor.manual_seed(config.seed)    # the head's and LoRA's initial weights, then dropout
    return (ClassifyTask if config.mode == "classify" else InstructTask)(config, saved, world)


def finetune(argv, lock, world=None):
    """The run (see the module docstring); on N ranks (ranks.py) each step's batch is shared
    out by items, the gradients token-weighted averaged (--zero 1: AdamW's moments sharded,
    nn.ZeroAdamW), and only rank 0 writes."""
    world = nn.distributed.SingleWorld() if world is None else world
    config, saved = ranks.agreed(world, setup, argv, world)    # N ranks: errors agreed
    world = ranks.world_on(world, config.device)    # cuda: this rank's GPU, NCCL across ranks
    out_dir = Path(config.out_dir)
    task = ranks.agreed(world, make_task, config, saved, world)
    ranks.start_agreed(world, task.model, asdict(config),       # the --data file's sha256
                       sha256(config.data) if config.data else "")
    if world.is_root:
        out_dir.mkdir(parents=True, exist_ok=True)     # every input checked: now the writes
        lock.acquire(out_dir)
        if not saved:
            tokenizer_io.save(task.tok, out_dir / "tokenizer")
    model = task.model
    params = [p for p in model.parameters() if p.requires_grad]
    n_train, n_all = sum(p.size for p in params), model.num_parameters()
    print(f"trainable: {config.trainable_part}, {n_train:,} of {n_all:,} parameters "
          f"({100 * n_train / n_all:.2f}%)")
    optimizer = finetune_task.optimizer_of(params, config, world)    # --zero 1: ZeroAdamW
    steps_per_epoch = task.steps_per_epoch()
    total = config.max_iters or (config.epochs or task.default_epochs) * steps_per_epoch
    interval = config.eval_interval or steps_per_epoch
    start = 0
    if saved:
        info, weights, optim_state = checkpoint.load(out_dir)
        model.load_state_dict(weights, strict=True)
        optimizer.load_state_dict(optim_state)
        start = info["iter"]
        backend.set_random_state(config.device, info["dropout_state"])
        print(f"resuming from step {start}")
    metrics = report.Metrics(out_dir, truncate_after=start if saved else None) \
        if world.is_root else ranks.NoMetrics()
    sync = finetune_task.sync_of(world, params, optimizer, config)

    def save(it):                        # a full disk: stop, the last checkpoint kept
        state = optimizer.gathered() if config.zero else optimizer   # ZeRO: on every rank
        ranks.on_root(world, lambda: run_guard.save(out_dir, model, state, {
            "iter": it, "evaluated": True, "finetune_config": asdict(config), **task.info(),
            "dropout_state": backend.random_state(config.device)}, "step"))

    if start == 0:                       # where the base starts from, for the curves
        report_scores(0, total, steps_per_epoch, task.evaluate(model), metrics)
    interrupt, t0 = Interrupt(out_dir, "step"), time.perf_counter()
    try:
        for it in range(start, total):
            batch = task.batch(it)             # epoch it // steps_per_epoch, shuffled by seed
            value, stop = finetune_task.step(task, model, optimizer, sync, batch, config,
                                             sync is not None and interrupt.requested)
            if not math.isfinite(value):
                raise_nan(it, value, out_dir)
            metrics.write(iter=it, loss=value)             # as train: the step's index
            if (it + 1) % interval == 0 or it + 1 == total:
                report_scores(it + 1, total, steps_per_epoch, task.evaluate(model), metrics)
                save(it + 1)
            if stop if sync is not None else interrupt.requested:  # Ctrl-C, SIGTERM: save
                if (it + 1) % interval and it + 1 != total:      # (unless just saved)
                    save(it + 1)
                return interrupt.stopped(it + 1, out_dir, elsewhere=world.size > 1
                                         and interrupt.signum is None)
    finally:
        interrupt.restore()
    print(f"fine-tuned {total - start} steps in {time.perf_counter() - t0:.1f} s")
    task.finish(model, metrics)                   # the test split shared out; rank 0 writes
    if config.export_hf and world.is_root:
        task.export_hf(model, Path(config.export_hf))
        print(f"exported a merged Hugging Face GPT-2 folder to {config.export_hf}")
    return 0


def report_scores(it, total, steps_per_epoch, scores, metrics):
    metrics.write(iter=it, **scores)
    print(f"step {it}/{total} (epoch {it / steps_per_epoch:.2f}): "
          + ", ".join(f"{k} {v:.4f}" for k, v in scores.items()), flush=True)


def check_new_run(out_dir):
    """--out_dir can be written (nothing is created yet) and holds no run."""
    check_writable("--out_dir", out_dir)
    if (out_dir / "ckpt.json").exists():
        raise UserError(f"--out_dir {out_dir} already holds a run: continue it with --resume, "
                        "or choose another folder")


def raise_nan(it, loss, out_dir):
    run_guard.stop(f"the loss became {loss} at step {it}", out_dir, "step",
                   "Try a lower --learning_rate.")


if __name__ == "__main__":
    from .cli import run as run_cli
    run_cli(main)
