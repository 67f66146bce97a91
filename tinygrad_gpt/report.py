"""What a training run tells the user: the memory estimate before it starts, metrics.jsonl
while it runs, loss.png and a summary at the end."""
import json
from pathlib import Path

import nn

from . import memory


def check_memory(config, model_config, quiet=True, world=None):
    """Refuse (UserError) a training run whose memory estimate (memory.py), made from its
    settings (a TrainConfig) and the model's shape (a GPTConfig), does not fit; print the
    estimate unless quiet. world: the ranks (nn.distributed; None: one process); the
    estimate is per rank, which holds the ranks of its machine only once each."""
    n_ranks, local = (1, 1) if world is None else (world.size, world.local_size)
    parallel = config.parallel == "on" or (config.parallel == "auto" and config.device == "cpu"
                                           and local == 1 and model_config.num_parameters()
                                           <= nn.parallel.AUTO_MAX_PARAMETERS)
    targets = [t.strip() for t in config.lora_targets.split(",") if t.strip()]
    parts = memory.estimate(model_config, config.batch_size,
                            8 if config.dtype == "float64" else 4,
                            "lora" if config.lora_rank else "all", config.lora_rank, targets,
                            parallel=parallel, n_ranks=n_ranks, zero=config.zero,
                            bucket_mb=config.bucket_mb, model=config.model,
                            device=config.device, accumulation=config.gradient_accumulation_steps)
    free = memory.available(config.device) // local if local > 1 else None   # shared by ranks
    memory.check(parts, config.device, free=free, lower={
        "activations": f"--batch_size ({config.batch_size}) or --block_size "
                       f"({config.block_size})",
        "batch": f"--gradient_accumulation_steps ({config.gradient_accumulation_steps}) or "
                 f"--batch_size ({config.batch_size})",
        "model": "the model size (--n_layer, --n_embd), or train LoRA adapters only "
                 "(--lora_rank 8)"})
    if not quiet:
        print(f"memory estimate: {memory.describe(parts)}")


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
