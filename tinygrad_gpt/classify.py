"""Text classification with a fine-tuned GPT: the `finetune classify` task, and the command
that uses its result.

    python -m tinygrad_gpt.classify --out_dir out-classify --text "To be, or not to be"
    python -m tinygrad_gpt.classify --out_dir out-classify --file lines.txt   # one text a line

prints each text's label and its probability. The task (ClassifyTask, run by
tinygrad_gpt/finetune.py): a CSV/TSV/JSON Lines file of text and label (or, without --data,
Shakespeare's speeches labelled by their play's genre), split train/val/test, a head
C -> n_classes on the last real token (gpt/classifier.py); evaluations report loss and
accuracy on train and val; at the end the test accuracy and confusion matrix are printed and
written to results.json, the curves to metrics.png.
"""
if __name__ == "__main__":     # run as a program: OpenBLAS's idle threads sleep at once
    import os                  # (before NumPy loads it; see tensor/fast)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import json
import sys
from pathlib import Path

import numpy as np

import nn
import tensor.fast
from gpt import GPT, GPTConfig
from gpt.classifier import GPTClassifier
from gpt.hf import config_to_hf, to_hf_state_dict
from tensor import no_grad
from tensor.functional import softmax

from . import checkpoint, finetune_batches, finetune_data, report, tokenizer_io
from .cli import ArgumentParser, UserError, check_device, given, report_user_errors
from .finetune_task import Task, end_id

TRAIN_EVAL_BATCHES = 20      # evaluations score the train split on its first 20 batches


