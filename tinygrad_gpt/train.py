"""python -m tinygrad_gpt.train: train a GPT (default: character-level, on Shakespeare).

The loop, as nanoGPT's: at each iteration set the learning rate, evaluate every
eval_interval iterations (and checkpoint), then take one optimizer step made of
gradient_accumulation_steps micro-batches. Ctrl-C saves a checkpoint and exits; a NaN
or infinite loss stops the run and leaves the last good checkpoint; --resume continues.
"""
import math
import signal
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
from tensor import backend, no_grad

from . import checkpoint, data, report, settings, tokenizers
from .cli import report_user_errors
from .settings import UserError

# Settings a resumed run may change; the rest must match the checkpoint.
RESUMABLE = {"max_iters", "lr_decay_iters", "eval_interval", "log_interval", "eval_iters",
             "sample_tokens", "always_save_checkpoint", "device", "out_dir", "data"}


def build_model(config, vocab_size):
    model_config = GPTConfig(vocab_size=vocab_size, block_size=config.block_size,
                             n_layer=config.n_layer, n_head=config.n_head,
                             n_embd=config.n_embd, dropout=config.dropout, bias=config.bias)
    tensor.manual_seed(config.seed)
    model = Bigram(model_config) if config.model == "bigram" else GPT(model_config)
    if config.dtype == "float64":
        for p in model.parameters():
            p.data = p.data.astype(np.float64)
    return model.to(config.device)


def loss_of(model, x, y):
    """The training loss of a batch: what nn.DataParallel computes on each half."""
    return model(x, y)[1]


def stream1_state(device):
    """The dropout generator of a batch's second half (--parallel), for the checkpoint."""
    with backend.random_stream(1):
        return backend.generator(device).bit_generator.state


def evaluate(model, dataset, config, it):
    """Mean loss over eval_iters batches of each split, with batches fixed by (seed, it)."""
    losses = {}
    model.eval()
    with no_grad():
        for k, split in enumerate(("train", "val")):
            rng = np.random.default_rng([config.seed, it, k])
            total = 0.0
            for _ in range(config.eval_iters):
                x, y = data.get_batch(getattr(dataset, split), config.block_size,
                                      config.batch_size, rng)
                total += model(x, y)[1].item()
            losses[split] = total / config.eval_iters
    model.train()
    return losses


def sample_text(model, tok, config, it):
    prompt = np.asarray([tokenizers.prompt_ids(tok, "\n")])
    ids = model.generate(prompt, config.sample_tokens, temperature=0.8, top_k=200,
                         rng=[config.seed, it])
    return tok.decode(ids[0, prompt.shape[1]:].tolist())


class Interrupt:
    """The first Ctrl-C asks the loop to stop after the current step; a second one kills."""

    def __init__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self.handle)

    def handle(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, self.previous)
            raise KeyboardInterrupt
        self.requested = True

    def restore(self):
        signal.signal(signal.SIGINT, self.previous)


def setup(argv):
    config, resume, explicit = settings.parse(argv)
    out_dir = Path(config.out_dir)
    saved = None
    if resume:
        saved = checkpoint.load(out_dir)
        stored = settings.TrainConfig(**saved[0]["train_config"])
        changed = [k for k in explicit if k not in RESUMABLE
                   and getattr(config, k) != getattr(stored, k)]
        if changed:
            raise UserError(f"--resume: {', '.join('--' + k for k in changed)} differ from the "
                            f"checkpoint in {out_dir}; only {', '.join(sorted(RESUMABLE))} "
                            "may change")
        config = settings.TrainConfig(**{**asdict(stored),
                                         **{k: getattr(config, k) for k in explicit}})
        config.validate()
    try:
        backend.check_device(config.device)
    except RuntimeError as e:
        raise UserError(str(e)) from None
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        probe = out_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out_dir {out_dir} is not writable ({e.strerror}): choose another "
                        "folder") from None
    return config, saved


def main(argv=None):
    return report_user_errors(train, sys.argv[1:] if argv is None else argv)


