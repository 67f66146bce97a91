"""Hugging Face GPT-2 interop (gpt/hf.py): the name mapping, safetensors files, and parity
with transformers' GPT2LMHeadModel when torch and transformers are importable.

A GPT-2 forward pass written here in NumPy, directly on Hugging Face's layout (Conv1D
weights (in, out), fused c_attn), is the independent reference for files built without
torch; transformers itself is the reference when it is installed.
"""
import json
import math

import numpy as np
import pytest
from safetensors.numpy import save_file

import tensor
from gpt import GPT, GPTConfig
from gpt.hf import (from_hf_state_dict, has_biases, load_pretrained, read_config,
                    to_hf_state_dict)
from tensor import no_grad

CFG = dict(vocab_size=11, block_size=8, n_layer=2, n_head=3, n_embd=12)


def hf_config(**overrides):
    c = {**CFG, **overrides}
    return {"model_type": "gpt2", "vocab_size": c["vocab_size"], "n_positions": c["block_size"],
            "n_embd": c["n_embd"], "n_layer": c["n_layer"], "n_head": c["n_head"],
            "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5}


def hf_names(n_layer):
    names = ["wte.weight", "wpe.weight", "ln_f.weight", "ln_f.bias"]
    for i in range(n_layer):
        names += [f"h.{i}.{m}.{w}" for m in ("ln_1", "attn.c_attn", "attn.c_proj", "ln_2",
                                             "mlp.c_fc", "mlp.c_proj") for w in ("weight", "bias")]
    return names


def random_hf_state(seed=0, prefix="transformer.", **overrides):
    """A GPT-2 state dict in Hugging Face's layout, NumPy only, weights of order one."""
    c = {**CFG, **overrides}
    V, P, C = c["vocab_size"], c["block_size"], c["n_embd"]
    rng = np.random.default_rng(seed)
    shapes = {"wte.weight": (V, C), "wpe.weight": (P, C), "c_attn.weight": (C, 3 * C),
              "c_attn.bias": (3 * C,), "attn.c_proj.weight": (C, C), "c_fc.weight": (C, 4 * C),
              "c_fc.bias": (4 * C,), "mlp.c_proj.weight": (4 * C, C)}
    state = {}
    for name in hf_names(c["n_layer"]):
        shape = next((s for k, s in shapes.items() if name.endswith(k)), (C,))
        value = rng.standard_normal(shape) * (0.5 if len(shape) == 2 else 0.2)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
            value += 1.0
        state[prefix + name] = value.astype(np.float32)
    return state


def numpy_gpt2(state, n_head, idx):
    """GPT-2's forward on Hugging Face names (no prefix), in float64: x @ W + b for Conv1D."""
    s = {k.removeprefix("transformer."): v.astype(np.float64) for k, v in state.items()}

    def ln(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-5) * s[name + ".weight"] + s[name + ".bias"]

    def conv1d(x, name):
        return x @ s[name + ".weight"] + s[name + ".bias"]

    B, T = idx.shape
    C = s["wte.weight"].shape[1]
    hs = C // n_head
    x = s["wte.weight"][idx] + s["wpe.weight"][:T]
    mask = np.triu(np.ones((T, T), bool), 1)
    i = 0
    while f"h.{i}.ln_1.weight" in s:
        h = f"h.{i}."
        q, k, v = np.split(conv1d(ln(x, h + "ln_1"), h + "attn.c_attn"), 3, axis=-1)
        q, k, v = (a.reshape(B, T, n_head, hs).transpose(0, 2, 1, 3) for a in (q, k, v))
        att = np.where(mask, -np.inf, q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs))
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + conv1d(y, h + "attn.c_proj")
        a = conv1d(ln(x, h + "ln_2"), h + "mlp.c_fc")
        a = 0.5 * a * (1 + np.tanh(math.sqrt(2 / math.pi) * (a + 0.044715 * a ** 3)))
        x = x + conv1d(a, h + "mlp.c_proj")
        i += 1
    return ln(x, "ln_f") @ s["wte.weight"].T


