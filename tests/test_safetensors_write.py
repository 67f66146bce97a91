"""gpt/safetensors_file.py: what it writes, safetensors' own readers read back exactly
(names, dtypes, shapes, values, metadata), for any mix of arrays; and it holds no copy of
the arrays while it writes (peak traced memory far below their size)."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors import safe_open
from safetensors.numpy import load_file

from gpt.safetensors_file import DTYPES, save_file

dtypes = st.sampled_from(sorted(DTYPES, key=str))
arrays = dtypes.flatmap(lambda d: hnp.arrays(d, hnp.array_shapes(min_dims=0, max_dims=3,
                                                                  min_side=0, max_side=4)))
names = st.text(st.characters(min_codepoint=33, max_codepoint=0x2FF), min_size=1, max_size=8)


@given(st.dictionaries(names, arrays, min_size=1, max_size=6),
       st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
       st.booleans())
def test_safetensors_reads_back_every_array_and_the_metadata(tmp_path_factory, tensors,
                                                             metadata, views):
    if views:     # non-contiguous and big-endian inputs are written as their values
        tensors = {k: (v.T if v.ndim > 1 else v.astype(v.dtype.newbyteorder(">")))
                   for k, v in tensors.items()}
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    save_file(tensors, path, metadata)
    back = load_file(str(path))
    assert set(back) == set(tensors)
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype.newbyteorder("=")
        assert back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)
    with safe_open(str(path), framework="np") as f:
        assert (f.metadata() or {}) == metadata


def test_the_data_starts_aligned_and_has_no_holes(tmp_path):
    import json
    import struct
    tensors = {"b": np.arange(3, dtype=np.uint8), "a": np.ones((2, 3), np.float64),
               "c": np.zeros(5, np.float32)}
    save_file(tensors, tmp_path / "x.safetensors")
    raw = (tmp_path / "x.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    assert (8 + n) % 8 == 0
    header = json.loads(raw[8:8 + n])
    spans = sorted(v["data_offsets"] for v in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert [k for k, _ in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"])] == \
        ["a", "c", "b"]                       # 8-byte dtype first, then 4, then 1


def test_writing_holds_no_copy_of_the_arrays(tmp_path):
    tensors = {f"w{i}": np.ones(1 << 20, np.float32) for i in range(8)}        # 32 MiB
    tracemalloc.start()
    save_file(tensors, tmp_path / "big.safetensors")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20                        # under one array's 4 MiB, let alone 32 MiB


def test_a_dtype_the_format_does_not_store_is_refused(tmp_path):
    with pytest.raises(ValueError, match="complex128"):
        save_file({"z": np.ones(2, np.complex128)}, tmp_path / "z.safetensors")


@given(st.lists(hnp.arrays(np.float32, hnp.array_shapes(max_dims=2, min_side=0, max_side=4)),
                min_size=1, max_size=5))
def test_a_list_of_arrays_is_stored_as_one_flat_tensor_of_their_values(tmp_path_factory,
                                                                       parts):
    path = tmp_path_factory.mktemp("st") / "m.safetensors"
    save_file({"optim.m": parts, "w": np.ones(3, np.float64)}, path)
    back = load_file(str(path))
    np.testing.assert_array_equal(back["optim.m"],
                                  np.concatenate([p.reshape(-1) for p in parts]))
    np.testing.assert_array_equal(back["w"], np.ones(3))


def test_a_list_mixing_dtypes_is_refused(tmp_path):
    with pytest.raises(ValueError, match="float32, float64|float64, float32"):
        save_file({"m": [np.ones(2, np.float32), np.ones(2, np.float64)]}, tmp_path / "x")
