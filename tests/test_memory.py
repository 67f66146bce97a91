"""tensor/fast/memory.py keep_freed_memory: after `tensor.fast.enable()`, freed arrays, big
ones included, are reused without page faults; `import tensor` alone leaves malloc as it is.

Counted, not timed: the kernel's minor page-fault counter (getrusage) for the same loop of
allocate-touch-free in fresh processes: after enable(), after enable() with the opt-out
TINYGRAD_GPT_MALLOC=default, and after a plain `import tensor, nn, gpt`.
"""
import os
import subprocess
import sys

import pytest

# Two rounds of what a step does with its activations: four 64 MB arrays alive at once
# (bigger than glibc's largest mmap threshold, as GPT-2 small's logits are), each written
# in full, then all freed. Prints the minor page faults of the second round
# (the first faults in fresh memory either way).
LOOP = """
import resource, sys, numpy as np
import tensor, nn, gpt
import tensor.fast
enabled = tensor.fast.enable() if sys.argv[1] == "enable" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
arrays = [np.ones(16_000_000, np.float32) for _ in range(4)]; del arrays
before = faults()
arrays = [np.ones(16_000_000, np.float32) for _ in range(4)]; del arrays
print(faults() - before, enabled)
"""


def _faults(mode, malloc=None):
    env = {k: v for k, v in os.environ.items() if k not in ("TINYGRAD_GPT_MALLOC",
                                                            "TINYGRAD_GPT_FAST")}
    if malloc:
        env["TINYGRAD_GPT_MALLOC"] = malloc
    out = subprocess.run([sys.executable, "-c", LOOP, mode], env=env, capture_output=True,
                         text=True, check=True)
    faults, enabled = out.stdout.split()
    return int(faults), enabled == "True"


def _kept_after_enable():
    env = {k: v for k, v in os.environ.items() if k != "TINYGRAD_GPT_MALLOC"}
    code = "from tensor.fast import memory; print(memory.keep_freed_memory())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, check=True).stdout.strip() == "True"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, Linux")
def test_freed_arrays_are_reused_without_page_faults_only_after_enable():
    if not _kept_after_enable():
        pytest.skip("this C library has no mallopt (not glibc)")
    kept, enabled = _faults("enable")
    assert enabled
    imported, _ = _faults("import")
    opted_out, _ = _faults("enable", malloc="default")
    # 4 x 64 MB of fresh pages by default: >= 128 faults even with 2 MB huge pages
    assert imported >= 128, f"import alone must leave malloc as it is, got {imported} faults"
    assert opted_out >= 128, f"TINYGRAD_GPT_MALLOC=default must opt out, got {opted_out}"
    assert kept < imported / 8, f"{kept} faults with freed memory kept vs {imported} without"


def test_opt_out_leaves_malloc_alone():
    code = "from tensor.fast import memory; print(memory.keep_freed_memory())"
    env = dict(os.environ, TINYGRAD_GPT_MALLOC="default")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False"