def write_dir(path, state, config):
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config))
    save_file(state, str(path / "model.safetensors"))
    return path


def logits_of(model, idx):
    with no_grad():
        return model(idx)[0].data


def tiny_model(seed=0, bias=True):
    tensor.manual_seed(seed)
    model = GPT(GPTConfig(**CFG, bias=bias))
    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.data[...] += (rng.standard_normal(p.shape) * 0.2).astype(np.float32)
    return model


IDS = np.random.default_rng(42).integers(0, 11, size=(2, 8))


# ----- the mapping -------------------------------------------------------------------------
def test_ours_to_hf_to_ours_is_the_identity():
    ours = tiny_model().state_dict()
    hf = to_hf_state_dict(ours, CFG["n_layer"])
    assert sorted(hf) == sorted("transformer." + n for n in hf_names(CFG["n_layer"]))
    assert hf["transformer.h.0.attn.c_attn.weight"].shape == (12, 36)       # (C, 3C)
    assert hf["transformer.h.1.mlp.c_fc.weight"].shape == (12, 48)          # (in, out)
    back = from_hf_state_dict(hf)
    assert sorted(back) == sorted(ours)
    for k in ours:
        np.testing.assert_array_equal(back[k], ours[k], err_msg=k)


def test_hf_to_ours_to_hf_is_the_identity():
    hf = random_hf_state()
    back = to_hf_state_dict(from_hf_state_dict(hf), CFG["n_layer"])
    assert sorted(back) == sorted(hf)
    for k in hf:
        np.testing.assert_array_equal(back[k], hf[k], err_msg=k)


def test_the_fused_qkv_is_split_in_query_key_value_order_and_transposed():
    model = tiny_model()
    hf = to_hf_state_dict(model.state_dict(), CFG["n_layer"])
    w = hf["transformer.h.1.attn.c_attn.weight"]
    attn = model.blocks[1].attn
    np.testing.assert_array_equal(w[:, :12], attn.query.weight.data.T)
    np.testing.assert_array_equal(w[:, 12:24], attn.key.weight.data.T)
    np.testing.assert_array_equal(w[:, 24:], attn.value.weight.data.T)
    np.testing.assert_array_equal(hf["transformer.h.1.attn.c_attn.bias"][12:24],
                                  attn.key.bias.data)


def test_a_bias_free_model_exports_zero_biases_and_the_same_function():
    model = tiny_model(bias=False)
    hf = to_hf_state_dict(model.state_dict(), CFG["n_layer"])
    assert sorted(hf) == sorted("transformer." + n for n in hf_names(CFG["n_layer"]))
    biases = [k for k in hf if k.endswith(".bias")]
    assert len(biases) == 1 + 6 * CFG["n_layer"]
    assert all(not hf[k].any() for k in biases)
    with_bias = GPT(GPTConfig(**CFG, bias=True))
    with_bias.load_state_dict(from_hf_state_dict(hf))
    np.testing.assert_allclose(logits_of(with_bias, IDS), logits_of(model, IDS),
                               rtol=1e-6, atol=1e-6)


def without_biases(state):
    """A GPT-2 state dict as nanoGPT saves a bias=False model: no *.bias keys at all."""
    return {k: v for k, v in state.items() if not k.endswith(".bias")}


@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_a_file_without_biases_loads_as_a_bias_free_model(tmp_path, prefix):
    model = tiny_model(bias=False)
    hf = to_hf_state_dict(model.state_dict(), CFG["n_layer"])
    state = {prefix + k.removeprefix("transformer."): v for k, v in without_biases(hf).items()}
    state[prefix + "h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))  # a buffer
    ours = from_hf_state_dict(state)
    assert sorted(ours) == sorted(model.state_dict())          # no bias names at all
    loaded = GPT.from_pretrained(write_dir(tmp_path, state, hf_config()))
    assert loaded.config == GPTConfig(**CFG, bias=False)
    assert read_config(tmp_path).bias is False
    np.testing.assert_array_equal(logits_of(loaded, IDS), logits_of(model, IDS))
    zeros = {**state, **{k: np.zeros_like(v) for k, v in hf.items() if k.endswith(".bias")}}
    np.testing.assert_allclose(numpy_gpt2(zeros, CFG["n_head"], IDS), logits_of(model, IDS),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dropped", ["transformer.ln_f.bias", "transformer.h.1.mlp.c_fc.bias",
                                     "transformer.h.0.attn.c_attn.bias"])
