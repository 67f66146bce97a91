"""`import tensor`, `import nn`, `import gpt` change nothing in the process: environment,
OpenBLAS's thread count, the number of threads (Python's and the OS's) and the op table are
exactly as before the import; malloc is checked by tests/test_memory.py (page faults).
The speed machinery starts only with tensor.fast.enable(), and its helper thread only when
two cores are first asked for.

Each check runs in a fresh interpreter, so nothing imported by pytest itself interferes.
"""
import json
import os
import subprocess
import sys

import pytest

PROBE = r"""
import glob, ctypes, json, os, sys, threading
import numpy

def openblas_threads():
    libs = os.path.join(os.path.dirname(os.path.dirname(numpy.__file__)), "numpy.libs")
    for path in sorted(glob.glob(os.path.join(libs, "lib*openblas*.so*"))):
        lib = ctypes.CDLL(path)
        for name in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                     "openblas_get_num_threads64_", "openblas_get_num_threads"):
            get = getattr(lib, name, None)
            if get is not None:
                get.restype = ctypes.c_int
                return get()
    return None

def snapshot():
    return {"env": dict(os.environ), "blas": openblas_threads(),
            "python_threads": threading.active_count(),
            "os_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task")
            else None}

before = snapshot()
exec(sys.argv[1])
after = snapshot()
from tensor import dispatch
import tensor.fast
print(json.dumps({"before": before, "after": after, "kernels": dispatch.registered(),
                  "fast": tensor.fast.enabled()}))
"""


def probe(statement):
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    out = subprocess.run([sys.executable, "-c", PROBE, statement], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.mark.parametrize("statement", ["import tensor", "import nn", "import gpt",
                                       "import tensor, nn, gpt, tokenizer\n"
                                       "import tensor.functional, nn.parallel, gpt.hf"])
def test_importing_changes_nothing(statement):
    result = probe(statement)
    before, after = result["before"], result["after"]
    changed = sorted(set(before["env"].items()) ^ set(after["env"].items()))
    assert not changed, f"{statement!r} changed the environment: {changed}"
    assert after["blas"] == before["blas"], "OpenBLAS's thread count changed"
    assert after["python_threads"] == before["python_threads"], "a Python thread started"
    assert after["os_threads"] == before["os_threads"], "an OS thread started"
    assert result["kernels"] == [] and result["fast"] is False, "fast kernels registered"


def test_enable_registers_kernels_and_threads_start_only_when_asked_for():
    result = probe("import numpy as np, tensor.fast, tensor.functional as F\n"
                   "from tensor import Tensor\n"
                   "tensor.fast.enable(tune_malloc=False)\n"
                   "F.gelu(Tensor(np.ones(10)))\n")            # too small to split: no helper
    assert result["fast"] is True and "gelu" in result["kernels"]
    assert result["after"]["python_threads"] == result["before"]["python_threads"]
    split = probe("import numpy as np, tensor.fast, tensor.functional as F\n"
                  "from tensor import Tensor\n"
                  "from tensor.fast import threads\n"
                  "threads.set_threads(2)\n"
                  "tensor.fast.enable(tune_malloc=False)\n"
                  "F.gelu(Tensor(np.ones(1 << 20)))\n")       # big: the helper starts now
    assert split["after"]["python_threads"] == split["before"]["python_threads"] + 1


def test_the_fast_switch_off_keeps_the_reference_ops():
    env = dict(os.environ, TINYGRAD_GPT_FAST="0")
    code = ("import tensor.fast\nfrom tensor import dispatch\n"
            "print(tensor.fast.enable(), dispatch.registered())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert out.stdout.split() == ["False", "[]"]
