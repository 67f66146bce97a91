"""tensor/backend.py keep_freed_memory: after `import tensor`, freed arrays, big ones
included, are reused without page faults.

Counted, not timed: the kernel's minor page-fault counter (getrusage) for the same loop of
allocate-touch-free in two fresh processes, one with the setting and one without.
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
import resource, tensor, numpy as np
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
arrays = [np.ones(16_000_000, np.float32) for _ in range(4)]; del arrays
before = faults()
arrays = [np.ones(16_000_000, np.float32) for _ in range(4)]; del arrays
print(faults() - before, tensor.backend.keep_freed_memory())
"""


def _faults(keep):
    env = {k: v for k, v in os.environ.items() if k != "TINYGRAD_GPT_MALLOC"}
    if not keep:
        env["TINYGRAD_GPT_MALLOC"] = "default"
    out = subprocess.run([sys.executable, "-c", LOOP], env=env, capture_output=True,
                         text=True, check=True)
    faults, told = out.stdout.split()
    return int(faults), told == "True"


def test_opt_out_leaves_malloc_alone():
    _, told = _faults(keep=False)
    assert not told


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt, Linux")
def test_freed_arrays_are_reused_without_page_faults():
    kept, told = _faults(keep=True)
    if not told:
        pytest.skip("this C library has no mallopt (not glibc)")
    default, _ = _faults(keep=False)
    # 4 x 64 MB of fresh pages by default: >= 128 faults even with 2 MB huge pages
    assert default >= 128, f"expected fresh pages without the setting, got {default} faults"
    assert kept < default / 8, f"{kept} faults with freed memory kept vs {default} without"
