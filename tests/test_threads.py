"""tensor/fast/threads.py: blocks cover the range once, errors come back, and no result
depends on whether the blocks ran on one core or two (bitwise, for every fast kernel that
uses them: tensor/fast/)."""
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tensor import Tensor
from tensor.fast import attention, cross_entropy, gelu, layernorm, threads


@pytest.fixture
def restore_threads():
    before = threads.THREADS
    yield
    threads.set_threads(before)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(0, 5000), block=st.integers(1, 700), count=st.sampled_from([1, 2]))
def test_blocks_cover_range_exactly_once(n, block, count):
    threads.set_threads(count)
    try:
        hits = np.zeros(n, dtype=np.int64)
        seen = []

        def body(lo, hi):
            assert 0 <= lo < hi <= n and hi - lo <= block
            hits[lo:hi] += 1
            seen.append((lo, hi))
        threads.for_blocks(np, n, body, block)
        assert (hits == 1).all()
        sizes = [hi - lo for lo, hi in seen]
        assert len(seen) in (0, 1, n) or len(seen) % 2 == 0   # equal shares for two threads
        assert not sizes or max(sizes) - min(sizes) <= 1
    finally:
        threads.set_threads(2)


def test_second_half_runs_on_the_helper(restore_threads):
    threads.set_threads(2)
    names = {}
    threads.for_blocks(np, 4, lambda lo, hi: names.setdefault(lo, threading.current_thread()), 1)
    assert names[0] is threading.current_thread() and names[1] is threading.current_thread()
    assert names[2] is names[3] and names[2] is not threading.current_thread()


def test_helper_error_is_raised_in_the_caller_and_the_pool_still_works(restore_threads):
    threads.set_threads(2)

    def body(lo, hi):
        if lo == 3:
            raise ZeroDivisionError("block 3")
    with pytest.raises(ZeroDivisionError, match="block 3"):
        threads.for_blocks(np, 4, body, 1)
    out = np.zeros(4)
    threads.for_blocks(np, 4, lambda lo, hi: out.__setitem__(slice(lo, hi), lo + 1), 1)
    assert out.tolist() == [1, 2, 3, 4]


def test_nested_calls_run_serially_instead_of_deadlocking(restore_threads):
    threads.set_threads(2)
    sums = np.zeros(4, dtype=np.int64)

    def outer(lo, hi):
        def inner(a, b):
            sums[lo] += b - a                 # each outer block owns its own slot
        threads.for_blocks(np, 10, inner, 3)
    threads.for_blocks(np, 4, outer, 1)
    assert sums.tolist() == [10, 10, 10, 10]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_gets_its_own_helper(restore_threads):
    threads.set_threads(2)
    threads.for_blocks(np, 4, lambda lo, hi: None, 1)          # the parent's helper exists
    out = np.zeros(4)
    pid = os.fork()
    if pid == 0:                                               # child: would hang on the
        try:                                                   # parent's (absent) thread
            threads.for_blocks(np, 4, lambda lo, hi: out.__setitem__(slice(lo, hi), 1), 1)
            os._exit(0 if out.sum() == 4 else 1)
        except BaseException:
            os._exit(2)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.waitstatus_to_exitcode(status) == 0
            return
        time.sleep(0.05)
    os.kill(pid, 9)
    pytest.fail("the forked child hung in for_blocks")


def test_set_threads_checks_its_argument(restore_threads):
    with pytest.raises(ValueError, match="use 1 or 2"):
        threads.set_threads(3)


def _run_both(fn):
    """fn() once with every block on this thread and once split over two; both results."""
    out = []
    for count in (1, 2):
        threads.set_threads(count)
        out.append(fn())
    threads.set_threads(2)
    return out


def _forward_backward(op, *shapes, seed=0):
    def run():
        rng = np.random.default_rng(seed)
        xs = [Tensor(rng.standard_normal(s).astype(np.float32), requires_grad=True)
              for s in shapes]
        y = op(*xs)
        y.backward(np.random.default_rng(seed + 1).standard_normal(y.shape).astype(np.float32))
        return [y.data] + [x.grad for x in xs]
    return run


@pytest.mark.parametrize("name, run", [
    ("gelu", _forward_backward(gelu.gelu, (3, 70001))),
    ("layer_norm", _forward_backward(layernorm.layer_norm, (4, 300, 384), (384,), (384,))),
    ("attention", _forward_backward(
        lambda q, k, v: attention.scaled_dot_product_attention(q, k, v, is_causal=True),
        (2, 3, 160, 16), (2, 3, 160, 16), (2, 3, 160, 16))),
])
def test_ops_are_bitwise_identical_on_one_or_two_threads(name, run, restore_threads):
    one, two = _run_both(run)
    for a, b in zip(one, two):
        assert np.array_equal(a, b), name


def test_cross_entropy_is_bitwise_identical_on_one_or_two_threads(restore_threads):
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((6, 5, 9000)).astype(np.float32)
    targets = rng.integers(0, 9000, (6, 5))
    targets[0, 0] = -100                                      # one ignored position

    def run():
        x = Tensor(logits.copy(), requires_grad=True)
        loss = cross_entropy.cross_entropy(x, targets)
        loss.backward()
        return [loss.data, x.grad]
    one, two = _run_both(run)
    for a, b in zip(one, two):
        assert np.array_equal(a, b)


def test_environment_variable_sets_the_default():
    code = "from tensor.fast import threads; print(threads.THREADS)"
    env = dict(os.environ, TINYGRAD_GPT_THREADS="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1", out.stderr



def test_importing_the_fast_layer_starts_no_thread_until_two_cores_are_asked_for():
    """threads.py only reads TINYGRAD_GPT_THREADS on import: no helper thread, no fork hook,
    and none from importing the kernels either, until for_blocks first splits work."""
    code = "\n".join([
        "import threading, numpy as np",
        "from tensor.fast import attention, cross_entropy, gelu, layernorm, optim, threads",
        "print(threading.active_count(), threads._helper is None, threads._fork_hook)",
        "threads.set_threads(2)",
        "threads.for_blocks(np, 4, lambda lo, hi: None, 1)",
        "print(threading.active_count(), threads._helper is None, threads._fork_hook)"])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.split("\n")[:2] == ["1 True False", "2 False True"], out.stderr
