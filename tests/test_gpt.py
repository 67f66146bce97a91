"""GPTConfig and GPT (gpt/config.py, gpt/attention.py, gpt/model.py) and the golden shape table.

Validation and presets; causality (the future cannot change the past, exactly); a float64
finite-difference check of EVERY parameter of a tiny model; the tied embedding / LM head
weight gets gradient from both uses; loss at init ~ ln V; a tiny model overfits one
batch; state_dict round trip; the closed-form parameter count; GPT-2 initialisation;
gpt.shapes against tests/golden/shapes.txt and docs/architecture.md.
"""
import math
from pathlib import Path

import numpy as np
import pytest

import tensor
import tensor.functional as F
from gpt import GPT, PRESETS, GPTConfig
from gpt import shapes
from gpt.shapes import format_table, shape_table
from nn import AdamW
from tensor import Tensor, no_grad

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden" / "shapes.txt"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

# The gradient-check model of the issue: 2 layers, 2 heads, 8 wide, block 6, vocab 11.
TINY = dict(vocab_size=11, block_size=6, n_layer=2, n_head=2, n_embd=8, dropout=0.0)


def tiny_model(seed=0, dtype=np.float32, **overrides):
    tensor.manual_seed(seed)
    return cast(GPT(GPTConfig(**{**TINY, **overrides})), dtype)


