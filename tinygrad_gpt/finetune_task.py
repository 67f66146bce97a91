"""What the two fine-tuning tasks share: the base model and its tokenizer, which parameters
train (--trainable, LoRA), the end-of-text id, and the run folder's layout.

A fine-tuning run folder (--out_dir) holds, as a training run does, ckpt.json +
ckpt-<step>.safetensors (every weight, the optimizer state) and tokenizer/; ckpt.json also
keeps the base model's config, the task's labels and the LoRA settings, so a resumed run,
`python -m tinygrad_gpt.classify` and `python -m tinygrad_gpt.sample --out_dir` rebuild
the same model without reading --init_from again.
"""
from pathlib import Path

import numpy as np

import nn
from gpt import GPT, GPTConfig

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


def check_memory(config, model_config):
    """Refuse (UserError) a fine-tuning run whose memory estimate (memory.py) does not fit,
    before any weight is read; the batches are at most model_config.block_size long."""
    settings = lora_settings(config)
    n_classes = 2 if config.mode == "classify" else None   # the head's C x n: labels come later
    parts = memory.estimate(model_config, config.batch_size, trainable=config.trainable_part,
                            lora_rank=settings["rank"], lora_targets=settings["targets"],
                            n_classes=n_classes, device=config.device)
    memory.check(parts, config.device, {
        "activations": f"--batch_size ({config.batch_size}) or --max_length "
                       f"({model_config.block_size})",
        "model": "what trains (--trainable last_block or lora: fewer gradients and moments), "
                 "or fine-tune a smaller base"})


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
            check_memory(config, GPTConfig.from_dict(info["model_config"]))
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
            check_memory(config, base.model_config(config.max_length or None, config.dropout))
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
        """Step it's batch: epoch it // steps_per_epoch, shuffled by (seed, epoch)."""
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
