"""python -m tinygrad_gpt.attention_maps: where each head looks, for one text.

    python -m tinygrad_gpt.attention_maps --out_dir out --text "ROMEO: "            # PNGs
    python -m tinygrad_gpt.attention_maps --out_dir out --text "ROMEO: " --layer 0 --head 1 \\
        --format text                                                         # terminal

Runs the trained model once on the text and keeps every head's attention weights
P = softmax(q k^T / sqrt(hs) + mask): row t is the query (the token that reads), column s
the key (the token read), and each row sums to 1 over s <= t. The causal mask shows as the
blank upper triangle (s > t: a token never sees the future).

PNGs: one file per (layer, head), RUN/attention/layer{L}_head{H}.png (or --save_dir),
tokens as tick labels. Text: one character per weight, " " for masked cells.
"""
import math
import re
import sys
from pathlib import Path

import numpy as np

from nn import module_scopes
from tensor import backend, no_grad, observe_ops

from . import tokenizer_io
from .cli import ArgumentParser, UserError, given, report_user_errors

LEVELS = ".:-=+*#%@"        # weight 0 -> '.', weight 1 -> '@' (9 equal steps); masked -> ' '
DPI = 100


def attention_weights(model, ids):
    """{layer: (nh, T, T) array} of attention weights for the token ids; masked cells NaN.

    The fused attention op keeps its weights inside its backward, so they are recomputed
    from its inputs q and k; the composed path (attn.fused = False) shows them as the
    output of its softmax op, which is taken as is.
    """
    weights, ids = {}, np.asarray([ids], dtype=np.int64)
    with no_grad(), module_scopes(model, root="") as scope:
        def record(out, parents):
            layer = re.fullmatch(r"blocks\.(\d+)\.attn", scope.current())
            if layer and out.op == "attention":
                weights[int(layer.group(1))] = causal_softmax(parents[0].data, parents[1].data)
            elif layer and out.op == "softmax":
                weights[int(layer.group(1))] = backend.to_numpy(out.data)[0]
        with observe_ops(record):
            model(ids)
    T = ids.shape[1]
    future = np.triu(np.ones((T, T), bool), k=1)
    return {layer: np.where(future, np.nan, w.astype(np.float64))
            for layer, w in sorted(weights.items())}


def causal_softmax(q, k):
    """softmax(q k^T / sqrt(hs) + causal mask) for the first sequence: (nh, T, T)."""
    q, k = backend.to_numpy(q)[0].astype(np.float64), backend.to_numpy(k)[0].astype(np.float64)
    T, L = q.shape[-2], k.shape[-2]
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(q.shape[-1])
    scores[:, np.triu(np.ones((T, L), bool), k=1 + L - T)] = -np.inf
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def token_labels(tok, ids, compact=False):
    """Each token as readable text: spaces and newlines made visible."""
    marks = {"\n": "↵", " ": "␣", "\t": "⇥"} if compact else \
        {"\n": "\\n", " ": "␣", "\t": "\\t"}
    return ["".join(marks.get(c, c) for c in tok.decode([i])) for i in ids]


def figure_inches(T):
    """The side of the square figure for T tokens (PNG side = inches * DPI pixels)."""
    return min(16.0, max(4.0, 2.5 + 0.3 * T))


def save_png(path, w, labels, title):
    """One head's (T, T) weights as a heatmap; NaN (masked) cells are left white."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    side = figure_inches(len(labels))
    fig, ax = plt.subplots(figsize=(side, side), dpi=DPI)
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")   # masked future: blank
    image = ax.imshow(np.ma.masked_invalid(w), cmap=cmap, vmin=0.0, vmax=1.0)
    ticks = range(len(labels))
    ax.set_xticks(ticks, labels, rotation=90 if max(map(len, labels)) > 2 else 0)
    ax.set_yticks(ticks, labels)
    ax.set_xlabel("key: the token being read")
    ax.set_ylabel("query: the token reading")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    fig.savefig(path, dpi=DPI)                         # no bbox trimming: a predictable size
    plt.close(fig)


def text_heatmap(w, labels, title):
    """One head's weights as characters, one column per key; masked cells blank."""
    width = max(len(label) for label in labels)
    lines = [title, f"{'':{width + 5}s}" + " ".join(label[0] for label in labels)]
    for t, label in enumerate(labels):
        cells = [" " if np.isnan(x) else LEVELS[min(len(LEVELS) - 1, int(x * len(LEVELS)))]
                 for x in w[t]]
        lines.append(f"{t:3d} {label:>{width}s} " + " ".join(cells).rstrip())
    return "\n".join(lines)


