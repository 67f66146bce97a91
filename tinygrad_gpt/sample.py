"""python -m tinygrad_gpt.sample: generate text from a training run or a GPT-2 directory.

    python -m tinygrad_gpt.sample --out_dir out --start "ROMEO:" --num_samples 2
    python -m tinygrad_gpt.sample --init_from path/to/gpt2 --start FILE:prompt.txt --top_p 0.9
    python -m tinygrad_gpt.sample --out_dir out-instruct --instruction "Who speaks this line?" \
        --input "To be, or not to be: that is the question:"

With --instruction (and --input), the prompt is the Alpaca template that `finetune
instruct` trains on, and each sample stops at the end token (<|endoftext|>, or a newline for
a character-level model).

Tokens are streamed to the terminal as they are generated.
"""
if __name__ == "__main__":     # run as a program: OpenBLAS's idle threads sleep at once
    import os                  # (before NumPy loads it; see tensor/fast)
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import math
import sys
from pathlib import Path

import numpy as np

import nn
from gpt import GPT
from gpt.bigram import Bigram
from gpt.config import GPTConfig
import tensor.fast

from . import checkpoint, finetune_batches, finetune_data, pretrained, tokenizer_io
from .cli import ArgumentParser, check_device, given, report_user_errors
from .settings import UserError


def parse_args(argv):
    p = ArgumentParser(prog="python -m tinygrad_gpt.sample", allow_abbrev=False,
                       description="Sample text from a trained model.")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--out_dir", "--out-dir", default=None,
                        help="a training run's folder (default: out)")
    source.add_argument("--init_from", "--init-from", default=None, metavar="DIR",
                        help="a Hugging Face GPT-2 folder: config.json, model.safetensors, "
                             "vocab.json, merges.txt")
    p.add_argument("--start", default=None,
                   help="the prompt, or FILE:path to read it from a file (default: newline)")
    p.add_argument("--instruction", default=None,
                   help="an instruction, formatted as `finetune instruct` trains (Alpaca)")
    p.add_argument("--input", default="", help="the instruction's input (optional)")
    p.add_argument("--num_samples", "--num-samples", type=int, default=3)
    p.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    p.add_argument("--top_k", "--top-k", type=int, default=200)
    p.add_argument("--top_p", "--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p.parse_args(argv)


def load_run(out_dir, device):
    """Model and tokenizer from a training run's checkpoint."""
    info, weights, _ = checkpoint.load(out_dir)
    if info.get("mode") == "classify":
        raise UserError(f"{out_dir} holds a classifier: use python -m tinygrad_gpt.classify "
                        f"--out_dir {out_dir}")
    config = GPTConfig.from_dict(info["model_config"])
    model = Bigram(config) if info.get("model") == "bigram" else GPT(config)
    if info.get("lora"):                     # a `finetune instruct --trainable lora` run
        nn.apply_lora(model, **info["lora"])
    if weights and next(iter(weights.values())).dtype == np.float64:
        for p in model.parameters():
            p.data = p.data.astype(np.float64)
    try:
        model.load_state_dict(weights, strict=True)
    except ValueError as e:
        raise UserError(f"checkpoint in {out_dir} does not match its config: {e}") from None
    if info.get("lora"):
        nn.merge_lora(model)                 # the adapters folded into their weights
    return model.to(device), tokenizer_io.load(Path(out_dir) / "tokenizer")


def load_pretrained(folder, device):
    """Model and tokenizer from a Hugging Face GPT-2 folder, every file checked first
    (tinygrad_gpt.pretrained: one line naming the first problem)."""
    base = pretrained.read_base(folder)
    if base.kind != "hf":
        raise UserError(f"--init_from {folder} is a training run: sample it with --out_dir")
    return base.load(device), base.tokenizer


class Stopping:
    """Streams tokens until the stop token (which is not printed), then nothing more."""

    def __init__(self, streamer, stop):
        self.streamer, self.stop, self.done = streamer, stop, False

    def push(self, token_id):
        self.done = self.done or token_id == self.stop
        if not self.done:
            self.streamer.push(token_id)

    def flush(self):
        return self.streamer.flush()


def read_prompt(start):
    if start.startswith("FILE:"):
        path = Path(start[len("FILE:"):])
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError, ValueError) as e:     # ValueError: a NUL byte
            raise UserError(f"--start FILE:{path}: cannot read it as UTF-8 text ({e})") from None
    return start


def main(argv=None):
    with tensor.fast.on():              # the CPU speed machinery, for this command only
        return report_user_errors(lambda args: run(parse_args(args)),
                                  sys.argv[1:] if argv is None else argv)


def run(args):
    for name in ("num_samples", "max_new_tokens"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be a positive integer, got {getattr(args, name)}")
    if not (math.isfinite(args.temperature) and args.temperature >= 0) or \
            (args.top_k is not None and args.top_k < 1) or \
            (args.top_p is not None and not 0 < args.top_p <= 1):
        raise UserError("--temperature must be a finite number >= 0, --top_k >= 1 and --top_p "
                        f"in (0, 1]; got {args.temperature}, {args.top_k}, {args.top_p}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    given("--out_dir", args.out_dir)
    given("--init_from", args.init_from)
    device = check_device(args.device)
    if args.init_from:
        model, tok = load_pretrained(args.init_from, device)
    else:
        model, tok = load_run(args.out_dir or "out", device)
    stop = None
    if args.instruction is not None:
        if args.start is not None:
            raise UserError("--start and --instruction are two prompts: give one")
        if not args.instruction.strip():
            raise UserError("--instruction is empty: give the instruction")
        from .finetune_task import end_id
        prompt, stop = finetune_data.format_prompt(args.instruction, args.input), end_id(tok)
        try:
            ids = finetune_batches.text_encoder(tok)(prompt)
        except (ValueError, KeyError) as e:      # a character-level model's missing characters
            raise UserError(f"the model's tokenizer cannot encode the instruction prompt: "
                            f"{e}") from None
    else:
        if args.input:
            raise UserError("--input goes with --instruction")
        prompt = read_prompt("\n" if args.start is None else args.start)
        ids = tokenizer_io.prompt_ids(tok, prompt)      # clear error on unknown characters
    if not ids:
        raise UserError("--start is empty after tokenization: give at least one character")
    rng = np.random.default_rng(args.seed)
    for n in range(args.num_samples):
        stream = Stopping(tokenizer_io.Streamer(tok), stop)
        sys.stdout.write(prompt)
        model.generate(np.asarray([ids]), args.max_new_tokens, temperature=args.temperature,
                       top_k=args.top_k, top_p=args.top_p, rng=rng, stop_token=stop,
                       on_token=lambda column: stream.push(int(column[0])))
        sys.stdout.write(stream.flush() + "\n" + ("---------------\n" if n + 1 < args.num_samples
                                                  else ""))
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from .cli import run as run_cli
    run_cli(main)
