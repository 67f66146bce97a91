"""What a training run tells the user: the memory estimate before it starts, metrics.jsonl
while it runs, loss.png and a summary at the end."""
import json
import os
from pathlib import Path

from .cli import UserError


def estimate_memory(n_params, config, vocab_size, bytes_per_float):
    """Bytes needed by a training step, by part (an estimate; the engine keeps roughly these).

    weights, gradients, AdamW's two moments: 4 arrays of n_params floats.
    activations kept for backward, per layer, for B*T positions of width C: about
    14 C (layernorms, q, k, v, attention output, projection, residuals), 3 x 4C for the
    MLP's hidden layer, GELU output and GELU's saved tanh, and 3 nh T for the attention
    scores, their masked copy and the softmax weights; then 3 V per position for the
    logits, the saved probabilities and their gradient.
    """
    B, T, C = config.batch_size, config.block_size, config.n_embd
    nh, L = config.n_head, config.n_layer
    per_layer = 14 * C + 3 * 4 * C + 3 * nh * T
    per_position = L * per_layer + 3 * vocab_size + 4 * C
    parts = {"weights": n_params, "gradients": n_params, "optimizer moments": 2 * n_params,
             "activations": B * T * per_position}
    return {k: v * bytes_per_float for k, v in parts.items()}


def available_memory(device):
    """Bytes free on the device: MemAvailable on Linux, cupy's free memory on a GPU."""
    if device == "cuda":
        import cupy
        free, _ = cupy.cuda.runtime.memGetInfo()
        return free
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_memory(parts, device):
    """Print the estimate; refuse to start when it cannot fit."""
    total = sum(parts.values())
    detail = ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in parts.items())
    print(f"memory estimate: {total / 2**20:.1f} MiB ({detail})")
    free = available_memory(device)
    if total > free:
        raise UserError(f"this run needs about {total / 2**30:.2f} GiB but only "
                        f"{free / 2**30:.2f} GiB is free on {device}: lower --batch_size, "
                        "--block_size or the model size")


class Metrics:
    """Appends one JSON object per line to out_dir/metrics.jsonl."""

    def __init__(self, out_dir, truncate_after=None):
        self.path = Path(out_dir) / "metrics.jsonl"
        if truncate_after is not None and self.path.exists():
            # On resume, drop lines from iterations the checkpoint did not reach (the
            # evaluation at the checkpoint's own iteration happened before it was saved).
            kept = [line for line in self.path.read_text().splitlines() if line and (
                json.loads(line)["iter"] < truncate_after
                or (json.loads(line)["iter"] == truncate_after and "val_loss" in line))]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif truncate_after is None:
            self.path.write_text("")
            (self.path.parent / "samples.txt").write_text("")

    def write(self, **record):
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read(self):
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save(plt, fig, path):
    """Write the figure as a PNG and free it; True (the plotters' "written")."""
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def plot_losses(metrics, path):
    """Train (per logged iteration) and eval curves to a PNG; skipped without matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    rows = metrics.read()
    steps = [r for r in rows if "loss" in r]
    evals = [r for r in rows if "val_loss" in r]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["iter"] for r in steps], [r["loss"] for r in steps], lw=0.8, alpha=0.6,
            label="train (batch)")
    ax.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "o-", label="train")
    ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", label="val")
    ax.set_xlabel("iteration")
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save(plt, fig, path)


def plot_scores(metrics, path):
    """Loss and accuracy per evaluation (train and val) side by side; False without
    matplotlib."""
    plt = pyplot()
    if plt is None:
        return False
    evals = [r for r in metrics.read() if "val_loss" in r]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, key, label in ((axes[0], "loss", "cross-entropy loss"), (axes[1], "acc",
                                                                      "accuracy")):
        for split in ("train", "val"):
            ax.plot([r["iter"] for r in evals], [r[f"{split}_{key}"] for r in evals], "o-",
                    label=split)
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    return save(plt, fig, path)