def cast(model, dtype):
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def randomize(model, seed=0, scale=0.3):
    """Parameters of order one (GPT-2's init makes attention nearly uniform and gradients
    tiny, which would hide mistakes): weights ~ N(0, scale), LayerNorm gains ~ 1 + noise."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        noise = rng.standard_normal(p.shape) * scale
        p.data[...] = noise + (1.0 if name.endswith(("ln_attn.weight", "ln_mlp.weight",
                                                        "ln_final.weight")) else 0.0)
    return model


def data(seed, B, T, V):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, size=(B, T)), rng.integers(0, V, size=(B, T))


def loss_of(model, idx, targets):
    with no_grad():
        return float(model(idx, targets)[1].item())


# ----- GPTConfig --------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,words", [
    (dict(n_embd=10, n_head=4), ["n_embd (10)", "divisible", "n_head (4)"]),
    (dict(vocab_size=0), ["vocab_size", "positive"]),
    (dict(block_size=-3), ["block_size", "positive"]),
    (dict(n_layer=0), ["n_layer", "positive"]),
    (dict(n_head=0), ["n_head", "positive"]),
    (dict(n_embd=-8), ["n_embd", "positive"]),
    (dict(n_embd=8.0), ["n_embd", "integer"]),
    (dict(n_layer=True), ["n_layer", "integer"]),
    (dict(dropout=1.0), ["dropout", "[0, 1)"]),
    (dict(dropout=-0.1), ["dropout", "[0, 1)"]),
])
def test_config_rejects_bad_sizes_with_a_clear_message(kwargs, words):
    with pytest.raises(ValueError) as info:
        GPTConfig(**{**TINY, **kwargs})
    for word in words:
        assert word in str(info.value), str(info.value)


def test_config_presets():
    cases = {"shakespeare-char-cpu": (4, 4, 128, 64, 65), "baby-gpt": (6, 6, 384, 256, 65),
             "gpt2": (12, 12, 768, 1024, 50257)}
    for name, (n_layer, n_head, n_embd, block_size, vocab_size) in cases.items():
        c = GPTConfig.preset(name)
        assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (
            n_layer, n_head, n_embd, block_size, vocab_size), name
        assert c.head_size == n_embd // n_head
    assert GPTConfig.preset("gpt2").bias is True
    assert GPTConfig.preset("baby-gpt", dropout=0.0).dropout == 0.0       # overrides
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.preset("gpt5")
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig.preset("gpt2", n_head=5)                               # still validated


def test_config_dict_round_trip_and_unknown_keys():
    c = GPTConfig(**TINY)
    assert GPTConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="n_embed"):
        GPTConfig.from_dict({**c.to_dict(), "n_embed": 8})


# ----- forward ----------------------------------------------------------------------------
def test_forward_shapes_loss_and_context_limit():
    model = tiny_model()
    idx, targets = data(0, 3, 6, 11)
    logits, loss = model(idx, targets)
    assert logits.shape == (3, 6, 11) and loss.shape == ()
    assert model(idx)[1] is None
    last, _ = model(Tensor(idx), last_only=True)                  # a Tensor of ids works too
    assert last.shape == (3, 1, 11)
    np.testing.assert_allclose(last.data[:, 0], logits.data[:, -1], rtol=1e-5, atol=1e-6)
    expected = -np.log(F.softmax(logits).data[np.arange(3)[:, None], np.arange(6), targets])
    assert loss.item() == pytest.approx(expected.mean(), rel=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        model(np.zeros((1, 7), dtype=np.int64))


def test_causality_future_tokens_leave_earlier_logits_exactly_unchanged():
    model = randomize(tiny_model(block_size=8))
    rng = np.random.default_rng(1)
    idx = rng.integers(0, 11, size=(2, 8))
    with no_grad():
        base = model(idx)[0].data
        for t in range(7):
            changed = idx.copy()
            changed[:, t + 1:] = (idx[:, t + 1:] + rng.integers(1, 11, (2, 7 - t))) % 11
            logits = model(changed)[0].data
            np.testing.assert_array_equal(logits[:, :t + 1], base[:, :t + 1],
                                          err_msg=f"position <= {t} saw the future")
            assert not np.allclose(logits[:, t + 1], base[:, t + 1])   # the present matters


def test_dropout_is_active_in_training_and_off_in_eval():
    model = tiny_model(dropout=0.5)
    twin = tiny_model(dropout=0.0)
    twin.load_state_dict(model.state_dict())
    idx, _ = data(0, 2, 6, 11)
    model.train()
    with no_grad():
        assert not np.array_equal(model(idx)[0].data, model(idx)[0].data)
        model.eval()
        np.testing.assert_array_equal(model(idx)[0].data, twin(idx)[0].data)


def set_fused(model, fused):
    for block in model.blocks:
        block.attn.fused = fused
    return model


def loss_and_grads(model, idx, targets):
    model.zero_grad()
    loss = model(idx, targets)[1]
    loss.backward()
    return loss.item(), {name: p.grad.copy() for name, p in model.named_parameters()}


def test_fused_and_composed_attention_agree_in_value_and_gradient():
    model = randomize(tiny_model(dtype=np.float64))
    idx, targets = data(8, 3, 6, 11)
    assert all(block.attn.fused for block in model.blocks)        # fused is the default
    loss_f, grads_f = loss_and_grads(set_fused(model, True), idx, targets)
    loss_c, grads_c = loss_and_grads(set_fused(model, False), idx, targets)
    assert loss_f == pytest.approx(loss_c, rel=1e-13)
    for name in grads_f:
        np.testing.assert_allclose(grads_f[name], grads_c[name], rtol=1e-9, atol=1e-13,
                                   err_msg=name)


def test_fused_and_composed_attention_agree_with_a_kv_cache():
    model = randomize(tiny_model(dtype=np.float64))
    idx, _ = data(9, 2, 6, 11)
    outs = []
    with no_grad():
        for fused in (True, False):
            set_fused(model, fused)
            caches = model.new_caches()
            steps = [model(idx[:, :2], caches=caches)[0].data]
            steps += [model(idx[:, t:t + 1], caches=caches)[0].data for t in range(2, 6)]
            outs.append(np.concatenate(steps, axis=1))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(outs[0], model(idx)[0].data, rtol=1e-5, atol=1e-6)


def test_kv_cache_keeps_float64():
    model = randomize(tiny_model(dtype=np.float64))
    idx, _ = data(9, 2, 6, 11)
    with no_grad():
        caches = model.new_caches()
        steps = [model(idx[:, :2], caches=caches)[0].data]
        steps += [model(idx[:, t:t + 1], caches=caches)[0].data for t in range(2, 6)]
        np.testing.assert_allclose(np.concatenate(steps, axis=1), model(idx)[0].data,
                                   rtol=1e-10, atol=1e-12)


def test_fused_attention_dropout_is_active_only_in_training():
    model = tiny_model(dropout=0.3)
    model.dropout.p = 0.0                                 # isolate the attention dropout
    for block in model.blocks:
        block.attn.resid_dropout.p = block.mlp.dropout.p = 0.0
    idx, _ = data(10, 2, 6, 11)
    with no_grad():
        model.train()
        assert not np.array_equal(model(idx)[0].data, model(idx)[0].data)
        model.eval()
        np.testing.assert_array_equal(model(idx)[0].data, model(idx)[0].data)


# ----- gradients --------------------------------------------------------------------------
def finite_differences(model, idx, targets, p, eps=1e-6):
    numeric = np.zeros(p.shape)
    for j in range(p.size):
        original = p.data.flat[j]
        p.data.flat[j] = original + eps
        plus = loss_of(model, idx, targets)
        p.data.flat[j] = original - eps
        minus = loss_of(model, idx, targets)
        p.data.flat[j] = original
        numeric.flat[j] = (plus - minus) / (2 * eps)
    return numeric


@pytest.mark.parametrize("bias", [True, False])
def test_every_parameter_gradient_matches_finite_differences_in_float64(bias):
    """All elements of all parameters (1896 with biases): about 2 s."""
    model = randomize(tiny_model(dtype=np.float64, bias=bias))
    idx, targets = data(3, 2, 6, 11)
    model.zero_grad()
    model(idx, targets)[1].backward()
    names = [name for name, _ in model.named_parameters()]
    assert len(names) == 2 + 2 * (16 if bias else 8) + (2 if bias else 1)  # every tensor
    for name, p in model.named_parameters():
        numeric = finite_differences(model, idx, targets, p)
        assert p.grad is not None and p.grad.dtype == np.float64, name
        err = np.abs(p.grad - numeric)
        assert np.all(err <= 1e-8 + 1e-6 * np.abs(numeric)), (
            f"{name}: max abs err {err.max():.3e} at {np.unravel_index(err.argmax(), p.shape)}")
        if name.endswith("attn.key.bias"):
            # softmax ignores a shift shared by all keys: q.(k + b) - q.(k' + b) = q.(k - k')
            assert np.abs(p.grad).max() < 1e-10, name
        else:
            assert np.abs(numeric).max() > 1e-4, f"{name}: gradient too small to test"


def untied_loss(model, w_embed, w_head, idx, targets):
    """The model's forward written out with separate tensors for the two uses of the tied
    weight (the token lookup and the LM head), so each contribution can be seen alone."""
    T = idx.shape[1]
    x = F.embedding(idx, w_embed) + model.position_embedding(np.arange(T))
    x = model.dropout(x)
    for block in model.blocks:
        x = block(x)
    logits = F.linear(model.ln_final(x), w_head)
    return F.cross_entropy(logits, targets)


def test_tied_embedding_gets_gradient_from_the_lookup_and_the_lm_head():
    model = randomize(tiny_model(dtype=np.float64))
    idx, targets = data(4, 2, 6, 11)
    tied = model.token_embedding.weight
    assert not any(p is not tied and p.shape == tied.shape for p in model.parameters())
    model.zero_grad()
    loss = model(idx, targets)[1]
    loss.backward()
    np.testing.assert_allclose(tied.grad, finite_differences(model, idx, targets, tied),
                               rtol=1e-6, atol=1e-8)

    w_embed = Tensor(tied.data.copy(), requires_grad=True, dtype=np.float64)
    w_head = Tensor(tied.data.copy(), requires_grad=True, dtype=np.float64)
    untied = untied_loss(model, w_embed, w_head, idx, targets)
    assert untied.item() == pytest.approx(loss.item(), rel=1e-12)   # the same function
    untied.backward()
    lookup, head = w_embed.grad, w_head.grad
    np.testing.assert_allclose(tied.grad, lookup + head, rtol=1e-10, atol=1e-12)
    # Neither use alone gives the tied gradient: both contribute substantially.
    for part, other in ((lookup, head), (head, lookup)):
        assert np.abs(tied.grad - part).max() > 0.1 * np.abs(tied.grad).max()
        np.testing.assert_allclose(tied.grad - part, other, rtol=1e-10, atol=1e-12)
    unused = np.setdiff1d(np.arange(11), idx)                  # ids never looked up
    assert unused.size and not lookup[unused].any() and head[unused].any()


# ----- training behaviour -----------------------------------------------------------------
def test_loss_at_init_is_close_to_log_vocab_size():
    tensor.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=32, n_layer=2, n_head=2, n_embd=32))
    idx, targets = data(5, 8, 32, 65)                        # random targets, not == inputs
    loss = loss_of(model, idx, targets)
    assert abs(loss - math.log(65)) < 0.05, loss


def test_a_tiny_model_overfits_one_batch():
    tensor.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=16, block_size=16, n_layer=2, n_head=2, n_embd=32))
    idx, targets = data(6, 2, 16, 16)
    opt = AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(200):
        opt.zero_grad()
        _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        first = loss.item() if first is None else first
    assert first > 2.0 and loss_of(model, idx, targets) < 0.02


def test_state_dict_round_trip_is_exact():
    a, b = tiny_model(seed=1), tiny_model(seed=2)
    idx, _ = data(7, 2, 6, 11)
    with no_grad():
        assert not np.array_equal(a(idx)[0].data, b(idx)[0].data)
        assert b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()}) == []
        np.testing.assert_array_equal(a(idx)[0].data, b(idx)[0].data)
    assert list(a.state_dict()) == list(b.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k], err_msg=k)


# ----- parameter count and initialisation -------------------------------------------------
def closed_form_count(c, non_embedding=False):
    """V C (tokens, also the LM head) + block C (positions) + L per-block + final LayerNorm.

    Per block, with biases: LayerNorms 2 x 2C; query/key/value 3 (C^2 + C); attn_out C^2 + C;
    mlp_in 4C^2 + 4C; mlp_out 4C^2 + C: 12 C^2 + 13 C. Without biases: 12 C^2 + 2 C.
    """
    V, P, L, C = c.vocab_size, c.block_size, c.n_layer, c.n_embd
    per_block = 12 * C * C + (13 * C if c.bias else 2 * C)
    total = V * C + P * C + L * per_block + (2 * C if c.bias else C)
    return total - P * C if non_embedding else total


@pytest.mark.parametrize("config", [
    GPTConfig(**TINY, bias=True), GPTConfig(**TINY, bias=False),
    GPTConfig(vocab_size=7, block_size=3, n_layer=3, n_head=5, n_embd=20, bias=False),
    GPTConfig.preset("shakespeare-char-cpu"), GPTConfig.preset("gpt-nano"),
    GPTConfig.preset("baby-gpt"),
], ids=lambda c: f"L{c.n_layer}-C{c.n_embd}-bias{c.bias}")
def test_num_parameters_matches_the_closed_form(config):
    model = GPT(config)
    assert model.num_parameters() == closed_form_count(config)
    assert model.num_parameters(non_embedding=True) == closed_form_count(config, True)


def test_architecture_doc_parameter_counts_match_the_formula():
    """The counts printed in docs/architecture.md (gpt2 is too big to build in a test, but
    the formula is checked against num_parameters() above for the other presets)."""
    rows = [line for line in ARCHITECTURE.read_text().splitlines() if line.startswith("| ")]
    for name in PRESETS:
        c = GPTConfig.preset(name)
        row = next((r for r in rows if r.startswith(f"| {name} |")), None)
        assert row is not None, f"preset {name} missing from the parameter table"
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[-2:] == [f"{closed_form_count(c):,}", f"{closed_form_count(c, True):,}"]
        assert cells[1:7] == [str(v) for v in (c.n_layer, c.n_head, c.n_embd, c.block_size,
                                               c.vocab_size, c.bias)]


def test_gpt2_init_stds():
    tensor.manual_seed(0)
    L = 4
    model = GPT(GPTConfig(vocab_size=300, block_size=64, n_layer=L, n_head=4, n_embd=64))
    for name, p in model.named_parameters():
        if name.endswith(("attn_out.weight", "mlp_out.weight")):
            assert p.data.std() == pytest.approx(0.02 / math.sqrt(2 * L), rel=0.08), name
        elif p.ndim == 2:
            assert p.data.std() == pytest.approx(0.02, rel=0.08), name
            assert abs(p.data.mean()) < 0.002, name
        elif name.endswith("bias"):
            assert not p.data.any(), name
        else:                                                 # LayerNorm gains
            np.testing.assert_array_equal(p.data, 1.0, err_msg=name)


def test_init_is_reproducible_after_manual_seed():
    a, b, c = tiny_model(seed=4), tiny_model(seed=4), tiny_model(seed=5)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        np.testing.assert_array_equal(pa.data, pb.data, err_msg=name)
    assert not np.array_equal(a.blocks[0].attn.query.weight.data,
                              c.blocks[0].attn.query.weight.data)


# ----- golden shape table -----------------------------------------------------------------
def test_shape_table_equals_the_golden_file():
    """Regenerate with: python -m gpt.shapes > tests/golden/shapes.txt (after reading it)."""
    assert format_table(shape_table()) == GOLDEN.read_text()


def test_architecture_doc_contains_the_shape_table_verbatim():
    assert GOLDEN.read_text() in ARCHITECTURE.read_text()


def test_shape_table_follows_the_dimensions():
    """Independent of the golden file: the rows carry B, T, C, nh, hs, V where expected."""
    rows = shape_table()
    cfg = shapes.TINY
    B, T, C, nh, hs, V = shapes.B, shapes.T, cfg.n_embd, cfg.n_head, cfg.head_size, cfg.vocab_size
    assert len({B, T, C, nh, hs, V}) == 6                        # every dimension distinct
    found = {(module, op): shape for module, op, shape in rows}
    assert found[("token_embedding", "embedding")] == (B, T, C)
    assert found[("blocks.0.attn", "attention")] == (B, nh, T, hs)
    assert found[("blocks.0.mlp.mlp_in", "linear")] == (B, T, 4 * C)
    assert (B, nh, T, hs) in [s for m, _, s in rows if m == "blocks.0.attn"]
    assert found[("GPT", "linear")] == (B, T, V) and rows[-1][1:] == ("cross_entropy", ())
    assert not any(m.startswith("blocks.1") for m, _, _ in rows)   # repeats are left out
    assert set(PRESETS) >= {"shakespeare-char-cpu", "baby-gpt", "gpt2"}
