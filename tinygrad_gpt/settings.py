"""Training settings: one dataclass named with nanoGPT's config keys, presets, a TOML file
and the command line, merged in that order (command line wins).

    python -m tinygrad_gpt.train --preset baby-gpt --config my.toml --max_iters=500 --bias true

`--key=value` and `--key value` both work, with dashes or underscores; booleans accept
True/False/true/false/1/0 (a bare `--bias` means True). An unknown key is an error that
suggests the closest valid one.

A preset is a model shape from gpt/config.py's PRESETS plus the training settings below, and
the model's sizes are checked by GPTConfig's own rules (their messages name the flags here).
A fine-tuning preset (finetune-shakespeare) has training settings only: it needs --init_from,
whose folder gives the model's shape and tokenizer.
"""
import argparse
import difflib
import functools
import inspect
import math
import re
from dataclasses import dataclass, fields

from gpt.config import PRESETS as MODEL_PRESETS
from gpt.config import GPTConfig

from .cli import ArgumentParser, UserError, check_writable  # UserError: others import it here

try:
    import tomllib
except ModuleNotFoundError:          # Python 3.10
    import tomli as tomllib

# The settings that are the model's shape: GPTConfig's fields but vocab_size (the tokenizer's).
MODEL_FIELDS = [f.name for f in fields(GPTConfig) if f.name != "vocab_size"]


