"""The one mapping between our parameter names and Hugging Face's GPT-2 names.

    ours                                  Hugging Face GPT2LMHeadModel           layout
    token_embedding.weight                transformer.wte.weight                 same (V, C)
    position_embedding.weight             transformer.wpe.weight                 same (block, C)
    blocks.{i}.ln_attn.{weight,bias}      transformer.h.{i}.ln_1.{weight,bias}   same
    blocks.{i}.attn.query.weight  (C, C)  \\
    blocks.{i}.attn.key.weight    (C, C)   > transformer.h.{i}.attn.c_attn.weight (C, 3C):
    blocks.{i}.attn.value.weight  (C, C)  /    [Wq^T | Wk^T | Wv^T], Conv1D's (in, out) layout
    blocks.{i}.attn.{query,key,value}.bias    transformer.h.{i}.attn.c_attn.bias (3C): [bq|bk|bv]
    blocks.{i}.attn.attn_out.weight       transformer.h.{i}.attn.c_proj.weight   transposed
    blocks.{i}.ln_mlp.{weight,bias}       transformer.h.{i}.ln_2.{weight,bias}   same
    blocks.{i}.mlp.mlp_in.weight          transformer.h.{i}.mlp.c_fc.weight      transposed
    blocks.{i}.mlp.mlp_out.weight         transformer.h.{i}.mlp.c_proj.weight    transposed
    (each Linear's bias)                  (the matching .bias)                   same
    ln_final.{weight,bias}                transformer.ln_f.{weight,bias}         same
    (tied to token_embedding.weight)      lm_head.weight                         same

Our Linear stores W as (out, in) like PyTorch's nn.Linear; GPT-2's Conv1D stores (in, out),
hence the transposes. GPT-2 always has biases: a bias=False model exports zero biases.
The importer also reads files with no biases at all (nanoGPT's bias=False models saved in
GPT-2's layout, ln_f.bias included): they load as a bias=False GPTConfig.
"""
import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file

from tensor import backend
from .config import GPTConfig
from .safetensors_file import read_header, save_file

LINEARS = [("attn.attn_out", "attn.c_proj"), ("mlp.mlp_in", "mlp.c_fc"),
           ("mlp.mlp_out", "mlp.c_proj")]
NORMS = [("ln_attn", "ln_1"), ("ln_mlp", "ln_2")]
BUFFERS = (".attn.bias", ".attn.masked_bias")      # GPT-2's causal-mask buffers: not weights


def to_hf_state_dict(ours, n_layer):
    """{our name: array} -> {Hugging Face GPT-2 name: array} (NumPy, float32 or as given)."""
    ours = {k: backend.to_numpy(v) for k, v in ours.items()}
    C = ours["token_embedding.weight"].shape[1]
    zeros = np.zeros(C, dtype=ours["token_embedding.weight"].dtype)
    hf = {"transformer.wte.weight": ours["token_embedding.weight"],
          "transformer.wpe.weight": ours["position_embedding.weight"],
          "transformer.ln_f.weight": ours["ln_final.weight"],
          "transformer.ln_f.bias": ours.get("ln_final.bias", zeros)}
    for i in range(n_layer):
        o, h = f"blocks.{i}.", f"transformer.h.{i}."
        qkv = [ours[f"{o}attn.{n}.weight"].T for n in ("query", "key", "value")]  # (C, C) each
        hf[h + "attn.c_attn.weight"] = np.concatenate(qkv, axis=1)                # (C, 3C)
        hf[h + "attn.c_attn.bias"] = np.concatenate(
            [ours.get(f"{o}attn.{n}.bias", zeros) for n in ("query", "key", "value")])
        for mine, theirs in LINEARS:
            weight = ours[f"{o}{mine}.weight"]
            hf[f"{h}{theirs}.weight"] = weight.T                               # (in, out)
            hf[f"{h}{theirs}.bias"] = ours.get(f"{o}{mine}.bias", np.zeros(weight.shape[0],
                                                                           weight.dtype))
        for mine, theirs in NORMS:
            hf[f"{h}{theirs}.weight"] = ours[f"{o}{mine}.weight"]
            hf[f"{h}{theirs}.bias"] = ours.get(f"{o}{mine}.bias", zeros)
    return {k: np.ascontiguousarray(v) for k, v in hf.items()}


