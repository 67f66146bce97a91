"""The safetensors format: a file's header read and checked before (and without) reading
its tensors, and a file written straight from the arrays.

The format (github.com/huggingface/safetensors):

    8 bytes        N, the header's length, an unsigned little-endian integer
    N bytes        UTF-8 JSON: {name: {"dtype": "F32", "shape": [2, 3],
                                       "data_offsets": [begin, end]}, ...,
                                "__metadata__": {str: str}}       (metadata optional)
    the rest       the tensors' bytes, back to back; begin and end count from the first
                   byte after the header, and the last tensor ends where the file ends

read_header refuses, with a ValueError of one line naming the file, everything the
safetensors library would refuse when it opens the file, and a little more (a name given
twice, a dtype NumPy cannot hold), so that a file it accepts loads. It reads at most
HEADER_LIMIT bytes of header, and checks the claimed length against the limit and the file's
size before reading any of it: a corrupt length claiming gigabytes costs nothing.

    tensors, metadata = read_header("model.safetensors")
    tensors["wte.weight"]         # TensorInfo(dtype='F32', shape=(50257, 768), begin=0, ...)

save_file writes without a copy of the arrays in memory. `safetensors.numpy.save_file` first
turns every array into a bytes object (`tobytes`), so a checkpoint of weights and AdamW's two
moments briefly needs that much memory again (for GPT-2 small 1.4 GB on top of the run's own
2 GB, at every save). Here each array is written from its own buffer (`memoryview`); only a
non-contiguous or big-endian one is copied first, one at a time. Files it writes read back
with safetensors' own readers (tests/test_safetensors_write.py).
"""
import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEADER_LIMIT = 100_000_000           # bytes; the safetensors library's own limit
# Every dtype the format names -> bits per element; NUMPY_DTYPES: those safetensors.numpy
# (and so safetensors.numpy.load_file) can turn into arrays.
DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
              "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
              "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32,
              "C64": 64, "F64": 64, "I64": 64, "U64": 64}
NUMPY_DTYPES = ("F64", "F32", "F16", "I64", "U64", "I32", "U32", "I16", "U16", "I8", "U8",
                "BOOL", "C64")
AGAIN = "download or export it again"


@dataclass(frozen=True)
class TensorInfo:
    dtype: str          # "F32", ... (a key of DTYPE_BITS)
    shape: tuple        # of ints >= 0
    begin: int          # byte offsets into the data section (after the header)
    end: int


def read_header(path, limit=HEADER_LIMIT):
    """(tensors {name: TensorInfo}, metadata {str: str}) of safetensors file `path`, checked
    against its own size; the tensors' bytes are not read. FileNotFoundError if there is no
    file; ValueError (one line: the file, the problem, the fix) for anything else."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            n = int.from_bytes(f.read(8), "little") if size >= 8 else None
            raw = f.read(n) if n is not None and n <= min(limit, size - 8) else None
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ValueError(f"{path} cannot be read ({e.strerror or e})") from None
    if n is None:
        raise ValueError(f"{path} is {size} bytes, too short for a safetensors file (8 bytes "
                         f"of header length come first): {AGAIN}")
    if n > limit:
        raise ValueError(f"{path}: the header claims {n:,} bytes, more than the {limit:,}-byte "
                         f"limit: the file is not safetensors or is corrupt; {AGAIN}")
    if raw is None:
        raise ValueError(f"{path}: the header claims {n:,} bytes but only {size - 8:,} follow: "
                         f"the file is truncated or not safetensors; {AGAIN}")
    header = _parse(raw, path)
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ValueError(f"{path}: the header's __metadata__ is not a map of strings: {AGAIN}")
    tensors = {name: _tensor_info(name, info, path) for name, info in header.items()}
    _check_layout(tensors, size - 8 - n, path)
    return tensors, metadata


def _parse(raw, path):
    """The header's bytes -> a dict (no name twice), or ValueError."""
    def no_duplicates(pairs):
        names = [k for k, _ in pairs]
        if len(set(names)) < len(names):
            twice = next(k for k in names if names.count(k) > 1)
            raise ValueError(f"{path}: the header names {twice!r} twice: {AGAIN}")
        return dict(pairs)

    def no_constant(name):
        raise ValueError(f"{path}: the header holds {name}, which is not JSON: {AGAIN}")

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates,
                            parse_constant=no_constant)
        json.dumps(header, ensure_ascii=False).encode("utf-8")     # no lone surrogates
    except UnicodeError:
        raise ValueError(f"{path}: the header is not UTF-8 text: the file is not safetensors "
                         f"or is corrupt; {AGAIN}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: the header is not JSON ({e.msg} at byte {8 + e.pos}): the "
                         f"file is not safetensors or is corrupt; {AGAIN}") from None
    except RecursionError:
        raise ValueError(f"{path}: the header is JSON nested too deeply: the file is not "
                         f"safetensors or is corrupt; {AGAIN}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object: {AGAIN}")
    return header


