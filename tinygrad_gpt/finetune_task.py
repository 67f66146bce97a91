"""What the two fine-tuning tasks share: the base model and its tokenizer, which parameters
train (--trainable, LoRA), the end-of-text id, the run folder's layout, and one optimizer
step (AdamW, or with --zero 1 nn.ZeroAdamW: its moments sharded over the ranks).

A fine-tuning run folder (--out_dir) holds, as a training run does, ckpt.json +
ckpt-<step>.safetensors (every weight, the optimizer state) and tokenizer/; ckpt.json also
keeps the base model's config, the task's labels and the LoRA settings, so a resumed run,
`python -m tinygrad_gpt.classify` and `python -m tinygrad_gpt.sample --out_dir` rebuild
the same model without reading --init_from again.
"""
import math
from pathlib import Path

import numpy as np

import nn
from gpt import GPT, GPTConfig
from tensor import backend

from . import memory, tokenizer_io
from .cli import UserError
from .pretrained import read_base

END_OF_TEXT = "<|endoftext|>"


def end_id(tok):
    """The id that pads batches and ends a response: <|endoftext|>, or, for a tokenizer
    without one (a character-level model trained here), the newline's id."""
    special = getattr(tok, "special_tokens", {})
    if END_OF_TEXT in special:
        return special[END_OF_TEXT]
    stoi = getattr(tok, "stoi", {})
    if "\n" in stoi:
        return stoi["\n"]
    raise UserError("the tokenizer has neither <|endoftext|> nor a newline to end a response "
                    "with: fine-tune a model whose tokenizer has one")


def check_memory(config, model_config, world=None):
    """Refuse (UserError) a fine-tuning run whose memory estimate (memory.py) does not fit,
    before any weight is read; the batches are at most model_config.block_size long. On N
    ranks the estimate is per rank, as train's (report.check_memory): --zero 1 keeps 1/N
    of AdamW's moments, and a machine's free memory is shared by its ranks. Returns the
    estimate by part."""
    n_ranks, local = (1, 1) if world is None else (world.size, world.local_size)
    settings = lora_settings(config)
    n_classes = 2 if config.mode == "classify" else None   # the head's C x n: labels come later
    parts = memory.estimate(model_config, config.batch_size, trainable=config.trainable_part,
                            lora_rank=settings["rank"], lora_targets=settings["targets"],
                            n_classes=n_classes, n_ranks=n_ranks, zero=config.zero,
                            device=config.device)
    free = memory.available(config.device) // local if local > 1 else None
    memory.check(parts, config.device, free=free, lower={
        "activations": f"--batch_size ({config.batch_size}) or --max_length "
                       f"({model_config.block_size})",
        "model": "what trains (--trainable last_block or lora: fewer gradients and moments), "
                 "or fine-tune a smaller base"})
    return parts


def optimizer_of(params, config, world):
    """AdamW on the trainable params (constant learning rate, betas 0.9, 0.999); with --zero
    1 nn.ZeroAdamW, its moments sharded over the ranks (one process: the same steps, bit
    for bit, as train's --zero 1). Its checkpoints are nn.AdamW's files either way."""
    groups = nn.decay_groups(params, config.weight_decay)
    kind = nn.ZeroAdamW if config.zero else nn.AdamW
    extra = {"world": world} if config.zero else {}
    return kind(groups, lr=config.learning_rate, betas=(0.9, 0.999), **extra)


def sync_of(world, params, optimizer, config):
    """What averages the gradients over the ranks: the ZeroAdamW itself (--zero 1), an
    nn.GradientReducer on N ranks, or None (one process: the gradients as they are)."""
    if config.zero:
        return optimizer
    return nn.GradientReducer(params, world) if world.size > 1 else None


def step(task, model, optimizer, sync, batch, config, stop=False):
    """One optimizer step on a step's batch: on N ranks this rank's items (task.share), the
    gradients averaged weighted by every rank's counted targets (sync.reduce), clipped to
    the global norm --grad_clip, then AdamW. Returns (the loss: its mean over the whole
    batch's counted targets, and whether any rank asked to stop); a loss that is not finite
    is returned without a step."""
    optimizer.zero_grad()
    if task.world.size == 1:
        value = backward(task, model, batch)
        if sync is not None:            # --zero 1 on one process: its shard is all of g
            value, _, stop = sync.reduce(value, stop=stop)
    else:                       # this rank's items; the average weighted by their targets
        part, count = task.share(batch)
        hook = sync.start(count) if hasattr(sync, "start") else None  # buckets sent during
        value = backward(task, model, part, hook) if count else 0.0   # backward (reducer.py)
        value, _, stop = sync.reduce(value, count=count, stop=stop)
    if not math.isfinite(value):
        return value, stop
    if config.grad_clip:
        if config.zero:
            optimizer.clip_grad_norm(config.grad_clip)
        else:
            nn.clip_grad_norm(optimizer.params, config.grad_clip)
    optimizer.step()
    return value, stop


def backward(task, model, batch, leaf_done=None):
    """Forward and backward of the task's loss on batch; the loss."""
    loss = task.loss(model, batch)
    loss.backward(leaf_done=leaf_done)
    return float(loss.item())