def parse_args(argv):
    p = ArgumentParser(prog="python -m tinygrad_gpt.attention_maps", allow_abbrev=False,
                       description="Heatmaps of every head's attention weights for a text, "
                                   "from a trained run.")
    p.add_argument("--out_dir", "--out-dir", default="out", help="the training run (default out)")
    p.add_argument("--text", required=True, help="the text to look at (at least one token)")
    p.add_argument("--layer", type=int, default=None, help="only this layer (from 0)")
    p.add_argument("--head", type=int, default=None, help="only this head (from 0)")
    p.add_argument("--format", choices=("png", "text", "both"), default="png",
                   help="png files (default), text for the terminal, or both")
    p.add_argument("--text_only", "--text-only", action="store_true",
                   help="the same as --format text")
    p.add_argument("--save_dir", "--save-dir", default=None,
                   help="where the PNGs go (default OUT_DIR/attention)")
    return p.parse_args(argv)


def pick(name, value, count):
    """[value] when it is in range, every index when it is None."""
    if value is None:
        return list(range(count))
    if not 0 <= value < count:
        raise UserError(f"--{name} {value} is out of range: this model has {count} "
                        f"{name}s, numbered 0 to {count - 1}")
    return [value]


def run(args):
    from .sample import load_run
    if not args.text:
        raise UserError("--text is empty: give at least one character")
    given("--out_dir", args.out_dir)
    given("--save_dir", args.save_dir)
    model, tok = load_run(args.out_dir, "cpu")
    if not hasattr(model, "blocks"):
        raise UserError(f"the model in {args.out_dir} has no attention layers (a bigram "
                        "model): train a GPT")
    ids = tokenizer_io.prompt_ids(tok, args.text)
    if len(ids) > model.config.block_size:
        raise UserError(f"--text is {len(ids)} tokens; this model reads at most "
                        f"{model.config.block_size}: shorten it")
    layers = pick("layer", args.layer, model.config.n_layer)
    heads = pick("head", args.head, model.config.n_head)
    fmt = "text" if args.text_only else args.format
    model.eval()
    weights = attention_weights(model, ids)
    if fmt in ("text", "both"):
        labels = token_labels(tok, ids, compact=True)
        print(f"weights: {' '.join(LEVELS)} for 0 ... 1 (each row sums to 1); blank = masked")
        for layer in layers:
            for head in heads:
                print("\n" + text_heatmap(weights[layer][head], labels,
                                          f"layer {layer} head {head}"))
    if fmt in ("png", "both"):
        folder = Path(args.save_dir) if args.save_dir else Path(args.out_dir) / "attention"
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UserError("PNGs need matplotlib (pip install matplotlib), or use "
                            "--format text") from None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            labels = token_labels(tok, ids)
            for layer in layers:
                for head in heads:
                    save_png(folder / f"layer{layer}_head{head}.png", weights[layer][head],
                             labels, f"layer {layer} head {head}: attention weights")
        except OSError as e:
            raise UserError(f"cannot write the PNGs to {folder}: {e.strerror}") from None
        print(f"wrote {len(layers) * len(heads)} PNG(s) to {folder}/ "
              f"(layer<L>_head<H>.png, {len(ids)} tokens)")
    return 0


def main(argv=None):
    return report_user_errors(lambda args: run(parse_args(args)),
                              sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    from .cli import run as run_cli
    run_cli(main)
