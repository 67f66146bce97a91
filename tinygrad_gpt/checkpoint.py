"""Checkpoints that survive a kill at any moment.

A checkpoint in out_dir is two files:
    ckpt-<iter>.safetensors   weights (model.*) and optimizer state (optim.*)
    ckpt.json                 which .safetensors file is current, its sha256, the model and
                              training settings, iteration, best val loss, RNG states
The weights go to a new file first (temp name, fsync, rename); then ckpt.json is replaced
the same way, and that rename is the moment the new checkpoint counts. A kill before it
leaves the previous ckpt.json pointing at the previous, complete weights. Older weight
files are deleted only after. The tokenizer lives in out_dir/tokenizer/, written once.
Nothing is ever unpickled: safetensors and JSON only.
"""
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from tensor import backend

from .corpus import sha256
from .settings import UserError

FORMAT = "tinygrad_gpt-checkpoint-1"


def atomic_write_bytes(path, write):
    """Call write(temp_path), fsync the file, then rename it over path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)          # make the rename itself durable
    finally:
        os.close(directory)


def save(out_dir, model, optimizer, info):
    """Write a checkpoint; info is a JSON-able dict (iter, settings, RNG states...)."""
    out_dir = Path(out_dir)
    tensors = {f"model.{k}": backend.to_numpy(v) for k, v in model.state_dict().items()}
    tensors.update({f"optim.{k}": backend.to_numpy(v) for k, v in
                    optimizer.state_dict().items() if k != "t"})
    name = f"ckpt-{info['iter']}.safetensors"
    atomic_write_bytes(out_dir / name, lambda p: save_file(tensors, str(p),
                                                           metadata={"format": "np"}))
    record = {"format": FORMAT, "weights": name, "sha256": sha256(out_dir / name),
              "optimizer_t": optimizer.state_dict()["t"], **info}
    text = json.dumps(record, indent=2)
    atomic_write_bytes(out_dir / "ckpt.json", lambda p: Path(p).write_text(text))
    for old in out_dir.glob("ckpt-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def read_info(out_dir):
    """ckpt.json of the checkpoint in out_dir (checked to be one of ours), without reading
    the weights: the settings, the model's config, the iteration..."""
    out_dir = Path(out_dir)
    meta_path = out_dir / "ckpt.json"
    if not meta_path.exists():
        raise UserError(f"no checkpoint in {out_dir} (ckpt.json missing): train first, or "
                        "point --out_dir at a training run")
    try:
        info = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{meta_path} is corrupt ({e}); restore it or start a new run") from None
    if info.get("format") != FORMAT:
        raise UserError(f"{meta_path} is not a tinygrad_gpt checkpoint "
                        f"(format {info.get('format')!r})")
    return info


def load(out_dir):
    """Read and verify a checkpoint -> (info dict, model arrays, optimizer arrays)."""
    out_dir = Path(out_dir)
    info = read_info(out_dir)
    weights = out_dir / info["weights"]
    if not weights.exists() or sha256(weights) != info["sha256"]:
        raise UserError(f"{weights} is missing or does not match ckpt.json's sha256: "
                        "the checkpoint is corrupt")
    arrays = load_file(str(weights))
    model = {k[len("model."):]: v for k, v in arrays.items() if k.startswith("model.")}
    optim = {k[len("optim."):]: v for k, v in arrays.items() if k.startswith("optim.")}
    optim["t"] = info["optimizer_t"]
    return info, model, optim


def last_iter(out_dir):
    """The iteration of the checkpoint in out_dir, or None when there is none."""
    try:
        return json.loads((Path(out_dir) / "ckpt.json").read_text())["iter"]
    except (OSError, ValueError, KeyError):
        return None


def random_state(batches, device):
    """Every random state a run draws from, as one JSON-able object: the batch generator
    (a numpy Generator) and the dropout generators of `device` (every stream of them)."""
    return {"batches": batches.bit_generator.state, "dropout": backend.random_state(device)}


def random_state_of(info):
    """The random_state saved in a checkpoint's info (older checkpoints kept it in pieces)."""
    if "random_state" in info:
        return info["random_state"]
    dropout = {"0": info["dropout_rng"]}
    if "dropout_rng_stream1" in info:
        dropout["1"] = info["dropout_rng_stream1"]
    return {"batches": info["rng"], "dropout": dropout}


def restore_random_state(state, config):
    """Put back what random_state saved; returns the batch generator."""
    batches = np.random.default_rng()
    batches.bit_generator.state = state["batches"]
    backend.manual_seed(config.seed)
    backend.set_random_state(config.device, state["dropout"])
    return batches