def has_biases(names):
    """Whether GPT-2 tensor names include biases (True) or none at all (False: nanoGPT's
    bias=False models saved in GPT-2's layout). GPT-2's causal-mask buffers (attn.bias)
    are not biases."""
    return any(n.endswith(".bias") and not n.endswith(".attn.bias") for n in names)


def from_hf_state_dict(hf):
    """{Hugging Face GPT-2 name: array} -> {our name: array}, with biases when the file has
    them (all of GPT-2's) and without when it has none (a bias=False model).

    A missing key is a ValueError naming it; so is a file with some biases but not all.

    Accepts names with or without the "transformer." prefix (the hub's gpt2 file has none),
    ignores GPT-2's stored causal-mask buffers (attn.bias, attn.masked_bias), and checks
    that lm_head.weight, when present, is the tied token embedding.
    """
    hf = _KeyNaming({k.removeprefix("transformer."): v for k, v in hf.items()
                     if not k.endswith(BUFFERS)})
    hf.biases = has_biases(hf)
    head = hf.pop("lm_head.weight", None)
    if head is not None and not np.array_equal(head, hf.get("wte.weight")):
        raise ValueError("lm_head.weight differs from wte.weight: only GPT-2's tied LM head "
                         "is supported")
    n_layer = len({k.split(".")[1] for k in hf if k.startswith("h.")})
    ours = {"token_embedding.weight": hf.pop("wte.weight"),
            "position_embedding.weight": hf.pop("wpe.weight"),
            "ln_final.weight": hf.pop("ln_f.weight"), "ln_final.bias": hf.pop_bias("ln_f.bias")}
    for i in range(n_layer):
        o, h = f"blocks.{i}.", f"h.{i}."
        w, b = hf.pop(h + "attn.c_attn.weight"), hf.pop_bias(h + "attn.c_attn.bias")  # (C, 3C)
        for j, name in enumerate(("query", "key", "value")):
            C = w.shape[0]
            ours[f"{o}attn.{name}.weight"] = w[:, j * C:(j + 1) * C].T               # (C, C)
            ours[f"{o}attn.{name}.bias"] = None if b is None else b[j * C:(j + 1) * C]
        for mine, theirs in LINEARS:
            ours[f"{o}{mine}.weight"] = hf.pop(f"{h}{theirs}.weight").T              # (out, in)
            ours[f"{o}{mine}.bias"] = hf.pop_bias(f"{h}{theirs}.bias")
        for mine, theirs in NORMS:
            ours[f"{o}{mine}.weight"] = hf.pop(f"{h}{theirs}.weight")
            ours[f"{o}{mine}.bias"] = hf.pop_bias(f"{h}{theirs}.bias")
    if hf:
        raise ValueError(f"unexpected GPT-2 keys: {', '.join(sorted(hf))}")
    return {k: np.ascontiguousarray(v) for k, v in ours.items() if v is not None}


class _KeyNaming(dict):
    """A dict whose pop() of a missing key says which GPT-2 weight is missing; pop_bias()
    gives None in a file without biases (self.biases False)."""

    biases = True

    def pop(self, key, *default):
        if key not in self and not default:
            raise ValueError(f"the GPT-2 weights have no {key!r} (nor 'transformer.{key}')")
        return super().pop(key, *default)

    def pop_bias(self, key):
        if not self.biases:
            return None
        if key not in self:
            raise ValueError(f"the GPT-2 weights have biases but no {key!r} (nor "
                             f"'transformer.{key}'): a checkpoint has all of GPT-2's biases, "
                             "or none (a bias=False model)")
        return super().pop(key)


HF_SIZES = (("vocab_size", "vocab_size"), ("n_positions", "block_size"),
            ("n_layer", "n_layer"), ("n_head", "n_head"), ("n_embd", "n_embd"))  # (theirs, ours)


