"""The shape table: every op of one forward pass of a tiny GPT, with the module it ran in
and the shape it produced. docs/architecture.md shows it; tests compare it with
tests/golden/shapes.txt, so the documented shapes cannot drift from the code.
"""
import numpy as np

import tensor
from nn import module_scopes
from tensor import observe_ops

from .config import GPTConfig
from .model import GPT

# A config small enough to read, with every dimension distinct so shapes are unambiguous:
# B=2, T=5, C=12, nh=3, hs=4, V=11, 2 layers.
TINY = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=3, n_embd=12, bias=True)
B, T = 2, 5


def shape_table(config=TINY, batch=B, time=T, blocks_shown=1):
    """Rows of (module, op, output shape) for a forward pass with targets (so the loss too).

    Only the first `blocks_shown` blocks are listed: the others repeat them exactly.
    """
    tensor.manual_seed(0)
    model = GPT(config)
    idx = np.arange(batch * time).reshape(batch, time) % config.vocab_size
    rows = []
    with module_scopes(model, root="") as scope:
        def record(out, parents):
            rows.append((scope.current() or "GPT", out.op, tuple(out.shape)))
        with observe_ops(record):
            model(idx, targets=idx)
    hidden = tuple(f"blocks.{i}" for i in range(blocks_shown, config.n_layer))
    return [r for r in rows if not r[0].startswith(hidden)]


def format_table(rows):
    """The table as Markdown."""
    lines = ["| module | op | output shape |", "| --- | --- | --- |"]
    lines += [f"| {module} | {op} | {shape} |" for module, op, shape in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(format_table(shape_table()), end="")
