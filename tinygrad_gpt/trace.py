"""python -m tinygrad_gpt.trace: one forward and backward pass, printed as a teacher draws it.

    python -m tinygrad_gpt.trace                          # a tiny seeded GPT on "To be, or not"
    python -m tinygrad_gpt.trace --out_dir out --text "ROMEO:"       # a trained run
    python -m tinygrad_gpt.trace --op softmax --composed  # one op up close, with its formula
    python -m tinygrad_gpt.trace --dot graph.dot          # the graph for Graphviz

Three sections: the forward ops in order (index, module.op, output shape, where the inputs
came from), the backward in the order the engine runs it (each op's upstream gradient dy
and the gradients it sends to its inputs, with L2 norms), then each parameter's gradient.
The model predicts each next character of the text: inputs text[:-1], targets text[1:].
Dropout is off (eval mode) so the trace is deterministic.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import tensor
from gpt import GPT, GPTConfig
from nn import module_scopes
from tensor import observe_ops
from tensor.graph import topological_order
from tokenizer import CharTokenizer

from . import tokenizer_io
from .cli import ArgumentParser, given, report_user_errors
from .trace_views import norm, op_lines, to_dot
from .settings import UserError

DEFAULT_TEXT = "To be, or not"
MAX_TINY_TEXT = 1024        # characters the tiny GPT reads (its (T, T) attention grows as T^2)


@dataclass
class OpRecord:
    """One op of the forward pass, and (after backward) the gradients that passed through it."""
    index: int
    module: str                # dotted module path, or the model's class name at top level
    op: str
    out: object                # the output Tensor
    parents: tuple             # the input Tensors
    dy: object = None          # d loss / d out, an array (None if backward never reached it)
    grads: tuple = None        # the gradients this op sent to each input

    @property
    def label(self):
        return f"{self.module}.{self.op}"


@dataclass
class Trace:
    ops: list                  # OpRecords in forward order
    backward: list             # the same records, in the order backward visited them
    params: list               # (name, Parameter) pairs; .grad is filled in
    ids: np.ndarray            # (1, T + 1): inputs ids[:, :-1], targets ids[:, 1:]
    loss: float

    def __post_init__(self):
        self.names = {id(r.out): f"[{r.index}]" for r in self.ops}
        self.names.update((id(p), name) for name, p in self.params)

    def source(self, t, module=None):
        """Where a tensor came from: '[j]' for op j, a parameter's name, or 'const'. A
        parameter of `module` itself is named without the module's path ('weight')."""
        name = self.names.get(id(t), "const")
        return name[len(module) + 1:] if module and name.startswith(module + ".") else name


def build_tiny(text, seed=0):
    """A seeded 2-layer, 2-head, 16-wide GPT with a character vocabulary fitted on `text`."""
    tok = CharTokenizer.train(text)
    config = GPTConfig(vocab_size=tok.vocab_size, block_size=max(16, len(text)), n_layer=2,
                       n_head=2, n_embd=16, bias=True)
    tensor.manual_seed(seed)
    return GPT(config), tok


def trace(model, ids, composed=False):
    """Run model(ids[:-1], targets=ids[1:]) and backward, recording every op and gradient."""
    ids = np.asarray(ids, dtype=np.int64)[None, :]
    blocks = getattr(model, "blocks", [])
    fused = [block.attn.fused for block in blocks]
    records = []
    model.eval()
    model.zero_grad()
    try:
        for block in blocks:
            block.attn.fused = block.attn.fused and not composed
        with module_scopes(model, root="") as scope:
            def record(out, parents):
                module = scope.current() or type(model).__name__
                records.append(OpRecord(len(records), module, out.op, out, tuple(parents)))
            with observe_ops(record):
                _, loss = model(ids[:, :-1], targets=ids[:, 1:])
    finally:
        for block, was in zip(blocks, fused):
            block.attn.fused = was
    visited, by_id = [], {id(r.out): r for r in records}
    for node in topological_order(loss):
        if node._backward is not None and id(node) in by_id:
            node._backward = _watch(by_id[id(node)], node._backward, visited)
    loss.backward()
    return Trace(records, visited, model.named_parameters(), ids, loss.item())


def _watch(record, backward, visited):
    """Wrap an op's backward closure to keep the dy it gets and copies of the gradients it
    returns (a parameter's first gradient becomes its .grad and the next is added into it in
    place: the tied embedding's LM-head gradient would otherwise show the sum of both)."""
    def watched(dy):
        grads = backward(dy)
        record.dy = dy
        record.grads = tuple(None if g is None else g.copy() for g in grads)
        visited.append(record)
        return grads
    return watched


# ----- printing -----------------------------------------------------------------------------