def config_from_hf(d, bias=True):
    """Our GPTConfig from a Hugging Face GPT-2 config.json dict; bias: whether the weights
    have biases (config.json does not say; see has_biases). ValueError naming the field for a
    config that is not GPT-2's (the caller names the file)."""
    if not isinstance(d, dict):
        raise ValueError(f"expected a JSON object, got a JSON {type(d).__name__}")
    if d.get("model_type", "gpt2") != "gpt2":
        raise ValueError(f"model_type is {d.get('model_type')!r}, expected 'gpt2'")
    act = d.get("activation_function", "gelu_new")
    if act not in ("gelu_new", "gelu_pytorch_tanh"):
        raise ValueError(f"activation_function {act!r} is not GPT-2's tanh GELU ('gelu_new')")
    sizes = {}
    for theirs, ours in HF_SIZES:
        if theirs == "n_positions" and theirs not in d and "n_ctx" in d:
            theirs = "n_ctx"                                   # older GPT-2 configs
        if theirs not in d:
            raise ValueError(f"{theirs} is missing (GPT-2's config.json gives "
                             f"{', '.join(k for k, _ in HF_SIZES)})")
        value = d[theirs]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{theirs} is {value!r}; it must be a positive integer")
        sizes[ours] = value
    if d.get("n_inner") not in (None, 4 * sizes["n_embd"]):
        raise ValueError(f"n_inner {d['n_inner']!r} is not 4 * n_embd = {4 * sizes['n_embd']}")
    if sizes["n_embd"] % sizes["n_head"]:
        raise ValueError(f"n_embd {sizes['n_embd']} is not divisible by n_head "
                         f"{sizes['n_head']}: the heads share the width equally")
    return GPTConfig(**sizes, dropout=0.0, bias=bias)


def expected_tensors(config):
    """{GPT-2 tensor name (no "transformer." prefix): shape} of a GPT-2 file of this config
    (without the optional lm_head.weight and causal-mask buffers)."""
    V, P, C = config.vocab_size, config.block_size, config.n_embd
    per_block = {"ln_1": (C,), "attn.c_attn": (C, 3 * C), "attn.c_proj": (C, C), "ln_2": (C,),
                 "mlp.c_fc": (C, 4 * C), "mlp.c_proj": (4 * C, C)}        # .weight shapes
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(config.n_layer):
        for name, shape in per_block.items():
            shapes[f"h.{i}.{name}.weight"] = shape
            shapes[f"h.{i}.{name}.bias"] = shape[-1:]                     # (out,)
    return shapes if config.bias else {k: s for k, s in shapes.items()
                                       if not k.endswith(".bias")}


def check_tensors(tensors, config, file):
    """ValueError, one line, unless the tensors ({name: TensorInfo} from read_header) are
    what a GPT-2 of this config holds: no name missing or unexpected, each shape config.json's,
    each weight a float."""
    found = {}                                                  # name without prefix -> info
    for name, info in tensors.items():
        short = name.removeprefix("transformer.")
        if short in found:
            raise ValueError(f"{file} has {short!r} both with and without the 'transformer.' "
                             "prefix: export the model again")
        found[short] = info
    expected = expected_tensors(config)
    if "lm_head.weight" in found:
        expected["lm_head.weight"] = (config.vocab_size, config.n_embd)
    buffers = {k for k in found if k.endswith(BUFFERS)}
    missing = [k for k in expected if k not in found]
    unexpected = [repr(k) for k in sorted(set(found) - set(expected) - buffers)]
    wrong = [f"{k} {found[k].shape} where config.json needs {s}" for k, s in expected.items()
             if k in found and found[k].shape != s]
    problems = [_listing(label, names) for label, names in (
        ("missing", missing), ("wrong shape:", wrong), ("unexpected", unexpected)) if names]
    if problems:
        fix = ("a GPT-2 file has all of GPT-2's biases, or none (a bias=False model)"
               if config.bias and missing and all(k.endswith(".bias") for k in missing) else
               "use the config.json that came with these weights, or export the model again")
        raise ValueError(f"{file} does not fit config.json: {'; '.join(problems)}: {fix}")
    for k in expected:
        if found[k].dtype not in ("F16", "F32", "F64"):
            raise ValueError(f"{file}: {k} is {found[k].dtype}; GPT-2's weights are read as "
                             "F16, F32 or F64: save the model in float32")