@dataclass
class TrainConfig:
    # I/O
    out_dir: str = "out"                # checkpoints, metrics.jsonl, loss.png
    data: str = ""                      # a UTF-8 text file or a folder of .txt ("" = Shakespeare)
    init_from: str = ""                 # a GPT-2 folder or a run to start from ("" = random init)
    tokenizer: str = "char"             # char | bpe
    vocab_size: int = 512               # BPE vocabulary size (ignored for char)
    eval_interval: int = 250            # evaluate (and checkpoint) every this many iterations
    log_interval: int = 10              # write a metrics line every this many iterations
    eval_iters: int = 20                # batches averaged per evaluation
    always_save_checkpoint: bool = True  # save at every evaluation, not only on a new best
    sample_tokens: int = 200            # tokens sampled at each evaluation (0 = none)
    # model (the defaults are gpt.config.PRESETS["shakespeare-char-cpu"]'s shape)
    model: str = "gpt"                  # gpt | bigram
    n_layer: int = 4                    # transformer blocks
    n_head: int = 4                     # attention heads per block
    n_embd: int = 128                   # width of the residual stream (divisible by n_head)
    block_size: int = 64                # context length
    dropout: float = 0.0                # dropout probability while training
    bias: bool = False                  # biases in Linear and LayerNorm layers
    # optimization (AdamW)
    batch_size: int = 12                # sequences per micro-batch
    gradient_accumulation_steps: int = 1  # micro-batches summed into one optimizer step
    learning_rate: float = 1e-3         # peak learning rate (after warmup)
    max_iters: int = 2000               # optimizer steps in total
    weight_decay: float = 0.1           # AdamW decay on 2-D weights (not biases/gains)
    beta1: float = 0.9                  # AdamW first-moment decay
    beta2: float = 0.99                 # AdamW second-moment decay
    grad_clip: float = 1.0              # clip the global gradient norm to this (0 = off)
    decay_lr: bool = True               # warmup + cosine decay (else constant learning_rate)
    warmup_iters: int = 100             # linear warmup steps
    lr_decay_iters: int = 2000          # ~ max_iters, per Chinchilla
    min_lr: float = 1e-4                # ~ learning_rate / 10
    # system
    device: str = "cpu"                 # cpu | cuda
    dtype: str = "float32"              # float32 | float64
    parallel: str = "auto"              # auto | on | off: each batch's halves on the 2 CPU cores
    seed: int = 1337                    # seeds init, batches, dropout and samples
    batch_stream: str = "sequential"    # sequential | per_step: batches by (seed, iter, j)
    zero: int = 0                       # 1: ZeRO-1, AdamW's moments sharded over the ranks
    bucket_mb: float = 25.0             # gradients travel between ranks in buckets this big
    overlap: bool = True                # N ranks: a bucket is sent once backward finishes it
    overfit_batch: bool = False         # train on one fixed batch (loss should reach ~0)
    # LoRA and export (fine-tuning)
    lora_rank: int = 0                  # > 0: train only LoRA adapters of this rank (nn/lora.py)
    lora_alpha: float = 16.0            # LoRA's B A is scaled by lora_alpha / lora_rank
    lora_targets: str = "attn,mlp"      # which Linear layers of each block get adapters
    export_hf: str = ""                 # at the end, write a merged Hugging Face GPT-2 folder here

    def model_config(self, vocab_size):
        """The GPTConfig of the model these settings train, for a vocab_size-token tokenizer
        (ValueError if the sizes break GPTConfig's rules)."""
        return GPTConfig(vocab_size=vocab_size, **{k: getattr(self, k) for k in MODEL_FIELDS})

    def validate(self):
        positive = ["batch_size", "max_iters", "gradient_accumulation_steps", "eval_interval",
                    "log_interval", "eval_iters", "vocab_size", "lr_decay_iters"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise UserError(f"--{name} must be a positive integer, got {getattr(self, name)}")
        for name in ("learning_rate", "min_lr", "weight_decay", "grad_clip", "warmup_iters",
                     "sample_tokens"):
            if getattr(self, name) < 0:
                raise UserError(f"--{name} must be >= 0, got {getattr(self, name)}")
        for name in ("learning_rate", "bucket_mb"):
            if not getattr(self, name) > 0:
                raise UserError(f"--{name} must be > 0, got {getattr(self, name)}")
        if self.seed < 0:
            raise UserError(f"--seed must be >= 0, got {self.seed}")
        if not self.out_dir.strip():
            raise UserError("--out_dir is empty: give the folder the run writes to")
        if self.export_hf:              # checked now, not after the whole run
            check_writable("--export_hf", self.export_hf)
        try:                    # the model's sizes, n_embd % n_head, dropout: GPTConfig's rules
            self.model_config(vocab_size=self.vocab_size)   # the tokenizer sets the real one
        except ValueError as e:
            raise UserError(as_flags(str(e))) from None
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError(f"--beta1 and --beta2 must be in [0, 1), got {self.beta1}, "
                            f"{self.beta2}")
        for name, allowed in (("tokenizer", ("char", "bpe")), ("model", ("gpt", "bigram")),
                              ("dtype", ("float32", "float64")), ("device", ("cpu", "cuda")),
                              ("parallel", ("auto", "on", "off")), ("zero", (0, 1)),
                              ("batch_stream", ("sequential", "per_step"))):
            if getattr(self, name) not in allowed:
                raise UserError(f"--{name} must be one of {', '.join(map(str, allowed))}, "
                                f"got {getattr(self, name)!r}")
        if self.lora_rank < 0 or not self.lora_alpha > 0:
            raise UserError(f"--lora_rank must be >= 0 (0 = no LoRA) and --lora_alpha > 0, got "
                            f"{self.lora_rank}, {self.lora_alpha}")
        if self.model == "bigram" and (self.lora_rank or self.export_hf):
            raise UserError("--lora_rank and --export_hf need --model gpt (a bigram has no "
                            "Linear layers and no GPT-2 layout)")
        if self.parallel == "on" and self.device == "cuda":
            raise UserError("--parallel on splits batches over CPU cores; on a GPU use "
                            "--parallel off (or auto)")
        return self


# A training preset: the model shape of the same name in gpt.config.PRESETS, then the settings
# in which the run differs from TrainConfig's defaults (as nanoGPT's configs override train.py).
TRAINING_PRESETS = {
    # nanoGPT's CPU Shakespeare run (its README's CPU command line); TrainConfig's defaults.
    "shakespeare-char-cpu": {},
    # nanoGPT's GPU "baby GPT" (config/train_shakespeare_char.py); its learning_rate, min_lr,
    # beta2, warmup_iters, eval_interval and log_interval are the defaults too.
    "baby-gpt": dict(batch_size=64, max_iters=5000, lr_decay_iters=5000, eval_iters=200,
                     always_save_checkpoint=False),
}
# Fine-tuning presets: training settings only, for --init_from (which gives shape, tokenizer).
FINETUNE_PRESETS = {
    # nanoGPT's config/finetune_shakespeare.py: a small constant learning rate, 20 steps of
    # 32 accumulated sequences, evaluation every 5, a checkpoint only on a new best; beta2 0.95
    # and log_interval 1 are its train.py's defaults, which that file keeps; dropout 0.1 (its
    # train.py: "for finetuning try 0.1+"). block_size stays the base model's.
    "finetune-shakespeare": dict(out_dir="out-finetune-shakespeare", eval_interval=5,
                                 eval_iters=40, log_interval=1, always_save_checkpoint=False,
                                 batch_size=1, gradient_accumulation_steps=32, max_iters=20,
                                 learning_rate=3e-5, decay_lr=False, beta2=0.95, dropout=0.1),
}
PRESETS = {**{name: {**{k: MODEL_PRESETS[name][k] for k in MODEL_FIELDS}, **training}
              for name, training in TRAINING_PRESETS.items()}, **FINETUNE_PRESETS}
COMMAND_LINE = "the command line"       # where a setting came from (parse_with_sources)
FIELDS = {f.name: f for f in fields(TrainConfig)}


def as_flags(message):
    """A GPTConfig message in the command line's words: its field names become flags.

    >>> as_flags("n_embd (130) must be divisible by n_head (4), e.g. n_embd=128")
    '--n_embd (130) must be divisible by --n_head (4), e.g. --n_embd=128'
    """
    return re.sub(rf"\b({'|'.join(MODEL_FIELDS)})\b", r"--\1", message)


def parse_bool(text):
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def convert(name, value, config_class=None):
    """A value from TOML or the command line, as the type of the field `name` of
    config_class (TrainConfig unless given): a clear error if it isn't one (NaN and
    infinities are not numbers a setting can take)."""
    kind = type(getattr(config_class or TrainConfig, name))
    try:
        if kind is bool:
            return value if isinstance(value, bool) else parse_bool(value)
        if isinstance(value, bool) or (kind is str and not isinstance(value, str)):
            raise TypeError             # TOML's true for a number, 5 for a path
        number = value
        if kind is int and isinstance(value, str):
            try:
                return int(value)
            except ValueError:          # "1e3", "2.0": integers written as floats
                number = float(value)
        if kind is int and isinstance(number, float) and not number.is_integer():
            raise ValueError
        if kind is float and not math.isfinite(float(number)):
            raise ValueError
        return kind(number)
    except (ValueError, TypeError, OverflowError, argparse.ArgumentTypeError):
        raise UserError(f"--{name} expects {kind.__name__}, got {value!r}") from None


def unknown_key(key, names=None):
    """The UserError for an unknown --key, suggesting the closest of `names` (TrainConfig's
    settings and the train command's own flags unless given)."""
    names = list(FIELDS) + ["preset", "config", "resume"] if names is None else names
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean --{close[0]}?" if close else "; see --help for the settings"
    return UserError(f"unknown setting --{key}{hint}")


def build_parser(description):
    parser = ArgumentParser(prog="python -m tinygrad_gpt.train", description=description,
                            allow_abbrev=False, argument_default=argparse.SUPPRESS)
    parser.add_argument("--preset", help=f"start from a preset: {', '.join(PRESETS)}")
    parser.add_argument("--config", metavar="FILE.toml", help="settings from a TOML file")
    parser.add_argument("--resume", nargs="?", const=True, type=parse_bool,
                        help="continue the run in --out_dir from its checkpoint")
    defaults = TrainConfig()
    for name in FIELDS:
        flags = [f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
        value = getattr(defaults, name)
        comment = _field_comments().get(name, "")
        if isinstance(value, bool):
            parser.add_argument(*flags, dest=name, nargs="?", const="true", metavar="BOOL",
                                help=f"{comment} (default {value})")
        else:
            parser.add_argument(*flags, dest=name, metavar=type(value).__name__.upper(),
                                help=f"{comment} (default {value!r})")
    return parser


def parse(argv, description="Train a GPT."):
    """argv -> (TrainConfig, resume flag, keys given on the command line); defaults <
    preset < TOML file < argv."""
    config, resume, sources = parse_with_sources(argv, description)
    return config, resume, sorted(k for k, where in sources.items() if where == COMMAND_LINE)


def parse_with_sources(argv, description="Train a GPT."):
    """argv -> (TrainConfig, resume flag, {key: where its value came from}) for every key
    not left at its default: "--preset NAME", "--config FILE" or COMMAND_LINE."""
    parser = build_parser(description)
    args, rest = parser.parse_known_args(argv)
    if rest:
        key = rest[0].lstrip("-").split("=")[0].replace("-", "_")
        raise unknown_key(key) if rest[0].startswith("-") else \
            UserError(f"unexpected argument {rest[0]!r}: settings look like --key=value")
    given = vars(args)
    values, sources = {}, {}
    if "preset" in given:
        if given["preset"] not in PRESETS:
            raise UserError(f"unknown --preset {given['preset']!r}: choose from "
                            f"{', '.join(PRESETS)}")
        values.update(PRESETS[given["preset"]])
        sources.update(dict.fromkeys(PRESETS[given["preset"]], f"--preset {given['preset']}"))
    if "config" in given:
        table = read_toml(given["config"])
        values.update(table)
        sources.update(dict.fromkeys(table, f"--config {given['config']}"))
    for name in FIELDS:
        if name in given:
            values[name] = convert(name, given[name])
            sources[name] = COMMAND_LINE
    config = TrainConfig(**{k: convert(k, v) for k, v in values.items()})
    resume = bool(given.get("resume", False))
    if given.get("preset") in FINETUNE_PRESETS and not config.init_from and not resume:
        raise UserError(f"--preset {given['preset']} fine-tunes a pretrained model: add "
                        "--init_from PATH (a Hugging Face GPT-2 folder or a training run)")
    return config.validate(), resume, sources


def read_toml(path):
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except FileNotFoundError:
        raise UserError(f"--config file {path} not found") from None
    except OSError as e:                 # a folder, no permission
        raise UserError(f"--config {path} cannot be read ({e.strerror}): give a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"--config file {path} is not valid TOML: {e}") from None
    for key in table:
        if key.replace("-", "_") not in FIELDS:
            raise unknown_key(key)
    return {k.replace("-", "_"): v for k, v in table.items()}


@functools.lru_cache(maxsize=1)
def _field_comments():
    """The comment beside each field of TrainConfig, used as its --help text."""
    comments = {}
    for line in inspect.getsource(TrainConfig).splitlines():
        name, _, comment = line.strip().partition("#")
        key = name.split(":")[0].strip()
        if key in FIELDS and comment:
            comments[key] = comment.strip()
    return comments