def test_a_file_with_some_biases_missing_names_one(tmp_path, dropped):
    state = random_hf_state()
    del state[dropped]
    key = dropped.removeprefix("transformer.")
    with pytest.raises(ValueError, match=f"biases but no '{key}'"):
        from_hf_state_dict(state)
    with pytest.raises(ValueError, match="all of GPT-2's biases, or none"):
        GPT.from_pretrained(write_dir(tmp_path, state, hf_config()))


def test_has_biases_ignores_the_causal_mask_buffers():
    assert not has_biases(["h.0.attn.bias", "transformer.h.1.attn.bias", "wte.weight"])
    assert has_biases(["h.0.attn.c_attn.bias"]) and has_biases(["transformer.ln_f.bias"])


def test_dropout_is_the_callers_and_a_bad_file_is_named(tmp_path):
    path = write_dir(tmp_path, random_hf_state(), hf_config())
    assert load_pretrained(GPT, path, dropout=0.25).config.dropout == 0.25
    (path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="model.safetensors: the header claims .* not "
                                         "safetensors"):
        read_config(path)


# ----- files built with NumPy only ---------------------------------------------------------
@pytest.mark.parametrize("prefix", ["transformer.", ""])
def test_a_numpy_built_file_loads_and_matches_a_numpy_gpt2(tmp_path, prefix):
    state = random_hf_state(prefix=prefix)
    model = GPT.from_pretrained(write_dir(tmp_path, state, hf_config()))
    assert model.config == GPTConfig(**CFG, dropout=0.0, bias=True)
    expected = numpy_gpt2(state, CFG["n_head"], IDS)
    np.testing.assert_allclose(logits_of(model, IDS), expected, rtol=1e-4, atol=1e-4)
    out = model.generate(IDS[:, :3], 4, temperature=0)
    assert out.shape == (2, 7) and out.max() < 11


def test_the_prefix_does_not_matter(tmp_path):
    with_prefix = GPT.from_pretrained(write_dir(tmp_path / "a", random_hf_state(), hf_config()))
    without = GPT.from_pretrained(
        write_dir(tmp_path / "b", random_hf_state(prefix=""), hf_config()))
    np.testing.assert_array_equal(logits_of(with_prefix, IDS), logits_of(without, IDS))