def _listing(label, names, most=3):
    more = f" (and {len(names) - most} more)" if len(names) > most else ""
    return f"{label} {', '.join(names[:most])}{more}"


def config_to_hf(config):
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
            "vocab_size": config.vocab_size, "n_positions": config.block_size,
            "n_ctx": config.block_size, "n_embd": config.n_embd, "n_layer": config.n_layer,
            "n_head": config.n_head, "n_inner": None, "activation_function": "gelu_new",
            "layer_norm_epsilon": 1e-5, "resid_pdrop": config.dropout,
            "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
            "initializer_range": 0.02, "tie_word_embeddings": True,
            "bos_token_id": config.vocab_size - 1, "eos_token_id": config.vocab_size - 1}


def read_config(path):
    """The GPTConfig of a Hugging Face GPT-2 directory, from config.json and model.safetensors'
    header (names, shapes, dtypes: checked to fit config.json), without reading the weights.

    FileNotFoundError for a missing file; ValueError, one line naming the file, for a file
    that is not GPT-2's or does not fit the other."""
    path = Path(path)
    for name in ("config.json", "model.safetensors"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found: a GPT-2 directory needs "
                                    "config.json and model.safetensors")
    tensors, _ = read_header(path / "model.safetensors")
    file = path / "config.json"
    try:
        d = json.loads(file.read_text(encoding="utf-8").removeprefix("\ufeff"))
        config = config_from_hf(d, has_biases(tensors))
    except UnicodeDecodeError as e:
        raise ValueError(f"{file} is not UTF-8 text (bad byte at offset {e.start}): "
                         "download or export it again") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not a GPT-2 config: line {e.lineno} column {e.colno} is "
                         f"not valid JSON ({e.msg}): download or export it again") from None
    except RecursionError:
        raise ValueError(f"{file} is not a GPT-2 config: JSON nested too deeply") from None
    except ValueError as e:
        raise ValueError(f"{file} is not a GPT-2 config: {e}") from None
    except OSError as e:
        raise ValueError(f"{file} cannot be read ({e.strerror or e})") from None
    check_tensors(tensors, config, path / "model.safetensors")
    return config


def read_weights(path):
    """{our name: array} from a GPT-2 directory's model.safetensors (ValueError if unreadable
    or not GPT-2's tensors; read_config checks them against config.json)."""
    file = Path(path) / "model.safetensors"
    read_header(file)                       # truncated or corrupt: one line, nothing read
    try:
        hf = load_file(str(file))
    except (SafetensorError, OSError, TypeError) as e:
        raise ValueError(f"{file} cannot be read ({e}): download or export it again") from None
    try:
        return from_hf_state_dict(hf)
    except ValueError as e:                   # e.g. an lm_head.weight that is not tied
        raise ValueError(f"{file}: {e}") from None


def load_pretrained(cls, path, device="cpu", dropout=0.0):
    """Build a GPT from a directory with config.json and model.safetensors (no network);
    dropout: the probability the model trains with (GPT-2's files do not fix it)."""
    config = replace(read_config(path), dropout=dropout)
    ours = read_weights(path)
    model = cls(config)
    model.load_state_dict(ours, strict=True)   # names every missing or wrongly-shaped key
    return model.to(device)


def save_pretrained(model, path):
    """Write config.json and model.safetensors (each via a temp file and an atomic rename)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    hf = to_hf_state_dict(model.state_dict(), model.config.n_layer)
    tmp = path / "model.safetensors.tmp"
    save_file(hf, tmp, metadata={"format": "pt"})     # streamed: no copy of the weights
    os.replace(tmp, path / "model.safetensors")
    tmp = path / "config.json.tmp"
    tmp.write_text(json.dumps(config_to_hf(model.config), indent=2) + "\n")
    os.replace(tmp, path / "config.json")
