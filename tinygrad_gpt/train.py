"""python -m tinygrad_gpt.train: train a GPT (default: character-level, on Shakespeare).

The loop, as nanoGPT's: at each iteration set the learning rate, evaluate every
eval_interval iterations (and checkpoint), then take one optimizer step made of
gradient_accumulation_steps micro-batches. Ctrl-C or SIGTERM saves a checkpoint and exits
(130, 143); a NaN or infinite loss, or a failed save (a full disk), stops the run (exit 1)
and keeps the last good checkpoint; --resume continues. One run per --out_dir (run_guard).
--init_from PATH starts from a pretrained model's weights (a GPT-2 folder or a run; see
pretrained.py): its shape and tokenizer, a fresh optimizer, iteration 0.

`mpiexec -n N python -m tinygrad_gpt.train ...` trains on N ranks (ranks.py,
docs/parallel.md): rank 0's weights everywhere, batches of one per_step stream shared out,
gradients averaged (--zero 1: AdamW's moments sharded), only rank 0 prints and writes.

The CPU speed machinery (tensor/fast/) is switched on for this command only, in main()
(run_guard.run_loop); TINYGRAD_GPT_FAST=0 runs every op's reference code instead.
"""
if __name__ == "__main__":     # run as a program: tune this process's OpenBLAS before NumPy
    import os                  # loads it (idle BLAS threads sleep at once; tensor/fast)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import functools
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from tqdm import tqdm

import nn
import tensor
from gpt import GPT, GPTConfig
from gpt.bigram import Bigram

from . import checkpoint, data, pretrained, ranks, report, run_guard, settings, tokenizer_io
from .cli import check_device, check_writable
from .ranks import evaluate  # noqa: F401  (train.evaluate: tests and benchmarks use it)
from .run_guard import Interrupt
from .settings import UserError

# Settings a resumed run may change; the rest must match the checkpoint.
RESUMABLE = {"max_iters", "lr_decay_iters", "eval_interval", "log_interval", "eval_iters",
             "sample_tokens", "always_save_checkpoint", "device", "out_dir", "data",
             "export_hf", "zero", "bucket_mb", "overlap"}


def build_model(config, model_config, base=None):
    """The model to train: random (seeded), or with the weights of base (a pretrained.Base)."""
    tensor.manual_seed(config.seed)
    if base is not None:
        return base.load(config.device, config.block_size, config.dropout, config.dtype)
    model = Bigram(model_config) if config.model == "bigram" else GPT(model_config)
    if config.dtype == "float64":
        for p in model.parameters():
            p.data = p.data.astype(np.float64)
    return model.to(config.device)


def sample_text(model, tok, config, it):
    try:                                   # from a newline, or token 0 in a text without one
        prompt = np.asarray([tokenizer_io.prompt_ids(tok, "\n")])
    except UserError:
        prompt = np.zeros((1, 1), np.int64)
    ids = model.generate(prompt, config.sample_tokens, temperature=0.8, top_k=200,
                         rng=[config.seed, it])
    return tok.decode(ids[0, prompt.shape[1]:].tolist())


def setup(argv, world=None):
    world = nn.distributed.world() if world is None else world
    config, resume, sources = settings.parse_with_sources(argv)
    explicit = [k for k, where in sources.items() if where == settings.COMMAND_LINE]
    out_dir = Path(config.out_dir)
    run_guard.check_free(out_dir)             # another run there: refused before any work
    saved = base = None
    if resume:                                # its settings now, its weights after the checks
        saved = checkpoint.read_info(out_dir)
        stored = settings.TrainConfig(**saved["train_config"])
        changed = [k for k in explicit if k not in RESUMABLE | {"gradient_accumulation_steps"}
                   and getattr(config, k) != getattr(stored, k)]
        if changed:
            raise UserError(f"--resume: {', '.join('--' + k for k in changed)} differ from the "
                            f"checkpoint in {out_dir}; only {', '.join(sorted(RESUMABLE))} "
                            "may change")
        config = settings.TrainConfig(**{**asdict(stored),
                                         **{k: getattr(config, k) for k in explicit}})
        config.validate()
    elif config.init_from:
        base = pretrained.read_base(config.init_from)
        config = pretrained.apply(base, config, sources)
    config = ranks.check_config(config, world, explicit, saved)   # N ranks: per_step batches
    check_device(config.device)
    shape = (GPTConfig.from_dict(saved["model_config"]) if saved else      # (a char vocabulary
             base.model_config(config.block_size, config.dropout) if base else  # is counted
             config.model_config(config.vocab_size if config.tokenizer == "bpe" else 1))  # later)
    report.check_memory(config, shape, world=world)      # from the settings alone: within a second
    check_writable("--out_dir", out_dir)    # nothing is made until every check passes
    return config, saved, base


