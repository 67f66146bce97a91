"""The `finetune instruct` task (Raschka, ch. 7): teach the language model to follow
instructions in the Alpaca format.

Each item is format_prompt(instruction, input) + output + <|endoftext|>
(tinygrad_gpt/finetune_data.py has the template); the model is trained as a language model
on it, with the prompt's targets (--mask_prompt, the default) and the padding after the
first end token set to -100, which cross_entropy ignores, so the loss is the mean over the
response tokens and that end token. Evaluations report the masked loss on train and val.
At the end, responses.md shows, for the first --responses val items, the base model's
answer beside the fine-tuned one's (greedy decoding, stopped at the end token), and the
expected output.
"""
from pathlib import Path

import numpy as np

from tensor import no_grad

from . import finetune_batches, finetune_data
from .cli import UserError
from .finetune_task import Task

TRAIN_EVAL_BATCHES = 20


class InstructTask(Task):
    default_epochs = 2

    def __init__(self, config, saved, world=None):
        super().__init__(config, saved, world)
        self.check_template()
        source = config.data or "the Shakespeare instruction task"
        if config.data:
            items = finetune_data.read_instructions(config.data)
        else:
            from .shakespeare_tasks import instructions
            items = instructions(seed=config.seed)
        train, val, test = finetune_data.split_instructions(items, config.seed, source=source)

        def make(part, seed):
            return finetune_batches.InstructionBatches(
                part, self.tok, self.end_id, self.max_length, config.batch_size, seed=seed,
                mask_prompt=config.mask_prompt, source=source)
        self.train_batches, self.val_batches = make(train, config.seed), make(val, 0)
        cut = self.train_batches.truncated + self.val_batches.truncated
        dropped = self.train_batches.dropped + self.val_batches.dropped
        print(f"data: {self.train_batches.n} train / {self.val_batches.n} val instructions"
              f" ({len(test)} test items kept aside)"
              + (f"; {cut} truncated to {self.max_length} tokens" if cut else "")
              + (f", {dropped} dropped (no response token left)" if dropped else ""))
        self.model = self.body
        # responses.md compares with the model as it is now, before fine-tuning
        self.base_answers = None if saved or not config.responses or not self.world.is_root \
            else self.answers(self.body)
        self.set_trainable(self.model, [])

    def check_template(self):
        """The Alpaca template must encode and leave room for a response in the context."""
        template = finetune_data.format_prompt("Name an animal.")
        try:
            n = len(finetune_batches.text_encoder(self.tok)(template))
        except (ValueError, KeyError):
            missing = sorted(set(template) - set(getattr(self.tok, "stoi", template)))
            raise UserError(f"the base's tokenizer cannot encode the Alpaca prompt template "
                            f"(it lacks {''.join(missing)!r}): use a BPE base (train "
                            "--tokenizer bpe) or a GPT-2 folder") from None
        if n + 8 > self.max_length:
            raise UserError(f"the Alpaca prompt template alone takes {n} tokens of the "
                            f"{self.max_length}-token context: use a base with a longer "
                            "block_size (or a larger --max_length)")

    def loss(self, model, batch):
        x, y = batch
        return model(x, y)[1]

    def count(self, batch):
        """The counted targets of a batch: those that are not -100."""
        return int((batch[1] != finetune_data.IGNORE_INDEX).sum())

    def mean_loss(self, model, batches, limit=None):
        """The mean over counted targets; on N ranks the batches are shared out (eval_map)."""
        def one(batch):
            counted = self.count(batch)
            return float(model(*batch)[1].item()) * counted, counted

        model.eval()
        with no_grad():
            results = self.eval_map(batches, limit, one)
        model.train()
        total, n = 0.0, 0
        for loss, counted in results:
            total, n = total + loss, n + counted
        return total / max(n, 1)

    def evaluate(self, model):
        return {"train_loss": self.mean_loss(model, self.train_batches, TRAIN_EVAL_BATCHES),
                "val_loss": self.mean_loss(model, self.val_batches)}

    def answers(self, model):
        """Greedy responses of `model` to the first --responses val items."""
        out = []
        encode = finetune_batches.text_encoder(self.tok)
        for item in self.val_batches.items[:self.config.responses]:
            prompt = encode(finetune_data.format_prompt(item["instruction"],
                                                        item.get("input", "")))
            out.append(respond(model, self.tok, prompt, self.end_id,
                               self.config.max_new_tokens))
        return out

    def finish(self, model, metrics):
        if not self.config.responses or not self.world.is_root:   # rank 0 alone writes
            return
        tuned = self.answers(self.merged_body())
        base = self.base_answers or ["(not kept: this run was resumed)"] * len(tuned)
        lines = ["# Responses: base model vs fine-tuned", "",
                 f"Base: {self.config.init_from}. Greedy decoding, at most "
                 f"{self.config.max_new_tokens} tokens, stopped at the end token.", ""]
        for k, item in enumerate(self.val_batches.items[:len(tuned)]):
            lines += [f"## {k + 1}. {item['instruction']}", ""]
            if item.get("input"):
                lines += [f"**Input:** {item['input']}", ""]
            lines += [f"**Expected:** {item['output']}", "", f"**Base:** {base[k]}", "",
                      f"**Fine-tuned:** {tuned[k]}", ""]
        path = Path(self.config.out_dir) / "responses.md"
        path.write_text("\n".join(lines), encoding="utf-8")
        print(f"responses of the base and the fine-tuned model: {path}")


def respond(model, tok, prompt_ids, stop_id, max_new_tokens):
    """Greedy continuation of prompt_ids up to (not including) the stop token, as text."""
    block = model.config.block_size
    prompt_ids = list(prompt_ids)[-(block - 1):] if len(prompt_ids) >= block else prompt_ids
    ids = model.generate(np.asarray([prompt_ids]), max_new_tokens, temperature=0,
                         stop_token=stop_id)[0, len(prompt_ids):].tolist()
    if stop_id in ids:
        ids = ids[:ids.index(stop_id)]
    return " ".join(tok.decode(ids).split()) or "(empty)"
