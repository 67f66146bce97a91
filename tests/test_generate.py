"""Generation (gpt/generate.py and the KV cache in gpt/attention.py).

Cached generation equals the textbook uncached loop token for token (greedy and sampled,
including past block_size and with a prompt longer than block_size); temperature 0, top_k=1
and a tiny top_p are greedy; sample() never leaves the top k (or the nucleus) and follows
the softmax; bad arguments raise; the training mode is restored; a seed reproduces a run.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tensor
from gpt import GPT, GPTConfig
from gpt.generate import sample
from tensor import no_grad

V, BLOCK = 13, 8


@pytest.fixture(scope="module")
def model():
    tensor.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16))
    rng = np.random.default_rng(0)
    for p in m.parameters():                   # sharper distributions than GPT-2's init
        if p.ndim == 2:
            p.data[...] += rng.standard_normal(p.shape).astype(np.float32) * 0.3
    return m


def prompt(B, T, seed=0):
    return np.random.default_rng(seed).integers(0, V, size=(B, T))


def reference_greedy(model, idx, steps):
    """Argmax of the last position, re-running the (cropped) context every step."""
    idx = idx.copy()
    with no_grad():
        for _ in range(steps):
            logits = model(idx[:, -BLOCK:])[0].data[:, -1]
            idx = np.concatenate([idx, logits.argmax(-1)[:, None]], axis=1)
    return idx


# ----- the cache ---------------------------------------------------------------------------
def test_cached_forward_matches_the_full_forward_position_by_position(model):
    idx = prompt(2, BLOCK, seed=1)
    with no_grad():
        full = model(idx)[0].data
        caches = model.new_caches()
        parts = [model(idx[:, :3], caches=caches)[0].data]           # prefill 3 positions
        for t in range(3, BLOCK):
            parts.append(model(idx[:, t:t + 1], caches=caches)[0].data)
        assert [len(c) for c in caches] == [BLOCK, BLOCK]
        np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-4, atol=1e-5)
        with pytest.raises(ValueError, match="block_size"):
            model(idx[:, :1], caches=caches)                           # the cache is full


@pytest.mark.parametrize("T,new", [(3, 4), (3, 12), (BLOCK, 5), (BLOCK + 3, 6)],
                         ids=["within-block", "overflow", "full-prompt", "long-prompt"])
def test_cached_greedy_equals_uncached_token_for_token(model, T, new):
    idx = prompt(3, T, seed=T)
    cached = model.generate(idx, new, temperature=0)
    uncached = model.generate(idx, new, temperature=0, use_cache=False)
    np.testing.assert_array_equal(cached, uncached)
    np.testing.assert_array_equal(cached, reference_greedy(model, idx, new))
    assert cached.shape == (3, T + new)
    np.testing.assert_array_equal(cached[:, :T], idx)


@pytest.mark.parametrize("T,new", [(2, 5), (4, 14), (BLOCK + 2, 5)],
                         ids=["within-block", "overflow", "long-prompt"])
@pytest.mark.parametrize("kwargs", [dict(), dict(temperature=1.5, top_k=5),
                                    dict(temperature=0.8, top_p=0.9)],
                         ids=["plain", "top_k", "top_p"])
def test_cached_sampling_equals_uncached_with_the_same_seed(model, T, new, kwargs):
    idx = prompt(4, T, seed=T + 10)
    cached = model.generate(idx, new, rng=7, **kwargs)
    uncached = model.generate(idx, new, rng=7, use_cache=False, **kwargs)
    np.testing.assert_array_equal(cached, uncached)


def test_generation_depends_on_the_seed_and_is_reproducible(model):
    idx = prompt(4, 3)
    a = model.generate(idx, 10, rng=1)
    np.testing.assert_array_equal(a, model.generate(idx, 10, rng=1))
    np.testing.assert_array_equal(a, model.generate(idx, 10, rng=np.random.default_rng(1)))
    assert not np.array_equal(a, model.generate(idx, 10, rng=2))
    assert not np.array_equal(a, model.generate(idx, 10, temperature=0))


# ----- greedy equivalents ------------------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(temperature=0), dict(top_k=1),
                                    dict(top_k=1, temperature=5.0), dict(top_p=1e-9)],
                         ids=["t0", "top_k1", "top_k1-hot", "top_p-tiny"])
def test_greedy_equivalents(model, kwargs):
    idx = prompt(3, 4, seed=3)
    expected = reference_greedy(model, idx, 12)
    for seed in (0, 1):
        np.testing.assert_array_equal(model.generate(idx, 12, rng=seed, **kwargs), expected)


def test_sampling_is_not_greedy(model):
    """So the greedy tests above can fail: plain sampling picks other tokens."""
    idx = prompt(3, 4, seed=3)
    assert not np.array_equal(model.generate(idx, 12, rng=0, temperature=2.0),
                              reference_greedy(model, idx, 12))


# ----- sample() ----------------------------------------------------------------------------
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.floats(0.3, 3.0))
def test_sample_never_picks_outside_the_top_k(seed, k, temperature):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((64, 12)) * 3                    # distinct values per row
    picks = sample(logits, temperature=temperature, top_k=k, rng=rng)
    top = np.argsort(-logits, axis=-1)[:, :k]
    assert all(pick in row for pick, row in zip(picks, top))


@given(st.integers(0, 2**32 - 1), st.floats(0.05, 0.99))
def test_sample_never_picks_outside_the_nucleus(seed, top_p):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((64, 10)) * 2
    picks = sample(logits, top_p=top_p, rng=rng)
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    for row, pick in zip(probs, picks):
        # the nucleus: tokens whose probability mass ranked strictly above them is < top_p
        above = row[row > row[pick]].sum()
        assert above < top_p


def test_sample_frequencies_follow_the_tempered_softmax():
    logits = np.array([[2.0, 1.0, 0.0, -1.0]])
    n, temperature = 20000, 0.7
    rng = np.random.default_rng(0)
    picks = np.concatenate([sample(np.repeat(logits, 1000, 0), temperature, rng=rng)
                            for _ in range(n // 1000)])
    expected = np.exp(logits[0] / temperature)
    expected /= expected.sum()
    observed = np.bincount(picks, minlength=4) / n
    np.testing.assert_allclose(observed, expected, atol=0.01)    # sd <= 0.0035 per entry
    k2 = np.bincount(sample(np.repeat(logits, n, 0), 1.0, top_k=2, rng=rng), minlength=4) / n
    np.testing.assert_allclose(k2, [np.e / (np.e + 1), 1 / (np.e + 1), 0, 0], atol=0.01)


def test_sample_temperature_zero_is_argmax():
    logits = np.random.default_rng(0).standard_normal((50, 9))
    np.testing.assert_array_equal(sample(logits, temperature=0), logits.argmax(-1))


# ----- arguments and side effects ----------------------------------------------------------
@pytest.mark.parametrize("kwargs", [dict(temperature=-0.5), dict(top_k=0), dict(top_k=-3),
                                    dict(top_p=0), dict(top_p=1.5), dict(top_p=-0.1),
                                    dict(top_p=float("nan"))])
def test_invalid_sampling_arguments_raise(model, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        model.generate(prompt(1, 2), 3, **kwargs)


def test_nan_temperature_raises(model):
    with pytest.raises(ValueError, match="temperature"):
        model.generate(prompt(1, 2), 3, temperature=float("nan"))


def test_non_integer_top_k_raises_value_error(model):
    with pytest.raises(ValueError, match="top_k"):
        model.generate(prompt(1, 2), 3, top_k=2.5)


def test_sample_rejects_a_negative_temperature():
    with pytest.raises(ValueError, match="temperature"):
        sample(np.zeros((1, 4)), temperature=-1.0)


def test_bad_prompts_raise(model):
    for bad in (np.zeros(3, dtype=np.int64), np.zeros((1, 0), dtype=np.int64)):
        with pytest.raises(ValueError, match="shape"):
            model.generate(bad, 2)


@pytest.mark.parametrize("training", [True, False])
def test_generate_restores_the_training_mode(model, training):
    model.train(training)
    model.generate(prompt(1, 2), 3)
    assert all(m.training is training for m in model.modules())

    def fail(column):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        model.generate(prompt(1, 2), 3, on_token=fail)
    assert all(m.training is training for m in model.modules())
    model.eval()


def test_generate_runs_in_eval_mode_even_with_dropout():
    tensor.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=V, block_size=BLOCK, n_layer=1, n_head=2, n_embd=8,
                      dropout=0.5)).train()
    idx = prompt(2, 3)
    a = m.generate(idx, 6, temperature=0)
    np.testing.assert_array_equal(a, m.generate(idx, 6, temperature=0, use_cache=False))
    assert m.training


def test_on_token_streams_each_new_column(model):
    columns = []
    out = model.generate(prompt(2, 3), 5, rng=0, on_token=columns.append)
    assert len(columns) == 5
    np.testing.assert_array_equal(np.stack(columns, axis=1), out[:, 3:])