def _tensor_info(name, info, path):
    """One header entry -> TensorInfo, or ValueError naming the tensor."""
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
        raise ValueError(f"{where} lacks its dtype, shape or data_offsets: {AGAIN}")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise ValueError(f"{where} has unknown dtype {dtype!r}: {AGAIN}")
    if dtype not in NUMPY_DTYPES:
        raise ValueError(f"{where} is {dtype}, which NumPy cannot hold (it reads "
                         f"{', '.join(NUMPY_DTYPES[:3])}, integers and BOOL): save the tensors "
                         "as F32")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise ValueError(f"{where} has shape {shape!r}; a shape is a list of integers >= 0: "
                         f"{AGAIN}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_natural, offsets))
            and offsets[0] <= offsets[1]):
        raise ValueError(f"{where} has data_offsets {offsets!r}; they are [begin, end] with "
                         f"0 <= begin <= end: {AGAIN}")
    nbytes = math.prod(shape) * DTYPE_BITS[dtype] // 8
    if offsets[1] - offsets[0] != nbytes:
        raise ValueError(f"{where}: {dtype} {tuple(shape)} is {nbytes:,} bytes but its "
                         f"data_offsets {offsets} span {offsets[1] - offsets[0]:,}: {AGAIN}")
    return TensorInfo(dtype, tuple(shape), offsets[0], offsets[1])


def _natural(x):
    return type(x) is int and x >= 0


def _check_layout(tensors, data_size, path):
    """The tensors' bytes must tile the data section: back to back, and ending with the file."""
    end = 0
    for name, info in sorted(tensors.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.end > data_size:
            raise ValueError(f"{path}: tensor {name!r} ends {info.end:,} bytes into the data "
                             f"but the file holds {data_size:,}: the file is truncated; "
                             f"{AGAIN}")
        if info.begin != end:
            problem = "overlaps the tensor before it" if info.begin < end else (
                f"leaves bytes {end:,}..{info.begin:,} unused")
            raise ValueError(f"{path}: tensor {name!r} {problem}: the header is corrupt; {AGAIN}")
        end = info.end
    if end != data_size:
        raise ValueError(f"{path}: the tensors end at byte {end:,} of the data but the file "
                         f"holds {data_size:,}: it is not one safetensors file; {AGAIN}")

# NumPy dtype -> the format's name, for save_file
DTYPES = {np.dtype(k): v for k, v in (
    ("float64", "F64"), ("float32", "F32"), ("float16", "F16"), ("int64", "I64"),
    ("int32", "I32"), ("int16", "I16"), ("int8", "I8"), ("uint64", "U64"), ("uint32", "U32"),
    ("uint16", "U16"), ("uint8", "U8"), ("bool", "BOOL"))}
ALIGN = 8


def save_file(tensors, path, metadata=None):
    """Write tensors to path in the safetensors format, larger dtypes first, then by name
    (so every array starts aligned to its itemsize). tensors: name -> a NumPy array, or a
    list of arrays of one dtype that the file stores end to end as one flat tensor (as an
    optimizer's per-parameter moments: no joined copy is made)."""
    pieces = {}
    for name, value in tensors.items():
        parts = [np.asarray(a) for a in value] if isinstance(value, list) else [np.asarray(value)]
        dtypes = {a.dtype.newbyteorder("=") for a in parts}
        if len(dtypes) != 1 or not dtypes <= set(DTYPES):
            raise ValueError(f"safetensors: {name} has dtype {', '.join(map(str, dtypes))}, "
                             "which the format does not store here; convert it first")
        shape = [sum(a.size for a in parts)] if isinstance(value, list) else list(parts[0].shape)
        pieces[name] = shape, [_little_endian_c_order(a) for a in parts]
    order = sorted(pieces, key=lambda k: (-pieces[k][1][0].dtype.itemsize, k))
    header, offset = {}, 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in order:
        shape, parts = pieces[name]
        size = sum(a.nbytes for a in parts)
        header[name] = {"dtype": DTYPES[parts[0].dtype.newbyteorder("=")], "shape": shape,
                        "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % ALIGN)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for name in order:
            for a in pieces[name][1]:
                if a.nbytes:
                    f.write(memoryview(a.reshape(-1)).cast("B"))


def _little_endian_c_order(a):
    """a itself when it is already little-endian and C-contiguous, else such a copy."""
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return a if a.flags.c_contiguous else a.copy(order="C")