def lora_settings(config):
    targets = tuple(t.strip() for t in config.lora_targets.split(",") if t.strip())
    return {"rank": config.lora_rank, "alpha": config.lora_alpha, "targets": list(targets)}


class Task:
    """Base of ClassifyTask and InstructTask: self.body (a GPT), self.tok, self.model."""

    default_epochs = 3

    def __init__(self, config, saved, world=None):
        self.config = config
        self.world = nn.distributed.SingleWorld() if world is None else world
        out_dir = Path(config.out_dir)
        if saved:                                   # --resume: all from the run folder
            info = saved
            check_memory(config, GPTConfig.from_dict(info["model_config"]), self.world)
            self.body = GPT(GPTConfig.from_dict(info["model_config"]))
            self.tok = tokenizer_io.load(out_dir / "tokenizer")
            self.base_info = info.get("base", {})
        else:
            base = read_base(config.init_from)      # shape and tokenizer, no weights yet
            if base.model != "gpt":
                raise UserError(f"--init_from {config.init_from} is a {base.model} model: "
                                "fine-tune a GPT")
            stored = base.config.block_size
            if config.max_length > stored:
                raise UserError(f"--max_length {config.max_length} is longer than the model's "
                                f"context ({stored} tokens): use {stored} or less")
            check_memory(config, base.model_config(config.max_length or None,
                                                 config.dropout), self.world)
            self.body = base.load(config.device, block_size=config.max_length or None,
                                  dropout=config.dropout)
            self.tok, self.base_info = base.tokenizer, base.to_dict()
            print(f"base: {base.describe()}")
        self.end_id = end_id(self.tok)
        self.max_length = self.body.config.block_size

    def set_trainable(self, model, prefixes):
        """--trainable: freeze every parameter, then unfreeze `prefixes` (all: none frozen);
        lora: adapters on the body's Linear layers (nn.apply_lora freezes the rest of it)."""
        part = self.config.trainable_part
        if part == "lora":
            try:
                nn.apply_lora(self.body, **lora_settings(self.config))
            except ValueError as e:
                raise UserError(f"--lora_targets: {e}") from None
            return model
        if part != "all":
            model.freeze()
            model.unfreeze(*prefixes)
        return model

    def info(self):
        lora = lora_settings(self.config) if self.config.trainable_part == "lora" else None
        return {"model_config": self.body.config.to_dict(), "model": "gpt", "lora": lora,
                "base": self.base_info, "mode": self.config.mode}

    def steps_per_epoch(self):
        return len(self.train_batches)

    def batch(self, it):
        """Step it's batch: epoch it // steps_per_epoch, shuffled by (seed, epoch). On N ranks
        it also seeds this rank's dropout masks from (seed, it, rank), as train does: the
        ranks draw independent masks, and a resume (on as many ranks) draws the same ones,
        whatever each rank drew before (a checkpoint keeps rank 0's generator only)."""
        if self.world.size > 1:
            backend.manual_seed(np.random.SeedSequence([self.config.seed, it, self.world.rank])
                                .generate_state(1)[0])
        n = len(self.train_batches)
        epoch, k = divmod(it, n)
        order = self.train_batches.order(epoch)
        size = self.train_batches.batch_size
        return self.train_batches.collate(order[k * size:(k + 1) * size])

    def share(self, batch):
        """This rank's part of a step's batch: items r, r + N, ... (N ranks), and its number
        of counted targets (self.count); all ranks' parts together are the whole batch."""
        n, r = self.world.size, self.world.rank
        part = tuple(a[r::n] for a in batch)
        return part, self.count(part)

    def eval_map(self, batches, limit, fn):
        """[fn(batch) for every evaluation batch (eval_batches), in order]. On N ranks rank r
        computes the batches i = r mod N and the results are gathered: every rank gets the
        one process's list, so sums over it are the one process's numbers."""
        world = self.world
        mine = [(i, fn(batch)) for i, batch in enumerate(self.eval_batches(batches, limit))
                if i % world.size == world.rank]
        if world.size > 1:
            mine = sorted((pair for part in world.allgather(mine) for pair in part),
                          key=lambda pair: pair[0])
        return [result for _, result in mine]

    def eval_batches(self, batches, limit=None):
        """Every batch of `batches` in item order, or, with limit, `limit` batches of a fixed
        seeded sample of its items (the train split's estimate: the same items at every
        evaluation, drawn from the whole split, not its first items, which a file may hold
        sorted by label)."""
        if limit is None or limit * batches.batch_size >= batches.n:
            yield from batches.in_order()
            return
        picked = np.sort(np.random.default_rng(0).permutation(batches.n)[:limit *
                                                                          batches.batch_size])
        for k in range(0, len(picked), batches.batch_size):
            yield batches.collate(picked[k:k + batches.batch_size])

    def merged_body(self):
        """The body as a plain GPT (LoRA adapters folded into their weights)."""
        if self.config.trainable_part == "lora":
            nn.merge_lora(self.body)
        return self.body

    def export_hf(self, model, folder):
        """A Hugging Face GPT-2 folder of the (merged) language model and its tokenizer."""
        body = self.merged_body()
        body.save_pretrained(folder)
        tokenizer_io.save(self.tok, folder)
