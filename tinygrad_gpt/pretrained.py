"""A base model and its tokenizer from a folder: what continued pretraining (train
--init_from) and fine-tuning start from.

The folder (PATH) is one of
    a Hugging Face GPT-2 folder: config.json, model.safetensors, vocab.json, merges.txt
        (GPT-2's byte-level BPE, <|endoftext|> included), as downloaded, or as
        gpt.hf.save_pretrained and tinygrad_gpt.tokenizer_io.save write it;
    one of our training runs: ckpt.json, ckpt-<iter>.safetensors and tokenizer/, as
        python -m tinygrad_gpt.train writes it (tinygrad_gpt/checkpoint.py).

    base = read_base("path/to/gpt2")          # shape and tokenizer; the weights not read yet
    base.config, base.tokenizer               # GPTConfig as stored, CharTokenizer/BPETokenizer
    model = base.load("cpu", block_size=256, dropout=0.1)
    model, tok, base = load_base("path/to/gpt2", "cpu", block_size=256)    # the two at once

block_size may be smaller than the stored one (the position embedding is cropped, as
GPT.crop_block_size), never larger. A bad folder is a UserError: one line naming the
problem and the fix, raised before anything is written.
"""
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from gpt import GPT, GPTConfig, hf
from gpt.bigram import Bigram
from tokenizer import CharTokenizer

from . import checkpoint, tokenizer_io
from .cli import UserError

KINDS = {"hf": "a Hugging Face GPT-2 folder", "run": "a training run"}
# a GPT-2 folder's tokenizer: Hugging Face's files, OpenAI's, or ours for a character model
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("encoder.json", "vocab.bpe"), ("char.json",))


@dataclass
class Base:
    """What a base folder holds, read without its weights."""
    path: Path
    kind: str             # "hf" (a Hugging Face GPT-2 folder) | "run" (one of our runs)
    model: str            # "gpt" | "bigram"
    config: GPTConfig     # the stored model's shape (its own block_size; dropout 0)
    tokenizer: object     # CharTokenizer | BPETokenizer, read from the folder

    @property
    def tokenizer_kind(self):
        return "char" if isinstance(self.tokenizer, CharTokenizer) else "bpe"

    def settings(self):
        """The training settings (tinygrad_gpt.settings.TrainConfig's names) this base fixes;
        block_size is the longest it allows."""
        c = self.config
        return {"model": self.model, "n_layer": c.n_layer, "n_head": c.n_head,
                "n_embd": c.n_embd, "bias": c.bias, "block_size": c.block_size,
                "tokenizer": self.tokenizer_kind, "vocab_size": self.tokenizer.vocab_size}

    def describe(self):
        c = self.config
        shape = "a bigram table" if self.model == "bigram" else (
            f"{c.n_layer} layers, {c.n_head} heads, {c.n_embd} wide, block {c.block_size}, "
            f"{'with' if c.bias else 'no'} biases")
        return (f"{self.path}, {KINDS[self.kind]} ({shape}; {self.tokenizer_kind} tokenizer "
                f"with {self.tokenizer.vocab_size} tokens)")

    def to_dict(self):
        """A JSON-able record of the base, for a run's checkpoint."""
        return {"path": str(self.path), "kind": self.kind, "model": self.model,
                "model_config": self.config.to_dict(), "tokenizer": self.tokenizer_kind,
                "tokenizer_identity": tokenizer_io.identity(self.tokenizer)}

    def model_config(self, block_size=None, dropout=0.0):
        """The GPTConfig of the model load() builds: the stored shape with block_size (<= the
        stored one; None keeps it) and dropout."""
        stored = self.config.block_size
        if block_size is not None and not 0 < block_size <= stored:
            raise UserError(f"--block_size {block_size} is longer than the {stored} positions "
                            f"of --init_from {self.path}: use --block_size {stored} or less")
        try:
            return replace(self.config, block_size=block_size or stored, dropout=dropout)
        except ValueError as e:
            raise UserError(f"--dropout: {e}") from None

    def load(self, device="cpu", block_size=None, dropout=0.0, dtype="float32"):
        """The model with the folder's weights (float32 or float64), block_size cropped,
        in training mode, on device."""
        config = self.model_config(block_size, dropout)
        if self.kind == "hf":
            try:
                weights = hf.read_weights(self.path)
            except ValueError as e:
                raise UserError(f"--init_from {self.path}: {e}") from None
        else:
            weights = checkpoint.load(self.path)[1]
        model = Bigram(self.config) if self.model == "bigram" else GPT(
            replace(self.config, dropout=dropout))
        _load_weights(model, weights, self.path)
        if dtype == "float64":
            for p in model.parameters():
                p.data = p.data.astype(np.float64)
        if self.model == "bigram":
            model.config = config                 # a bigram has no positions to crop
        elif config.block_size < self.config.block_size:
            model.crop_block_size(config.block_size)
        return model.to(device)