def train(argv):
    config, saved = setup(argv)
    out_dir = Path(config.out_dir)
    dataset = data.prepare(config.data, config.tokenizer, config.vocab_size)
    tok = dataset.tokenizer
    for split in ("train", "val"):
        if len(getattr(dataset, split)) < config.block_size + 1:
            raise UserError(f"the {split} split has {len(getattr(dataset, split))} tokens, "
                            f"fewer than block_size + 1 = {config.block_size + 1}: use more "
                            "data or a smaller --block_size")
    tokenizers.save(tok, out_dir / "tokenizer")
    model = build_model(config, tok.vocab_size)
    n_params = model.num_parameters()
    print(f"data: {len(dataset.train):,} train / {len(dataset.val):,} val tokens, "
          f"{config.tokenizer} tokenizer with {tok.vocab_size} tokens")
    print(f"model: {config.model}, {n_params:,} parameters ({n_params / 1e6:.2f}M)")
    itemsize = 8 if config.dtype == "float64" else 4
    report.check_memory(report.estimate_memory(n_params, config, tok.vocab_size, itemsize),
                        config.device)
    optimizer = nn.AdamW(nn.decay_groups(model.parameters(), config.weight_decay),
                         lr=config.learning_rate, betas=(config.beta1, config.beta2))
    rng = np.random.default_rng(config.seed)
    start, best_val = 0, math.inf
    if saved:
        info, weights, optim_state = saved
        try:
            model.load_state_dict(weights, strict=True)
            optimizer.load_state_dict(optim_state)
        except ValueError as e:
            raise UserError(f"--resume: the checkpoint does not fit this model: {e}") from None
        start, best_val = info["iter"], info["best_val_loss"]
        rng = checkpoint.restore_rng(info["rng"])
        backend.manual_seed(config.seed)
        backend.generator(config.device).bit_generator.state = info["dropout_rng"]
        if "dropout_rng_stream1" in info:       # the second half's dropout (--parallel)
            with backend.random_stream(1):
                backend.generator(config.device).bit_generator.state = \
                    info["dropout_rng_stream1"]
        print(f"resuming from iteration {start} (best val loss {best_val:.4f})")
    metrics = report.Metrics(out_dir, truncate_after=start if saved else None)
    overfit = data.get_batch(dataset.train, config.block_size,
                             config.batch_size * config.gradient_accumulation_steps,
                             np.random.default_rng(config.seed)) if config.overfit_batch else None

    parallel = nn.DataParallel(model, loss_of) if config.parallel == "on" or (
        config.parallel == "auto" and nn.parallel.worth_it(model)) else None
    if parallel is not None:
        print(f"parallel: each batch's two halves at once on two CPU cores (--parallel "
              f"{config.parallel}; off: --parallel off)")

    def save(it, evaluated=True):
        if not bool(optimizer.xp.isfinite(optimizer.flat).all()):   # never save broken weights
            raise_nan(it, "non-finite weights", checkpoint.last_iter(out_dir), out_dir)
        checkpoint.save(out_dir, model, optimizer, {
            "iter": it, "evaluated": evaluated, "best_val_loss": best_val, "train_config": asdict(config),
            "model_config": model.config.to_dict(), "model": config.model,
            "tokenizer": config.tokenizer, "rng": checkpoint.rng_state(rng),
            "dropout_rng": backend.generator(config.device).bit_generator.state,
            "dropout_rng_stream1": stream1_state(config.device)})

    tokens_per_step = config.batch_size * config.block_size * config.gradient_accumulation_steps
    interrupt, t_start, it = Interrupt(), time.perf_counter(), start
    bar = tqdm(total=config.max_iters, initial=start, desc="training", unit="it",
               dynamic_ncols=True)
    try:
        for it in range(start, config.max_iters + 1):
            if (it % config.eval_interval == 0 or it == config.max_iters) and \
                    not (saved and it == start and saved[0]["evaluated"]):
                losses = evaluate(model, dataset, config, it)
                if not all(map(math.isfinite, losses.values())):
                    bar.close()
                    raise_nan(it, losses["val"], checkpoint.last_iter(out_dir), out_dir)
                metrics.write(iter=it, train_loss=losses["train"], val_loss=losses["val"])
                bar.write(f"iter {it}: train loss {losses['train']:.4f}, "
                          f"val loss {losses['val']:.4f}")
                if config.sample_tokens:
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
            loss = step(model, optimizer, dataset, config, rng, lr, overfit, parallel)
            dt = time.perf_counter() - t0
            if not math.isfinite(loss):
                bar.close()
                last = checkpoint.last_iter(out_dir)
                raise_nan(it, loss, last, out_dir)
            if it % config.log_interval == 0:
                metrics.write(iter=it, loss=loss, lr=lr, dt_ms=dt * 1e3,
                              tokens_per_s=tokens_per_step / dt)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", ms=f"{dt * 1e3:.0f}",
                            tok_s=f"{tokens_per_step / dt:,.0f}")
            bar.update(1)
            if interrupt.requested:
                save(it + 1, evaluated=False)
                bar.close()
                print(f"\ninterrupted: checkpoint saved at iteration {it + 1} in {out_dir}; "
                      "continue with --resume")
                return 130
    finally:
        interrupt.restore()
        bar.close()
    wall = time.perf_counter() - t_start
    if report.plot_losses(metrics, out_dir / "loss.png"):
        print(f"loss curve: {out_dir / 'loss.png'}")
    steps_done = config.max_iters - start
    print(f"done: {n_params:,} parameters, {steps_done * tokens_per_step:,} tokens seen in "
          f"{wall:.1f} s ({steps_done * tokens_per_step / max(wall, 1e-9):,.0f} tokens/s), "
          f"best val loss {best_val:.4f}; checkpoint in {out_dir}")
    return 0


def step(model, optimizer, dataset, config, rng, lr, overfit=None, parallel=None):
    """One optimizer step over gradient_accumulation_steps micro-batches; returns the loss.
    parallel: an nn.DataParallel of the model, to run each micro-batch's halves at once."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    k = config.gradient_accumulation_steps
    x, y = overfit if overfit is not None else data.get_batch(
        dataset.train, config.block_size, config.batch_size * k, rng)  # (k*B, T) each
    optimizer.zero_grad()
    total = 0.0
    for xm, ym in zip(np.split(x, k), np.split(y, k)):                  # (B, T) each
        if parallel is not None:            # the same sums, both halves at once
            total += parallel.forward_backward(xm, ym, scale=1.0 / k) / k
            continue
        _, loss = model(xm, ym)
        (loss * (1.0 / k)).backward()       # gradients add up across micro-batches
        total += loss.item() / k
    if not math.isfinite(total):
        return total
    if config.grad_clip:
        norm = nn.clip_grad_norm(model.parameters(), config.grad_clip)
        if not math.isfinite(norm):
            return norm
    optimizer.step()
    return total


def raise_nan(it, loss, last, out_dir):
    kept = f"the last good checkpoint (iteration {last}) in {out_dir} is intact" \
        if last is not None else "no checkpoint was written yet"
    print(f"error: the loss became {loss} at iteration {it}; stopping. {kept}. "
          "Try a lower --learning_rate or a smaller --grad_clip.", file=sys.stderr)
    raise SystemExit(1)


if __name__ == "__main__":
    from .cli import run as run_cli
    run_cli(main)
