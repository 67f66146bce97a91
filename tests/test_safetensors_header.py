"""gpt/safetensors_file.py: a safetensors file's header, read with limits and checked
before any tensor is: a length claiming more than HEADER_LIMIT or than the file holds, a
truncated file, offsets outside the file, overlapping or gapped data, unknown or NumPy-less
dtypes, bad JSON: one line naming the file. Checked against the safetensors library itself:
whatever read_header accepts, safetensors.numpy.load_file loads, with those dtypes and shapes.
"""
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load_file, save_file

import gpt.safetensors_file as sh
from gpt import GPT, GPTConfig
from gpt.safetensors_file import DTYPE_BITS, HEADER_LIMIT, read_header

FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 300) | st.floats() |
                    st.text(max_size=4), lambda inner: st.lists(inner, max_size=3) |
                    st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


def one_line(error, *names):
    """The message of `error`: one line, naming each of `names` (file names)."""
    message = str(error.value if hasattr(error, "value") else error)
    assert "\n" not in message and "Traceback" not in message, message
    assert all(name in message for name in names), (names, message)
    return message


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A folder with a good model.safetensors, as gpt.hf.save_pretrained writes it."""
    folder = tmp_path_factory.mktemp("base")
    GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)).save_pretrained(
        folder)
    return folder


def split_file(path):
    """A safetensors file -> (header dict, data bytes)."""
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_file(path, header, data, raw_header=None):
    raw = raw_header if raw_header is not None else json.dumps(header).encode()
    Path(path).write_bytes(len(raw).to_bytes(8, "little") + raw + data)


DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
          "I32": np.int32, "U8": np.uint8, "BOOL": np.bool_}
tensors_st = st.dictionaries(st.text("abc._", min_size=1, max_size=6), st.tuples(
    st.sampled_from(sorted(DTYPES)), st.lists(st.integers(0, 4), max_size=3)), max_size=4)


@FUZZ
@given(tensors_st)
def test_the_header_of_any_saved_file_reads_back(tmp_path, spec):
    arrays = {k: np.zeros(shape, DTYPES[dtype]) for k, (dtype, shape) in spec.items()}
    save_file(arrays, str(tmp_path / "a.safetensors"), metadata={"format": "np"})
    tensors, metadata = read_header(tmp_path / "a.safetensors")
    assert metadata == {"format": "np"}
    assert {k: (t.dtype, t.shape) for k, t in tensors.items()} == {
        k: (dtype, tuple(shape)) for k, (dtype, shape) in spec.items()}


@FUZZ
@given(st.data())
def test_any_truncation_is_refused_and_is_unloadable(base, tmp_path, data):
    raw = (base / "model.safetensors").read_bytes()
    cut = data.draw(st.integers(0, len(raw) - 1), label="bytes kept")
    (tmp_path / "torn.safetensors").write_bytes(raw[:cut])
    with pytest.raises(ValueError) as error:
        read_header(tmp_path / "torn.safetensors")
    one_line(error, "torn.safetensors")
    with pytest.raises(Exception):                   # the library agrees it is broken
        load_file(str(tmp_path / "torn.safetensors"))


@FUZZ
@given(st.one_of(st.integers(0, 2 ** 64 - 1), st.integers(0, 4096)))
def test_a_header_length_is_checked_before_anything_is_read(base, tmp_path, monkeypatch, n):
    raw = (base / "model.safetensors").read_bytes()
    path = tmp_path / "m.safetensors"
    path.write_bytes(n.to_bytes(8, "little") + raw[8:])
    reads = []                                     # the sizes read_header asks to read

    class Recording:
        def __init__(self, *args):
            self.f = open(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def seek(self, *args):
            return self.f.seek(*args)

        def read(self, size=-1):
            reads.append(size)
            return self.f.read(size)
    monkeypatch.setattr(sh, "open", Recording, raising=False)
    if n == int.from_bytes(raw[:8], "little"):
        assert read_header(path)[0]
        return
    with pytest.raises(ValueError) as error:
        read_header(path)
    message = one_line(error, "m.safetensors")
    if n > HEADER_LIMIT:
        assert "more than the 100,000,000-byte limit" in message
    elif n > len(raw) - 8:
        assert f"claims {n:,} bytes but only {len(raw) - 8:,} follow" in message
    if n > len(raw) - 8:
        assert reads == [8], reads                   # the length only, not the claimed bytes


NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
         "U64": np.uint64, "I32": np.int32, "U32": np.uint32, "I16": np.int16, "U16": np.uint16,
         "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_, "C64": np.complex64}


@FUZZ
@given(st.data())
def test_whatever_the_reader_accepts_the_library_loads(base, tmp_path, data):
    header, body = split_file(base / "model.safetensors")
    names = sorted(k for k in header if k != "__metadata__")
    kind = data.draw(st.sampled_from(["field", "drop", "offsets", "dtype", "entry", "metadata",
                                      "bytes"]))
    name = data.draw(st.sampled_from(names))
    raw = None
    if kind == "field":
        key = data.draw(st.sampled_from(["dtype", "shape", "data_offsets", "extra"]))
        header[name][key] = data.draw(JSON)
    elif kind == "drop":
        header.pop(name)
    elif kind == "offsets":
        header[name]["data_offsets"][data.draw(st.integers(0, 1))] += data.draw(
            st.integers(-8, 8))
    elif kind == "dtype":
        header[name]["dtype"] = data.draw(st.sampled_from(sorted(DTYPE_BITS) + ["f32", ""]))
    elif kind in ("entry", "metadata"):
        header[data.draw(st.text(max_size=4)) if kind == "entry" else "__metadata__"] = \
            data.draw(JSON)
    else:
        raw = bytearray(json.dumps(header).encode())
        for _ in range(data.draw(st.integers(1, 3))):
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
        raw = bytes(raw)
    path = tmp_path / "m.safetensors"
    write_file(path, header, body, raw)
    try:
        tensors, _ = read_header(path)
    except ValueError as error:
        one_line(error, "m.safetensors")
        return
    arrays = load_file(str(path))                 # must not raise
    assert sorted(arrays) == sorted(tensors)
    for k, t in tensors.items():
        assert arrays[k].dtype == NUMPY[t.dtype] and arrays[k].shape == t.shape, k


def good_file(base):
    """(header dict, data bytes) of the good folder's model.safetensors."""
    return split_file(base / "model.safetensors")