def read_base(path):
    """The Base in folder `path`: its kind, model shape and tokenizer (the weights are read
    by Base.load). UserError for a folder that is neither kind or is incomplete."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"--init_from {path}: no such folder; give a Hugging Face GPT-2 "
                        "folder or a training run's --out_dir")
    if (path / "ckpt.json").is_file():
        base = _read_run(path)
    elif (path / "config.json").is_file():
        base = _read_hf(path)
    else:
        raise UserError(f"--init_from {path} is neither a Hugging Face GPT-2 folder (config.json,"
                        " model.safetensors, vocab.json, merges.txt) nor a training run "
                        "(ckpt.json): point it at one")
    if base.tokenizer.vocab_size > base.config.vocab_size:
        raise UserError(f"--init_from {path}: the tokenizer has {base.tokenizer.vocab_size} "
                        f"tokens but the model only {base.config.vocab_size} embedding rows: "
                        "use the tokenizer files that came with these weights")
    return base


def load_base(path, device="cpu", block_size=None, dropout=0.0, dtype="float32"):
    """(model, tokenizer, Base) from folder `path`; see read_base and Base.load."""
    base = read_base(path)
    return base.load(device, block_size, dropout, dtype), base.tokenizer, base


def _load_weights(model, weights, path):
    """Copy weights into model; tensors that do not fit are one short line naming the first."""
    shapes = {name: p.shape for name, p in model.named_parameters()}
    problems = [f"{k} is missing" for k in sorted(set(shapes) - set(weights))]
    problems += [f"{k} is not in the model" for k in sorted(set(weights) - set(shapes))]
    problems += [f"{k} is {tuple(weights[k].shape)}, its config says {shapes[k]}"
                 for k in sorted(set(shapes) & set(weights)) if weights[k].shape != shapes[k]]
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"--init_from {path}: the weights do not fit its config: "
                        f"{'; '.join(problems[:3])}{more}; export or train the folder again")
    model.load_state_dict(weights, strict=True)


def _read_hf(path):
    """A GPT-2 folder's Base: config.json checked against model.safetensors' header (names,
    shapes, dtypes, offsets; gpt.hf.read_config), then the tokenizer files."""
    try:
        config = hf.read_config(path)
    except (FileNotFoundError, ValueError) as e:
        raise UserError(f"--init_from {path}: {e}") from None
    if not any(all((path / name).is_file() for name in names) for names in TOKENIZER_FILES):
        raise UserError(f"--init_from {path} has no vocab.json + merges.txt: copy the model's "
                        "tokenizer files beside its config.json")
    try:
        tok = tokenizer_io.load(path)
    except UserError as e:
        raise UserError(f"--init_from {path}: {e}") from None
    return Base(path, "hf", "gpt", config, tok)


def _read_run(path):
    info = checkpoint.read_info(path)
    try:
        config = GPTConfig.from_dict(info["model_config"])
    except (KeyError, TypeError, ValueError) as e:
        raise UserError(f"--init_from {path}: ckpt.json has no valid model_config ({e}); "
                        "point it at a run written by python -m tinygrad_gpt.train") from None
    model = info.get("model", "gpt")
    if model not in ("gpt", "bigram"):
        raise UserError(f"--init_from {path}: unknown model {model!r} in ckpt.json")
    if not (path / "tokenizer").is_dir():
        raise UserError(f"--init_from {path} has no tokenizer/ folder: copy the run's "
                        "tokenizer/ back beside ckpt.json")
    return Base(path, "run", model, replace(config, dropout=0.0),
                tokenizer_io.load(path / "tokenizer"))


def apply(base, config, chosen):
    """A TrainConfig with the model's shape and tokenizer taken from base (train
    --init_from). UserError naming, in one line, every chosen setting that contradicts it.

    chosen: {setting: where it was set ("the command line", "--preset NAME", ...)} for the
    settings the user set. block_size may be smaller than the base's (the model is cropped);
    the rest of base.settings() must be equal, or not chosen (then taken from the base).
    """
    fixed = base.settings()
    bad = []
    for key in sorted(set(chosen) & set(fixed)):
        value, theirs = getattr(config, key), fixed[key]
        if (value > theirs) if key == "block_size" else (value != theirs):
            source = "" if chosen[key] == "the command line" else f", from {chosen[key]}"
            limit = " at most" if key == "block_size" else ""
            bad.append(f"--{key} {value}{source} (the base has{limit} {theirs})")
    if bad:
        one = len(bad) == 1
        raise UserError(f"--init_from {base.path} sets the model and tokenizer, and "
                        f"{', '.join(bad)} contradict{'s' if one else ''} it: drop "
                        f"{'it' if one else 'them'} (--block_size may be smaller, to crop)")
    if Path(config.out_dir).resolve() == base.path.resolve():
        raise UserError(f"--out_dir {config.out_dir} is the --init_from folder: training would "
                        "write over the base; choose another --out_dir")
    if "block_size" in chosen:
        fixed["block_size"] = config.block_size
    return replace(config, **fixed).validate()