def main(argv=None):
    world = nn.distributed.world()        # one process: a SingleWorld, no MPI imported
    return run_guard.run_loop(functools.partial(ranks.run, world, train),
                              sys.argv[1:] if argv is None else argv)


def load_data(config, base, out_dir):
    if config.init_from:     # the base's tokenizer: PATH's, or on --resume the run's copy of it
        dataset = data.prepare(config.data, base.tokenizer if base else
                               tokenizer_io.load(out_dir / "tokenizer"))
    else:
        dataset = data.prepare(config.data, config.tokenizer, config.vocab_size)
    for split in ("train", "val"):
        if len(getattr(dataset, split)) < config.block_size + 1:
            raise UserError(f"the {split} split has {len(getattr(dataset, split))} tokens, "
                            f"fewer than block_size + 1 = {config.block_size + 1}: use more "
                            "data or a smaller --block_size")
    return dataset


def train(argv, lock, world=None):
    world = nn.distributed.world() if world is None else world
    config, saved, base = ranks.agreed(world, setup, argv, world)   # N ranks: errors agreed
    world = ranks.world_on(world, config.device)    # cuda: this rank's GPU, NCCL across ranks
    out_dir = Path(config.out_dir)
    dataset = ranks.agreed(world, load_data, config, base, out_dir)
    tok = dataset.tokenizer
    if saved:
        model_config = GPTConfig.from_dict(saved["model_config"])
    elif base:
        model_config = base.model_config(config.block_size, config.dropout)
    else:
        model_config = config.model_config(tok.vocab_size)
    V = model_config.vocab_size
    n_params = V * V if config.model == "bigram" else model_config.num_parameters()
    print(f"data: {len(dataset.train):,} train / {len(dataset.val):,} val tokens, "
          f"{config.tokenizer} tokenizer with {tok.vocab_size} tokens")
    if dataset.meta.get("skipped_chars"):
        print(f"note: {dataset.meta['skipped_chars']:,} characters of the text are not in the "
              "tokenizer's vocabulary and were skipped")
    if base:
        cropped = model_config.block_size < base.config.block_size
        print(f"init_from: {base.describe()}" + (f"; block_size cropped to "
              f"{model_config.block_size}" if cropped else "") + "; optimizer state fresh")
    print(f"model: {config.model}, {n_params:,} parameters ({n_params / 1e6:.2f}M)")
    ranks.agreed(world, report.check_memory, config, model_config, False, world)  # real vocab
    model = build_model(config, model_config, base)
    lora = None
    if config.lora_rank:                 # only the adapters train; the rest is frozen
        lora = {"rank": config.lora_rank, "alpha": config.lora_alpha,
                "targets": [t.strip() for t in config.lora_targets.split(",") if t.strip()]}
        ranks.agreed(world, ranks.apply_lora, model, lora)
        print(f"LoRA: rank {config.lora_rank} on {', '.join(lora['targets'])}; "
              f"{model.num_trainable_parameters():,} trainable parameters")
    ranks.start(world, model, config, dataset)    # N ranks: rank 0's weights, agreement
    if world.is_root:
        out_dir.mkdir(parents=True, exist_ok=True)    # every check passed: the first write
        lock.acquire(out_dir)
        tokenizer_io.save(tok, out_dir / "tokenizer")
    base_record = base.to_dict() if base else saved.get("base") if saved else None
    optimizer = ranks.optimizer_of(model, config, world)
    sync = ranks.sync_of(world, model, optimizer, config)
    rng = np.random.default_rng(config.seed)           # draws the training batches
    start, best_val = 0, math.inf
    if saved:
        info, weights, optim_state = checkpoint.load(out_dir)
        try:
            model.load_state_dict(weights, strict=True)
            optimizer.load_state_dict(optim_state)
        except ValueError as e:
            raise UserError(f"--resume: the checkpoint does not fit this model: {e}") from None
        start, best_val = info["iter"], info["best_val_loss"]
        rng = checkpoint.restore_random_state(checkpoint.random_state_of(info), config)
        print(f"resuming from iteration {start} (best val loss {best_val:.4f})")
    metrics = report.Metrics(out_dir, truncate_after=start if saved else None) \
        if world.is_root else ranks.NoMetrics()
    overfit = ranks.overfit_batch(dataset, config, world) if config.overfit_batch else None
    if config.parallel == "on" or (config.parallel == "auto" and world.local_size == 1
                                   and nn.parallel.worth_it(model)):
        forward_backward = nn.DataParallel(model).forward_backward   # decided once, here
        print(f"parallel: each batch's two halves at once on two CPU cores (--parallel "
              f"{config.parallel}; off: --parallel off)")
    else:
        forward_backward = functools.partial(nn.forward_backward, model)

    def save(it, evaluated=True):
        if not all(bool(p.xp.isfinite(p.data).all()) for p in model.parameters()):
            raise_nan(it, "non-finite weights", out_dir, bar)
        state = optimizer.gathered() if config.zero else optimizer   # ZeRO: on every rank
        ranks.on_root(world, lambda: run_guard.save(out_dir, model, state, {  # a full disk:
            "iter": it, "world_size": world.size, "evaluated": evaluated, "best_val_loss": best_val,
            "train_config": asdict(config), "model_config": model.config.to_dict(),
            "model": config.model, "tokenizer": config.tokenizer,
            "random_state": checkpoint.random_state(rng, config.device), "lora": lora,
            **({"base": base_record} if base_record else {})}, "iteration", bar.close))

    tokens_per_step = (config.batch_size * config.block_size
                       * config.gradient_accumulation_steps * world.size)
    interrupt, t_start, it = Interrupt(out_dir), time.perf_counter(), start
    bar = tqdm(total=config.max_iters, initial=start, desc="training", unit="it",
               dynamic_ncols=True, disable=not world.is_root)
    try:
        for it in range(start, config.max_iters + 1):
            if (it % config.eval_interval == 0 or it == config.max_iters) and \
                    not (saved and it == start and saved["evaluated"]):
                losses = evaluate(model, dataset, config, it, world)
                if not all(map(math.isfinite, losses.values())):
                    raise_nan(it, losses["val"], out_dir, bar)
                metrics.write(iter=it, train_loss=losses["train"], val_loss=losses["val"])
                bar.write(f"iter {it}: train loss {losses['train']:.4f}, "
                          f"val loss {losses['val']:.4f}")
                if config.sample_tokens and world.is_root:
                    text = sample_text(model, tok, config, it)
                    bar.write("---\n" + text + "\n---")
                    with open(out_dir / "samples.txt", "a", encoding="utf-8") as f:
                        f.write(f"=== iter {it} (val loss {losses['val']:.4f}) ===\n{text}\n\n")
                improved = losses["val"] < best_val
                best_val = min(best_val, losses["val"])
                if improved or config.always_save_checkpoint:
                    save(it)
            if it == config.max_iters:
                break
            lr = nn.get_lr(it, config.learning_rate, config.warmup_iters, config.lr_decay_iters,
                           config.min_lr) if config.decay_lr else config.learning_rate
            t0 = time.perf_counter()
            x, y = overfit if overfit is not None else ranks.train_batch(
                dataset, config, world, it, rng)                              # (k*B, T)
            loss, stop, waited = ranks.step(model, optimizer, forward_backward, x, y, lr,
                                            config, sync, sync is not None and interrupt.requested)
            dt = time.perf_counter() - t0
            if not math.isfinite(loss):
                raise_nan(it, loss, out_dir, bar)
            if it % config.log_interval == 0:
                metrics.write(iter=it, loss=loss, lr=lr, dt_ms=dt * 1e3,
                              tokens_per_s=tokens_per_step / dt,
                              **({"reduce_ms": waited * 1e3} if sync is not None else {}))
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ms=f"{dt * 1e3:.0f}",
                            tok_s=f"{tokens_per_step / dt:,.0f}")
            bar.update(1)
            if stop if sync is not None else interrupt.requested:   # Ctrl-C, SIGTERM: save
                save(it + 1, evaluated=False)
                bar.close()
                return interrupt.stopped(it + 1, out_dir, elsewhere=world.size > 1
                                         and interrupt.signum is None)
    finally:
        interrupt.restore()
        bar.close()
    wall = time.perf_counter() - t_start
    if world.is_root and report.plot_losses(metrics, out_dir / "loss.png"):
        print(f"loss curve: {out_dir / 'loss.png'}")
    if config.export_hf and world.is_root:
        if lora:
            nn.merge_lora(model)          # the adapters folded into their weights
        model.save_pretrained(config.export_hf)
        tokenizer_io.save(tok, config.export_hf)
        print(f"exported a Hugging Face GPT-2 folder to {config.export_hf}")
    steps_done = config.max_iters - start
    print(f"done: {n_params:,} parameters, {steps_done * tokens_per_step:,} tokens seen in "
          f"{wall:.1f} s ({steps_done * tokens_per_step / max(wall, 1e-9):,.0f} tokens/s), "
          f"best val loss {best_val:.4f}; checkpoint in {out_dir}")
    return 0


def step(model, optimizer, forward_backward, x, y, lr, config):
    """One process's optimizer step on x, y (k*B, T): ranks.step without ranks; the loss."""
    return ranks.step(model, optimizer, forward_backward, x, y, lr, config)[0]


def raise_nan(it, loss, out_dir, bar):
    bar.close()
    run_guard.stop(f"the loss became {loss} at iteration {it}", out_dir, "iteration",
                   "Try a lower --learning_rate or a smaller --grad_clip.")


if __name__ == "__main__":
    from .cli import run as run_cli
    run_cli(main)