class ClassifyTask(Task):
    default_epochs = 5

    def __init__(self, config, saved, world=None):
        super().__init__(config, saved, world)
        if saved:
            self.labels = saved["labels"]
        splits = self.read_data()
        if not saved:
            self.labels = splits[3]
        make = lambda items, seed: finetune_batches.ClassificationBatches(        # noqa: E731
            items, self.tok, self.labels, self.end_id, self.max_length, config.batch_size,
            seed=seed, source=config.data or "the Shakespeare genre task")
        self.train_batches = make(splits[0], config.seed)
        self.val_batches, self.test_batches = make(splits[1], 0), make(splits[2], 0)
        cut = sum(b.truncated for b in (self.train_batches, self.val_batches,
                                        self.test_batches))
        print(f"data: {self.train_batches.n} train / {self.val_batches.n} val / "
              f"{self.test_batches.n} test items, {len(self.labels)} classes "
              f"({', '.join(map(str, self.labels))})"
              + (f"; {cut} items truncated to {self.max_length} tokens" if cut else ""))
        self.model = GPTClassifier(self.body, len(self.labels))
        self.set_trainable(self.model, self.model.trainable_prefixes(config.trainable_part))
        if config.trainable_part == "lora":
            self.model.unfreeze("head")                    # the new head always trains

    def read_data(self):
        config = self.config
        if config.data:
            items = finetune_data.read_labeled(config.data, config.text_column,
                                               config.label_column)
        else:
            from .shakespeare_tasks import genre_speeches
            items = genre_speeches(seed=config.seed)
        return finetune_data.split_labeled(items, config.seed,
                                           source=config.data or "the Shakespeare genre task")

    def loss(self, model, batch):
        x, last, y = batch
        return model(x, last, y)[1]

    def count(self, batch):
        """The counted targets of a batch: its items."""
        return len(batch[2])

    def predictions(self, model, batches, limit=None):
        """(labels, predicted class ids, mean loss) over batches (in their order); on N ranks
        the batches are shared out (eval_map) and every rank gets the same result."""
        def one(batch):
            x, last, y = batch
            logits, loss = model(x, last, y)
            return y, np.asarray(logits.data).argmax(axis=1), float(loss.item()) * len(y)

        model.eval()
        with no_grad():
            results = self.eval_map(batches, limit, one)
        model.train()
        total, n = 0.0, 0
        for y, _, loss in results:
            total, n = total + loss, n + len(y)
        return (np.concatenate([r[0] for r in results]),
                np.concatenate([r[1] for r in results]), total / max(n, 1))

    def evaluate(self, model):
        scores = {}
        for name, batches, limit in (("train", self.train_batches, TRAIN_EVAL_BATCHES),
                                     ("val", self.val_batches, None)):
            truth, guess, loss = self.predictions(model, batches, limit)
            scores.update({f"{name}_loss": loss, f"{name}_acc": float((truth == guess).mean())})
        return scores

    def finish(self, model, metrics):
        truth, guess, loss = self.predictions(model, self.test_batches)
        K = len(self.labels)
        confusion = np.zeros((K, K), dtype=np.int64)       # rows: true label, cols: predicted
        np.add.at(confusion, (truth, guess), 1)
        if not self.world.is_root:                   # rank 0 alone prints and writes
            return
        accuracy = float((truth == guess).mean())
        per_class = {str(label): float(confusion[k, k] / max(confusion[k].sum(), 1))
                     for k, label in enumerate(self.labels)}
        print(f"test: accuracy {accuracy:.4f} ({int((truth == guess).sum())}/{len(truth)}), "
              f"loss {loss:.4f}")
        width = max(len(str(label)) for label in self.labels)
        print("confusion matrix (rows: true, columns: predicted):")
        print(" " * (width + 2) + " ".join(f"{str(label)[:8]:>8}" for label in self.labels))
        for k, label in enumerate(self.labels):
            print(f"{str(label):>{width}}  " + " ".join(f"{c:>8}" for c in confusion[k]))
        out = Path(self.config.out_dir)
        (out / "results.json").write_text(json.dumps({
            "test_accuracy": accuracy, "test_loss": loss, "labels": self.labels,
            "per_class_accuracy": per_class, "confusion": confusion.tolist()}, indent=2) + "\n")
        if report.plot_scores(metrics, out / "metrics.png"):
            print(f"curves: {out / 'metrics.png'}; results: {out / 'results.json'}")

    def info(self):
        return {**super().info(), "labels": self.labels}

    def export_hf(self, model, folder):
        """Hugging Face's GPT2ForSequenceClassification: the body's weights, `score` = head."""
        body = self.merged_body()
        folder.mkdir(parents=True, exist_ok=True)
        hf = to_hf_state_dict(body.state_dict(), body.config.n_layer)
        hf["score.weight"] = np.ascontiguousarray(tensor.backend.to_numpy(model.head.weight.data))
        from safetensors.numpy import save_file
        save_file(hf, str(folder / "model.safetensors"), metadata={"format": "pt"})
        hf_config = {**config_to_hf(body.config), "architectures": [
            "GPT2ForSequenceClassification"], "num_labels": len(self.labels),
            "id2label": {str(k): str(v) for k, v in enumerate(self.labels)},
            "label2id": {str(v): k for k, v in enumerate(self.labels)},
            "pad_token_id": self.end_id}
        (folder / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        tokenizer_io.save(self.tok, folder)


# ----- python -m tinygrad_gpt.classify ------------------------------------------------------
def load_classifier(out_dir, device):
    """The fine-tuned classifier of a `finetune classify` run: (model, tokenizer, labels)."""
    info, weights, _ = checkpoint.load(out_dir)
    if info.get("mode") != "classify":
        raise UserError(f"{out_dir} is not a `finetune classify` run (no labels in its "
                        "checkpoint): point --out_dir at one")
    body = GPT(GPTConfig.from_dict(info["model_config"]))
    if info.get("lora"):
        nn.apply_lora(body, **info["lora"])
    model = GPTClassifier(body, len(info["labels"]))
    model.load_state_dict(weights, strict=True)
    return model.to(device), tokenizer_io.load(Path(out_dir) / "tokenizer"), info["labels"]


def parse_args(argv):
    p = ArgumentParser(prog="python -m tinygrad_gpt.classify", allow_abbrev=False,
                       description="Label texts with a fine-tuned classifier.")
    p.add_argument("--out_dir", "--out-dir", default="out-classify",
                   help="a `finetune classify` run (default: out-classify)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one text to classify")
    source.add_argument("--file", help="a UTF-8 file with one text a line")
    p.add_argument("--device", default="cpu")
    return p.parse_args(argv)


def main(argv=None):
    with tensor.fast.on():
        return report_user_errors(run, sys.argv[1:] if argv is None else argv)


def run(argv):
    args = parse_args(argv)                   # its errors too are one line (cli.ArgumentParser)
    given("--out_dir", args.out_dir)
    device = check_device(args.device)
    if args.file is not None:
        given("--file", args.file)
        try:
            texts = [line for line in Path(args.file).read_text(encoding="utf-8").splitlines()
                     if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--file {args.file}: cannot read it as UTF-8 text ({e})") from None
        if not texts:
            raise UserError(f"--file {args.file} holds no text: one text a line")
    else:
        if not args.text.strip():
            raise UserError("--text is empty: give the text to classify")
        texts = [args.text]
    model, tok, labels = load_classifier(args.out_dir, device)
    model.eval()
    block = model.config.block_size
    pad = end_id(tok)
    encode = finetune_batches.text_encoder(tok)
    for text in texts:
        try:
            ids = encode(text)[:block]
        except (ValueError, KeyError) as e:
            raise UserError(f"cannot encode {text[:40]!r} with the model's tokenizer: "
                            f"{e}") from None
        if not ids:
            ids = [pad]
        with no_grad():
            logits, _ = model(np.asarray([ids]), np.asarray([len(ids) - 1]))
        probs = tensor.backend.to_numpy(softmax(logits).data)[0]
        k = int(probs.argmax())
        print(f"{labels[k]}\t{probs[k]:.4f}\t{text}")
    return 0


if __name__ == "__main__":
    from .cli import run as run_cli
    run_cli(main)
