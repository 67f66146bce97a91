"""The one place that decides which array library runs the math.

`xp` is the usual name for "numpy or cupy": every op in tensor/ is written against the
array-module interface the two share, so the same code runs on the CPU and on a GPU.

    device "cpu"  -> numpy
    device "cuda" -> cupy   (pip install "tinygrad_gpt[cuda]"; needs an NVIDIA GPU)
"""
import threading

import numpy as np

try:  # CuPy is optional: importing it must never break the CPU path.
    import cupy as _cupy
except Exception:  # ImportError, or a CuPy build that fails to load its CUDA libraries
    _cupy = None

DEVICES = ("cpu", "cuda")


def cuda_available():
    """True when CuPy is importable and can see at least one GPU."""
    if _cupy is None:
        return False
    try:
        return _cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


def check_device(device):
    """Normalize a device name ('cpu', 'cuda', 'cuda:0') and fail clearly if it cannot run."""
    name = "cpu" if device is None else str(device).lower()
    if name.startswith("cuda"):
        name = "cuda"
    if name not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use 'cpu' or 'cuda'")
    if name == "cuda" and not cuda_available():
        if _cupy is None:
            raise RuntimeError("device 'cuda' needs CuPy: pip install \"tinygrad_gpt[cuda]\" "
                               "(cupy-cuda12x for CUDA 12), or use device='cpu'")
        raise RuntimeError("device 'cuda' asked for, but CuPy sees no GPU: "
                           "check nvidia-smi and the driver, or use device='cpu'")
    return name


def get_xp(device):
    """The array module for a device: numpy for 'cpu', cupy for 'cuda'."""
    return _cupy if device == "cuda" else np


def device_of(array):
    """'cuda' for a CuPy array, 'cpu' for anything else."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return "cuda"
    return "cpu"


def xp_of(array):
    """The array module an array belongs to."""
    return get_xp(device_of(array))


def to_numpy(array):
    """A NumPy copy (or the array itself) of a NumPy or CuPy array."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def to_device(array, device):
    """Move an array to a device ('cpu' or 'cuda'); a no-op when it is already there."""
    device = check_device(device)
    if device_of(array) == device:
        return array
    return _cupy.asarray(array) if device == "cuda" else _cupy.asnumpy(array)


_seed = None                  # the last manual_seed, or None for fresh OS entropy
_generators = {}              # (device, stream) -> random generator, made lazily from _seed
_stream = threading.local()   # .index: the stream this thread draws from (0 unless set)


def manual_seed(seed):
    """Seed the random generators used by dropout (and anything else that draws in tensor/)."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def generator(device):
    """The random generator for a device (and this thread's stream, see random_stream),
    created on first use from the last manual_seed."""
    key = (device, getattr(_stream, "index", 0))
    if key not in _generators:
        seed = _seed
        if seed is not None and key[1]:    # stream k: its own seed, derived from (seed, k)
            seed = int(np.random.SeedSequence([seed, key[1]]).generate_state(1)[0])
        _generators[key] = get_xp(device).random.default_rng(seed)
    return _generators[key]


class random_stream:
    """`with random_stream(k):` this thread draws from stream k, a generator of its own.

    Two threads drawing from one generator would get numbers in whichever order they
    happen to ask, so runs would not repeat; nn/parallel.py gives each half of a batch its
    own stream instead (0 and 1). Stream 0 is the default generator."""

    def __init__(self, index):
        self.index = int(index)

    def __enter__(self):
        self._before = getattr(_stream, "index", 0)
        _stream.index = self.index
        return self

    def __exit__(self, *exc):
        _stream.index = self._before


def random_state(device):
    """Every random generator made so far for a device, {stream: state}: one JSON-able
    object that set_random_state puts back (a checkpoint saves it)."""
    return {str(stream): gen.bit_generator.state
            for (dev, stream), gen in sorted(_generators.items()) if dev == device}


def set_random_state(device, state):
    """Restore what random_state returned (call manual_seed first: a stream that was never
    used is not in `state`, and is then made fresh from the seed, as it would have been)."""
    for stream, value in state.items():
        with random_stream(int(stream)):
            generator(device).bit_generator.state = value