def forward_lines(t):
    lines = [f"forward: {len(t.ops)} ops, module.op and output shape, <- where the inputs "
             "came from"]
    for r in t.ops:
        inputs = ", ".join(t.source(p, r.module) for p in r.parents)
        lines.append(f"  [{r.index:2d}] {r.label:34s} {str(tuple(r.out.shape)):15s} <- {inputs}")
    return lines


def backward_lines(t):
    lines = [f"backward: {len(t.backward)} ops in reverse topological order; dy = d loss / d "
             "output, then the gradient sent to each input, as L2 norms"]
    for r in t.backward:
        sent = ", ".join(f"{t.source(p, r.module)} {norm(g):.2e}"
                         for p, g in zip(r.parents, r.grads) if g is not None)
        lines.append(f"  [{r.index:2d}] {r.label:34s} dy {str(tuple(r.dy.shape)):15s} "
                     f"|dy| {norm(r.dy):.3e}  -> {sent}")
    return lines


def parameter_lines(t):
    lines = ["parameter gradients", f"  {'name':36s} {'shape':12s} {'|grad|':>10s} "
             f"{'|weight|':>10s} {'ratio':>9s}"]
    for name, p in t.params:
        g = 0.0 if p.grad is None else norm(p.grad)
        w = norm(p.data)
        ratio = f"{g / w:9.2e}" if w else f"{'-':>9s}"
        lines.append(f"  {name:36s} {str(tuple(p.shape)):12s} {g:10.3e} {w:10.3e} {ratio}")
    return lines


def parse_args(argv):
    p = ArgumentParser(prog="python -m tinygrad_gpt.trace", allow_abbrev=False,
                       description="Print one forward and backward pass of a GPT, op by op, "
                                   "with shapes, modules and gradients.")
    p.add_argument("--out_dir", "--out-dir", default=None,
                   help="a training run to load (default: a tiny seeded GPT fitted on --text)")
    p.add_argument("--text", default=DEFAULT_TEXT, help=f"the text (default {DEFAULT_TEXT!r})")
    p.add_argument("--seed", type=int, default=0, help="seed of the tiny GPT (default 0)")
    p.add_argument("--composed", action="store_true",
                   help="attention as five ops (matmul, mul, masked_fill, softmax, matmul)")
    p.add_argument("--op", metavar="NAME", help="show one op up close (e.g. softmax, gelu, "
                   "layer_norm, attention, or a full label like blocks.1.attn.attention)")
    p.add_argument("--index", type=int, default=0,
                   help="which occurrence of --op, from 0 (default 0)")
    p.add_argument("--dot", metavar="FILE", help="also write the graph in Graphviz DOT")
    return p.parse_args(argv)


def load_model(args):
    if not args.text:
        raise UserError("--text is empty: give at least two characters")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    given("--out_dir", args.out_dir)
    given("--dot", args.dot)
    if args.out_dir is None:
        if len(args.text) > MAX_TINY_TEXT:
            raise UserError(f"--text is {len(args.text)} characters; the tiny GPT reads at most "
                            f"{MAX_TINY_TEXT}: shorten it")
        model, tok = build_tiny(args.text, args.seed)
        ids = tok.encode(args.text)
    else:
        from .sample import load_run
        model, tok = load_run(args.out_dir, "cpu")
        ids = tokenizer_io.prompt_ids(tok, args.text)
    if len(ids) < 2:
        raise UserError(f"--text {args.text!r} is {len(ids)} token(s): the trace predicts "
                        "each next token, so it needs at least two")
    if len(ids) - 1 > model.config.block_size:
        raise UserError(f"--text is {len(ids)} tokens; this model reads at most "
                        f"{model.config.block_size} + 1: shorten it")
    return model, ids


def main(argv=None):
    return report_user_errors(run, sys.argv[1:] if argv is None else argv)


def run(argv):
    args = parse_args(argv)
    model, ids = load_model(args)
    t = trace(model, ids, composed=args.composed)
    header = [f"{type(model).__name__}: {len(ids) - 1} tokens in, loss {t.loss:.4f}"]
    if args.op:
        lines = header + op_lines(t, args.op, args.index)
    else:
        lines = header + [""] + forward_lines(t) + [""] + backward_lines(t) + [""] + \
            parameter_lines(t)
    if args.dot:
        dot = to_dot(t)
        try:
            Path(args.dot).write_text(dot, encoding="utf-8")
        except (OSError, ValueError) as e:          # ValueError: a NUL byte in the path
            raise UserError(f"--dot {args.dot}: cannot write it "
                            f"({getattr(e, 'strerror', None) or e})") from None
        lines.append(f"\nwrote {args.dot}: {len(t.ops)} op nodes (boxes), "
                     f"{dot.count('shape=ellipse')} leaf nodes (ellipses: parameters, "
                     f"constants); render with: dot -Tsvg {args.dot} > graph.svg")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    from .cli import run as run_cli
    run_cli(main)