def retyped(h, **info):
    name = next(k for k in h if k != "__metadata__")
    return {**h, name: {**h[name], **info}}


@pytest.mark.parametrize("change, words", [
    (lambda h, d: (h, d + b"xx"), "the tensors end at byte"),
    (lambda h, d: (h, d[:-4]), "the file is truncated"),
    (lambda h, d: (retyped(h, dtype="BF16"), d), "is BF16, which NumPy cannot hold"),
    (lambda h, d: (retyped(h, dtype="F99"), d), "unknown dtype 'F99'"),
    (lambda h, d: (retyped(h, shape=[1, 2]), d), "but its data_offsets"),
    (lambda h, d: (retyped(h, data_offsets=[-1, 4]), d), "they are [begin, end]"),
    (lambda h, d: ({**h, "__metadata__": {"format": 1}}, d), "not a map of strings"),
    (lambda h, d: ([1], d), "not a JSON object"),
    (lambda h, d: (b"[" * 100_000, d), "nested too deeply"),
    (lambda h, d: (b'{"a": NaN}', d), "holds NaN"),
    (lambda h, d: (b"\xff\xfe{}", d), "not UTF-8"),
    (lambda h, d: (b'{"\\ud800": 1}', d), "not UTF-8"),
    (lambda h, d: (b'{"a": {}, "a": {}}', d), "names 'a' twice"),
    (lambda h, d: (b"{", d), "the header is not JSON"),
])
def test_a_corrupt_header_is_named_in_one_line(base, tmp_path, change, words):
    header, body = change(*good_file(base))
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    write_file(tmp_path / "model.safetensors", None, body, raw)
    with pytest.raises(ValueError) as error:
        read_header(tmp_path / "model.safetensors")
    assert words in one_line(error, "model.safetensors")


@pytest.mark.parametrize("content", [b"", b"\x01\x02"])
def test_a_file_shorter_than_the_length_field_is_named(tmp_path, content):
    (tmp_path / "model.safetensors").write_bytes(content)
    with pytest.raises(ValueError, match="too short for a safetensors file") as error:
        read_header(tmp_path / "model.safetensors")
    one_line(error, "model.safetensors")
    with pytest.raises(FileNotFoundError):
        read_header(tmp_path / "absent.safetensors")
