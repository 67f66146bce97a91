"""nn.DataParallel and the pieces under it (threads.run_pair, backend.random_stream): the two
halves of a batch, run at once, give the whole batch's loss and gradients, repeat exactly,
follow the model's weights, and hand errors back."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import nn
import tensor
import tensor.fast
from gpt import GPT, GPTConfig
from tensor import backend
from tensor.fast import threads


@pytest.fixture(autouse=True)
def restore_threads():
    before = threads.THREADS
    yield
    threads.set_threads(before)


def loss_of(model, x, y):
    return model(x, y)[1]


def tiny_gpt(seed=0, dropout=0.0, bias=True, dtype=np.float64, vocab=11, block=8):
    tensor.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=2, n_head=2, n_embd=8,
                          dropout=dropout, bias=bias))
    for p in model.parameters():
        p.data = p.data.astype(dtype)
    return model


def batch(rows, T, vocab=11, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, vocab, (rows, T)), rng.integers(0, vocab, (rows, T))


def grads(model):
    return [p.grad.copy() for p in model.parameters()]


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 5), T=st.integers(1, 8), bias=st.booleans(),
       scale=st.sampled_from([1.0, 0.25]), count=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**16))
def test_halves_give_the_whole_batch_loss_and_gradients(rows, T, bias, scale, count, seed):
    """Odd and even batches, one row, both thread counts: loss and every gradient (the tied
    embedding included) equal a plain backward of scale * the whole batch's mean loss."""
    threads.set_threads(count)
    x, y = batch(rows, T, seed=seed)
    plain = tiny_gpt(seed, bias=bias)
    whole = loss_of(plain, x, y)
    (whole * scale).backward()
    model = tiny_gpt(seed, bias=bias)
    loss = nn.DataParallel(model, loss_of).forward_backward(x, y, scale=scale)
    assert loss == pytest.approx(float(whole.item()), rel=1e-12)
    for name, (g, p) in zip([n for n, _ in model.named_parameters()],
                            zip(grads(plain), model.parameters())):
        np.testing.assert_allclose(p.grad, g, rtol=1e-9, atol=1e-13, err_msg=name)


def test_gradients_add_up_across_calls_and_into_optimizer_buffers():
    """Two calls accumulate like two backward() calls (gradient accumulation), also when
    the optimizer hands out its flat gradient buffer; the optimizer steps then agree."""
    x, y = batch(6, 8, seed=3)
    plain, model = tiny_gpt(1), tiny_gpt(1)
    opt_plain = nn.AdamW(plain.parameters(), lr=1e-2)
    opt = nn.AdamW(model.parameters(), lr=1e-2)
    dp = nn.DataParallel(model, loss_of)
    for _ in range(3):
        opt_plain.zero_grad()
        opt.zero_grad()
        for lo, hi in ((0, 4), (4, 6)):
            (loss_of(plain, x[lo:hi], y[lo:hi]) * 0.5).backward()
            dp.forward_backward(x[lo:hi], y[lo:hi], scale=0.5)
        opt_plain.step()
        opt.step()
    for p, q in zip(plain.parameters(), model.parameters()):
        np.testing.assert_allclose(q.data, p.data, rtol=1e-9, atol=1e-12)


def test_twin_follows_the_models_arrays_and_mode():
    """Made before the optimizer (which moves every weight into its flat buffer) and before
    new weights are loaded: the twin still computes with the model's current weights."""
    x, y = batch(4, 8, seed=5)
    model, other = tiny_gpt(2), tiny_gpt(7)
    dp = nn.DataParallel(model, loss_of)
    nn.AdamW(model.parameters(), lr=1e-3)                    # re-points every p.data
    model.load_state_dict(other.state_dict())
    expected = float(loss_of(other, x, y).item())
    assert dp.forward_backward(x, y) == pytest.approx(expected, rel=1e-12)
    assert all(t.data is p.data for p, t in dp.pairs)
    model.eval()
    dp.forward_backward(x, y)
    assert not any(m.training for m in dp.twin.modules())


def test_dropout_repeats_and_does_not_depend_on_the_threads():
    """Each half draws from its own stream, so a seeded run is the same on one core or two."""
    x, y = batch(4, 8, seed=9)
    results = []
    for count in (2, 2, 1):
        threads.set_threads(count)
        model = tiny_gpt(4, dropout=0.5)
        loss = nn.DataParallel(model, loss_of).forward_backward(x, y)
        results.append((loss, grads(model)))
    no_dropout = nn.DataParallel(tiny_gpt(4), loss_of).forward_backward(x, y)
    assert results[0][0] != pytest.approx(no_dropout, rel=1e-6)    # dropout did something
    for loss, gs in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-12)
        for g, g0 in zip(gs, results[0][1]):
            np.testing.assert_allclose(g, g0, rtol=1e-9, atol=1e-13)


def test_an_error_in_either_half_is_raised_and_everything_recovers():
    switch = threads._blas_switch()
    blas_before = switch._get() if switch else None
    model = tiny_gpt(0)
    dp = nn.DataParallel(model, loss_of)
    x, y = batch(4, 8)
    for bad_row in (0, 3):                    # first half (this thread), second (the helper)
        bad = y.copy()
        bad[bad_row, 0] = 99
        with pytest.raises(IndexError, match="targets must be in"):
            dp.forward_backward(x, bad)
        if switch:
            assert switch._get() == blas_before
    model.zero_grad()
    assert dp.forward_backward(x, y) == pytest.approx(float(loss_of(tiny_gpt(0), x, y).item()))


def test_run_pair_runs_both_at_once_and_nested_calls_in_order():
    if not threads.can_run_pair():
        pytest.skip("needs two threads and NumPy's OpenBLAS")
    import threading
    names = []

    def who():
        names.append(threading.current_thread().name)
        return len(names)
    assert sorted(threads.run_pair(who, who)) == [1, 2]
    assert len(set(names)) == 2                             # two different threads
    names.clear()
    (first, second), third = threads.run_pair(lambda: threads.run_pair(who, who), who)
    assert sorted([first, second, third]) == [1, 2, 3] and first < second   # inner: in order
    assert len(set(names)) == 2


def test_random_streams_are_separate_seeded_and_restored():
    backend.manual_seed(5)
    a0 = backend.generator("cpu").random(4)
    with backend.random_stream(1):
        a1 = backend.generator("cpu").random(4)
    backend.manual_seed(5)
    with backend.random_stream(1):
        b1 = backend.generator("cpu").random(4)
    b0 = backend.generator("cpu").random(4)                 # back on stream 0
    np.testing.assert_array_equal(a0, b0)
    np.testing.assert_array_equal(a1, b1)
    assert not np.array_equal(a0, a1)


def test_auto_rule(monkeypatch):
    model = tiny_gpt(0, dtype=np.float32)
    threads.set_threads(2)
    assert not nn.parallel.worth_it(model)                  # tensor.fast off: reference only
    tensor.fast.enable(tune_malloc=False)                   # (conftest switches it off again)
    threads.set_threads(1)
    assert not nn.parallel.worth_it(model)                  # one thread: nothing to split
    threads.set_threads(2)
    assert nn.parallel.worth_it(model) == threads.can_run_pair()
    monkeypatch.setattr(nn.parallel, "AUTO_MAX_PARAMETERS", model.num_parameters() - 1)
    assert not nn.parallel.worth_it(model)                  # too big: the twin's memory
    with pytest.raises(TypeError, match="needs a Module"):
        nn.DataParallel(lambda x: x, loss_of)