def test_gpt2_buffers_and_a_tied_lm_head_are_accepted(tmp_path):
    state = random_hf_state()
    state["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 8, 8), np.float32))
    state["transformer.h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    state["lm_head.weight"] = state["transformer.wte.weight"].copy()
    model = GPT.from_pretrained(write_dir(tmp_path, state, hf_config()))
    np.testing.assert_allclose(logits_of(model, IDS), numpy_gpt2(
        random_hf_state(), CFG["n_head"], IDS), rtol=1e-4, atol=1e-4)
    state["lm_head.weight"] = state["lm_head.weight"] + 1.0
    with pytest.raises(ValueError, match="lm_head"):
        GPT.from_pretrained(write_dir(tmp_path / "untied", state, hf_config()))


@pytest.mark.parametrize("missing", ["config.json", "model.safetensors"])
def test_a_missing_file_is_named(tmp_path, missing):
    write_dir(tmp_path, random_hf_state(), hf_config())
    (tmp_path / missing).unlink()
    with pytest.raises(FileNotFoundError, match=missing):
        GPT.from_pretrained(tmp_path)


def test_tensors_that_disagree_with_config_json_are_named(tmp_path):
    path = write_dir(tmp_path, random_hf_state(), hf_config(n_embd=24, n_head=4))
    with pytest.raises(ValueError, match="model.safetensors does not fit config.json: wrong "
                       r"shape: wte.weight \(11, 12\) where config.json needs \(11, 24\)"):
        GPT.from_pretrained(path)
    path = write_dir(tmp_path / "deeper", random_hf_state(), hf_config(n_layer=3))
    with pytest.raises(ValueError, match="does not fit config.json: missing h.2.ln_1.weight"):
        GPT.from_pretrained(path)


def test_an_unexpected_key_is_named(tmp_path):
    state = random_hf_state()
    state["transformer.h.0.mlp.c_gate.weight"] = np.zeros((12, 48), np.float32)
    with pytest.raises(ValueError, match="unexpected") as info:
        GPT.from_pretrained(write_dir(tmp_path, state, hf_config()))
    assert "h.0.mlp.c_gate.weight" in str(info.value)


@pytest.mark.parametrize("config,match", [
    ({"model_type": "llama"}, "model_type"),
    ({"activation_function": "relu"}, "activation_function"),
    ({"n_inner": 5}, "n_inner"),
    ({"n_layer": None}, "n_layer"),
])
def test_a_config_that_is_not_gpt2_is_rejected(tmp_path, config, match):
    cfg = {**hf_config(), **config}
    cfg = {k: v for k, v in cfg.items() if v is not None}
    with pytest.raises(ValueError, match=match):
        GPT.from_pretrained(write_dir(tmp_path, random_hf_state(), cfg))


# ----- save_pretrained ---------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
def test_save_then_load_gives_identical_logits(tmp_path, bias):
    model = tiny_model(bias=bias)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["model_type"], config["n_positions"], config["n_embd"]) == ("gpt2", 8, 12)
    loaded = GPT.from_pretrained(tmp_path)
    np.testing.assert_array_equal(logits_of(loaded, IDS), logits_of(model, IDS))
    np.testing.assert_array_equal(loaded.generate(IDS[:, :2], 5, temperature=0),
                                  model.generate(IDS[:, :2], 5, temperature=0))


# ----- transformers ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def transformers_gpt2():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=CFG["vocab_size"], n_positions=CFG["block_size"], n_embd=CFG["n_embd"],
        n_layer=CFG["n_layer"], n_head=CFG["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=0, eos_token_id=0, attn_implementation="eager")
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():                       # spread the logits so greedy has no near-ties
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return torch, transformers, model


def test_a_transformers_checkpoint_loads_with_the_same_logits_and_greedy_tokens(
        tmp_path, transformers_gpt2):
    torch, _, hf = transformers_gpt2
    hf.save_pretrained(tmp_path, safe_serialization=True)
    ours = GPT.from_pretrained(tmp_path)
    with torch.no_grad():
        expected = hf(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(logits_of(ours, IDS), expected, atol=1e-4, rtol=1e-4)
    prompt = IDS[:, :3]
    with torch.no_grad():
        theirs = hf.generate(torch.tensor(prompt), max_new_tokens=5, do_sample=False,
                             pad_token_id=0, eos_token_id=None,
                             attention_mask=torch.ones(prompt.shape, dtype=torch.long))
    np.testing.assert_array_equal(ours.generate(prompt, 5, temperature=0), theirs.numpy())


def test_our_checkpoint_loads_in_transformers_with_the_same_logits(tmp_path, transformers_gpt2):
    torch, transformers, _ = transformers_gpt2
    model = tiny_model(bias=True)
    model.save_pretrained(tmp_path)
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path, attn_implementation="eager")
    hf.eval()
    with torch.no_grad():
        theirs = hf(torch.tensor(IDS)).logits.numpy()
    np.testing.assert_allclose(theirs, logits_of(model, IDS), atol=1e-4, rtol=1e-4)
