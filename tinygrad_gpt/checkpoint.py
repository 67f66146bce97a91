"""Checkpoints that survive a kill at any moment.

A checkpoint in out_dir is two files:
    ckpt-<iter>.safetensors   weights (model.*) and optimizer state (optim.*)
    ckpt.json                 which .safetensors file is current, its sha256, the model and
                              training settings, iteration, best val loss, RNG states
The weights go to a new file first (temp name, fsync, rename); then ckpt.json is replaced
the same way, and that rename is the moment the new checkpoint counts. A kill before it
leaves the previous ckpt.json pointing at the previous, complete weights. Older weight
files are deleted only after. The file ckpt.json names is never written over: a second save
of the same iteration goes to ckpt-<iter>-b.safetensors. A save that fails (a full disk:
OSError) removes what it wrote and leaves the previous checkpoint; temp files that a killed
save left behind are removed by the next save. A save needs room for two sets of weights.
The tokenizer lives in out_dir/tokenizer/, written once. Nothing is ever unpickled:
safetensors and JSON only. tests/test_faults.py kills a writer between every two steps.
"""
import contextlib
import json
import os
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from gpt.safetensors_file import read_header, save_file
from tensor import backend

from .corpus import sha256
from .settings import UserError

FORMAT = "tinygrad_gpt-checkpoint-1"


def _step(name):
    """Called between the steps of a save, with the step's name; does nothing. A test
    replaces it to stop the writer there (tests/test_faults.py)."""


def atomic_write_bytes(path, write):
    """Call write(temp_path), fsync the file, then rename it over path. On any failure the
    temp file is removed and the error raised; path is untouched."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        _step(f"{tmp.name} written")
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        _step(f"{tmp.name} synced")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise
    _step(f"{path.name} renamed")
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)          # make the rename itself durable
    finally:
        os.close(directory)
    _step(f"{path.name} rename synced")


def write_safetensors(tensors, path):
    """The arrays to a .safetensors file, each written from its own memory (no copy of the
    weights and moments on top of the run's: gpt/safetensors_file.py); a full disk is the
    OSError of the write that failed."""
    save_file(tensors, path, metadata={"format": "np"})


def current_weights(out_dir):
    """The weights file ckpt.json names, or None."""
    try:
        return json.loads((Path(out_dir) / "ckpt.json").read_text())["weights"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(out_dir, model, optimizer, info):
    """Write a checkpoint; info is a JSON-able dict (iter, settings, RNG states...). Raises
    OSError when a file cannot be written; the previous checkpoint is then still current."""
    out_dir = Path(out_dir)
    tensors = {f"model.{k}": backend.to_numpy(v) for k, v in model.state_dict().items()}
    tensors.update({f"optim.{k}": optimizer.state_parts(k) for k in optimizer.state_names})
    current = current_weights(out_dir)
    for left in [*out_dir.glob("ckpt-*.safetensors.tmp"), out_dir / "ckpt.json.tmp"]:
        left.unlink(missing_ok=True)          # a killed save's: room for this one
    _step("start")
    name = f"ckpt-{info['iter']}.safetensors"
    if name == current:                       # never write over the current checkpoint
        name = f"ckpt-{info['iter']}-b.safetensors"
    try:
        atomic_write_bytes(out_dir / name, lambda p: write_safetensors(tensors, p))
        record = {"format": FORMAT, "weights": name, "sha256": sha256(out_dir / name),
                  "optimizer_t": optimizer.t, **info}
        text = json.dumps(record, indent=2)
        atomic_write_bytes(out_dir / "ckpt.json", lambda p: Path(p).write_text(text))
    except BaseException:
        if current_weights(out_dir) != name:  # not a checkpoint without its ckpt.json
            with contextlib.suppress(OSError):
                (out_dir / name).unlink(missing_ok=True)
        raise
    for old in out_dir.glob("ckpt-*.safetensors"):
        if old.name != name:
            _step(f"deleting {old.name}")
            old.unlink(missing_ok=True)
    _step("done")


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
    try:
        read_header(weights)                   # its size claims checked before it is read
    except ValueError as e:
        raise UserError(f"{e} (the checkpoint is corrupt)") from None
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
