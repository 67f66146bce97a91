"""Fine-tuning items as token ids, and batches of them: padded classification batches (the
index of each text's last real token) and instruction batches (targets -100 where they must
not count). The files, splits and the Alpaca template are tinygrad_gpt/finetune_data.py.
"""
import numpy as np

from .cli import UserError
from .finetune_data import IGNORE_INDEX, format_prompt, show, where_of

def text_encoder(tok):
    """text -> ids for user text: special-token strings in it are ordinary characters."""
    return getattr(tok, "encode_ordinary", None) or tok.encode


def encode_each(tok, items, texts_of, source):
    """[[ids of each text in texts_of(item)] for each item]; a text the tokenizer cannot
    encode (a character tokenizer's unknown character) is a UserError naming its line."""
    encode, out = text_encoder(tok), []
    for item in items:
        try:
            out.append([encode(text) for text in texts_of(item)])
        except ValueError as e:
            raise UserError(f"{where_of(item, source)}: cannot be encoded: {e}") from None
    return out


class Batches:
    """Seeded batches over n items: collate(indices) builds one. Epoch e visits the items in
    default_rng((seed, e)).permutation(n); next_batch() walks the epochs one after another,
    the last batch of an epoch shorter when batch_size does not divide n."""

    def __init__(self, n, batch_size, seed, source="the data"):
        if batch_size < 1:
            raise UserError(f"--batch_size {batch_size}: must be at least 1")
        if n < 1:
            raise UserError(f"{source}: no items to make batches of; add items")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch, self.position = 0, 0            # where next_batch() goes on from

    def __len__(self):
        """Batches per epoch."""
        return -(-self.n // self.batch_size)

    def order(self, epoch):
        return np.random.default_rng((self.seed, epoch)).permutation(self.n)

    def epoch_batches(self, epoch):
        """Every batch of epoch `epoch`, shuffled."""
        return self.batches(self.order(epoch))

    def in_order(self):
        """Every batch, items in their given order (for evaluation)."""
        return self.batches(np.arange(self.n))

    def batches(self, order):
        for start in range(0, self.n, self.batch_size):
            yield self.collate(order[start:start + self.batch_size])

    def next_batch(self):
        """The next batch of the epoch under way, then of the next epoch (--max_iters)."""
        picked = self.order(self.epoch)[self.position:self.position + self.batch_size]
        self.position += self.batch_size
        if self.position >= self.n:
            self.epoch, self.position = self.epoch + 1, 0
        return self.collate(picked)

    def state_dict(self):
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state):
        self.epoch, self.position = int(state["epoch"]), int(state["position"])


def pad_classification(ids, end_id):
    """[[id, ...]] -> x (B, T) int64 padded with end_id to the longest, last (B,) int64: the
    index of each row's last real token (the one whose hidden state the head reads)."""
    T = max(map(len, ids))
    x = np.full((len(ids), T), end_id, dtype=np.int64)                 # (B, T)
    for row, seq in enumerate(ids):
        x[row, :len(seq)] = seq
    return x, np.array([len(seq) - 1 for seq in ids], dtype=np.int64)    # (B,)


class ClassificationBatches(Batches):
    """Labeled items -> batches (x (B, T), last (B,), y (B,)) of int64: texts truncated to
    their first max_length tokens (self.truncated counts the items cut), y the index of the
    item's label in `labels`."""

    def __init__(self, items, tok, labels, end_id, max_length, batch_size, seed=0,
                 source="the data"):
        if max_length < 1:
            raise UserError(f"--max_length {max_length}: must be at least 1")
        index = {label: k for k, label in enumerate(labels)}          # label -> class id
        for item in items:
            if item["label"] not in index:
                raise UserError(f"{where_of(item, source)}: the label {show(item['label'])} "
                                f"is not one of the model's labels {list(labels)}")
        ids = [seq for seq, in encode_each(tok, items, lambda item: [item["text"]], source)]
        self.truncated = sum(len(seq) > max_length for seq in ids)
        self.ids = [seq[:max_length] for seq in ids]
        self.y = np.array([index[item["label"]] for item in items], dtype=np.int64)
        self.items, self.end_id = list(items), end_id
        super().__init__(len(items), batch_size, seed, source)

    def collate(self, indices):
        x, last = pad_classification([self.ids[i] for i in indices], self.end_id)
        return x, last, self.y[np.asarray(indices, dtype=np.int64)]


def instruction_pair(prompt, response, end_id, max_length, mask_prompt):
    """prompt ids + response ids + [end_id] -> (x, y, truncated): x = ids[:-1], y = ids[1:],
    both cut to max_length; with mask_prompt, the targets that are prompt tokens are -100."""
    ids = prompt + response + [end_id]
    truncated = len(ids) - 1 > max_length
    ids = ids[:max_length + 1]
    x, y = ids[:-1], ids[1:]
    if mask_prompt:
        masked = max(0, min(len(prompt) - 1, len(y)))  # y[i] = ids[i + 1] is a prompt token
        y = [IGNORE_INDEX] * masked + y[masked:]
    return x, y, truncated


class InstructionBatches(Batches):
    """Alpaca items -> batches (x (B, T), y (B, T)) of int64.

    Each item is the ids of format_prompt(...) + output + <|endoftext|>; x = ids[:-1],
    y = ids[1:]. Rows are padded with end_id to the longest in the batch; the item's own end
    token stays a target and every pad target is -100 (IGNORE_INDEX). With mask_prompt the
    prompt's targets are -100 too, so only response tokens and the first end token count.
    Items longer than max_length + 1 ids are cut (self.truncated counts them); an item left
    with no counted target is dropped (self.dropped; every dropped item is also truncated).
    """

    def __init__(self, items, tok, end_id, max_length, batch_size, seed=0, mask_prompt=True,
                 source="the data"):
        if max_length < 1:
            raise UserError(f"--max_length {max_length}: must be at least 1")
        texts = encode_each(tok, items, lambda item: (
            format_prompt(item["instruction"], item.get("input", "")), item["output"]), source)
        self.items, self.x_ids, self.y_ids = [], [], []
        self.truncated = self.dropped = 0
        for item, (prompt, response) in zip(items, texts):
            x, y, cut = instruction_pair(prompt, response, end_id, max_length, mask_prompt)
            self.truncated += cut
            if all(t == IGNORE_INDEX for t in y):
                self.dropped += 1
                continue
            self.items.append(item)
            self.x_ids.append(x)
            self.y_ids.append(y)
        if items and not self.items:
            raise UserError(f"{source}: every prompt is longer than --max_length {max_length}, "
                            "so no response token is left to learn; raise --max_length")
        self.end_id = end_id
        super().__init__(len(self.items), batch_size, seed, source)

    def collate(self, indices):
        T = max(len(self.x_ids[i]) for i in indices)
        x = np.full((len(indices), T), self.end_id, dtype=np.int64)        # (B, T)
        y = np.full((len(indices), T), IGNORE_INDEX, dtype=np.int64)       # (B, T)
        for row, i in enumerate(indices):
            x[row, :len(self.x_ids[i])] = self.x_ids[i]
            y[row, :len(self.y_ids[i])] = self.y_ids[i]
        return x, y
