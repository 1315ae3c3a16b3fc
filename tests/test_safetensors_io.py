"""The strict safetensors reader/writer (sim/safetensors_io.py): round trips, compatibility with
the official library both ways, BF16 rounding, and every corruption the reader must refuse."""

import json
import struct

import numpy as np
import pytest
import safetensors.numpy

from mmfree.sim import safetensors_io as st
from mmfree.sim.safetensors_io import SafetensorsError


def sample_tensors(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "f64": rng.normal(size=(3, 4)),
        "f32": rng.normal(size=(5,)).astype(np.float32),
        "f16": rng.normal(size=(2, 3)).astype(np.float16),
        "i64": rng.integers(-2**62, 2**62, (4,)),
        "i32": rng.integers(-2**31, 2**31 - 1, (2, 2), dtype=np.int32),
        "i16": rng.integers(-2**15, 2**15 - 1, (7,), dtype=np.int16),
        "i8": rng.integers(-128, 128, (3, 3), dtype=np.int8),
        "u8": rng.integers(0, 256, (9,), dtype=np.uint8),
        "bool": rng.integers(0, 2, (2, 5)).astype(np.bool_),
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3), np.float32),
    }


def assert_same(got, want):
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].dtype == want[name].dtype, name
        assert got[name].shape == want[name].shape, name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_round_trip_all_dtypes(tmp_path):
    tensors = sample_tensors()
    bf16_source = np.array([1.0, -2.5, 3.14159, 1e-30, -65504.0], np.float32)
    tensors["bf16"] = bf16_source
    metadata = {"format": "test", "note": "ünïcode"}
    path = tmp_path / "t.safetensors"
    st.save_file(tensors, path, metadata, dtypes={"bf16": "BF16"})
    got, got_meta = st.load_file(path)
    assert got_meta == metadata
    want = dict(tensors, bf16=st.bf16_round(bf16_source))
    assert_same(got, want)
    infos, _ = st.read_header(path)
    assert infos["bf16"].dtype == "BF16" and infos["f32"].dtype == "F32"
    assert st.load(path.read_bytes())[0].keys() == got.keys()


def test_official_reads_ours_and_bytes_match(tmp_path):
    tensors = sample_tensors(1)
    ours = st.save(tensors, {"a": "b"})
    assert ours == safetensors.numpy.save(tensors, metadata={"a": "b"})
    path = tmp_path / "ours.safetensors"
    st.save_file(tensors, path)
    assert_same(safetensors.numpy.load_file(str(path)), tensors)
    header_len = struct.unpack("<Q", ours[:8])[0]
    assert header_len % 8 == 0


def test_we_read_official(tmp_path):
    tensors = sample_tensors(2)
    path = tmp_path / "theirs.safetensors"
    safetensors.numpy.save_file(tensors, str(path), metadata={"k": "v"})
    got, metadata = st.load_file(path)
    assert metadata == {"k": "v"}
    assert_same(got, tensors)


def test_big_endian_input_written_little_endian():
    a = np.arange(6, dtype=">f4").reshape(2, 3)
    got, _ = st.load(st.save({"a": a}))
    assert got["a"].dtype == np.float32
    np.testing.assert_array_equal(got["a"], a)


def test_bf16_rounding():
    one_ulp = 2.0**-7                      # bfloat16 spacing at 1.0
    x = np.array([1.0, 1 + one_ulp / 2, 1 + 3 * one_ulp / 2, 1 + one_ulp / 2 + 2**-20,
                  -(1 + one_ulp / 2), np.inf, -np.inf, 3.4e38, 1e-40, 0.0, -0.0], np.float32)
    want = np.array([1.0, 1.0, 1 + 2 * one_ulp, 1 + one_ulp, -1.0, np.inf, -np.inf, np.inf,
                     np.float32(1e-40), 0.0, -0.0], np.float32)
    got = st.bf16_round(x)
    # 1e-40 is subnormal; bfloat16 keeps its top 16 bits rounded: compare via the bit pattern.
    want[8] = st.bf16_to_float32(np.array([(np.float32(1e-40).view(np.uint32) + 0x7FFF
                                            + ((np.float32(1e-40).view(np.uint32) >> 16) & 1))
                                           >> 16], np.uint16))[0]
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got[10])
    nan = st.bf16_bits(np.array([np.nan, -np.nan], np.float32))
    assert np.all(np.isnan(st.bf16_to_float32(nan)))
    assert st.bf16_bits(np.array([1.0], np.float32)).tolist() == [0x3F80]
    # Values already bfloat16 are kept exactly.
    y = st.bf16_round(np.random.default_rng(0).normal(size=1000).astype(np.float32))
    np.testing.assert_array_equal(st.bf16_round(y), y)


def test_writer_rejects_bad_input():
    with pytest.raises(ValueError, match=r"'__metadata__' is reserved"):
        st.save({"__metadata__": np.zeros(1)})
    with pytest.raises(ValueError, match=r"numpy dtype complex128 has no safetensors"):
        st.save({"c": np.zeros(2, complex)})
    with pytest.raises(ValueError, match=r"BF16 needs a float array, not int32"):
        st.save({"x": np.zeros(2, np.int32)}, dtypes={"x": "BF16"})
    with pytest.raises(ValueError, match=r"dtype override for 'y', which is not among"):
        st.save({"x": np.zeros(2)}, dtypes={"y": "F32"})
    with pytest.raises(TypeError, match=r"metadata must map strings to strings"):
        st.save({"x": np.zeros(2)}, {"k": 1})


# --- corruption ------------------------------------------------------------------------------

def raw_file(header, buffer=b"", *, header_bytes=None, length=None):
    """A file from a header object (or raw header bytes) and a buffer, with an optionally
    wrong header length field."""
    text = header_bytes if header_bytes is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + buffer


GOOD_HEADER = {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "I8", "shape": [3], "data_offsets": [8, 11]}}
GOOD_BUFFER = bytes(11)


def entry(**changes):
    header = json.loads(json.dumps(GOOD_HEADER))
    header["a"].update(changes)
    return {k: v for k, v in header["a"].items() if v is not None}


def with_a(a, buffer=GOOD_BUFFER):
    return raw_file(dict(GOOD_HEADER, a=a), buffer)


GOOD = raw_file(GOOD_HEADER, GOOD_BUFFER)
HEADER_END = 8 + struct.unpack("<Q", GOOD[:8])[0]

CORRUPT = {
    "empty": (b"", r"file is 0 bytes long, too short"),
    "7 bytes": (GOOD[:7], r"file is 7 bytes long, too short"),
    "absurd header length": (raw_file(GOOD_HEADER, length=2**40),
                             r"header length 1099511627776 is absurd"),
    "truncated in header length": (GOOD[:8], r"header length \d+ runs past the end of the "
                                             r"8-byte file"),
    "truncated in header": (GOOD[:HEADER_END - 5], r"header length \d+ runs past the end"),
    "truncated at buffer start": (GOOD[:HEADER_END], r"tensor 'a': data_offsets \[0, 8\] run "
                                                     r"past the 0-byte data buffer"),
    "truncated in first tensor": (GOOD[:HEADER_END + 3], r"run past the 3-byte data buffer "
                                                         r"\(file truncated\?\)"),
    "truncated last byte": (GOOD[:-1], r"tensor 'b': data_offsets \[8, 11\] run past the "
                                       r"10-byte data buffer"),
    "trailing garbage": (GOOD + b"xyz", r"3 trailing bytes after the last tensor"),
    "not utf-8": (raw_file(None, header_bytes=b'{"a\xff": 1}'), r"header is not valid UTF-8"),
    "not json": (raw_file(None, GOOD_BUFFER, header_bytes=json.dumps(GOOD_HEADER)
                          .replace(":", " ", 1).encode()), r"header is not valid JSON"),
    "not an object": (raw_file(None, header_bytes=b"[1, 2]"), r"does not start with '\{'"),
    "flipped first byte": (GOOD[:8] + b"x" + GOOD[9:], r"does not start with '\{'"),
    "duplicate key": (raw_file(None, GOOD_BUFFER, header_bytes=json.dumps(GOOD_HEADER).encode()
                               [:-1] + b', "a": {}}'), r"header has duplicate key 'a'"),
    "NaN constant": (raw_file(None, header_bytes=b'{"__metadata__": {"x": NaN}}'),
                     r"non-standard JSON constant NaN"),
    "entry not object": (with_a([1]), r"tensor 'a': entry is not a JSON object"),
    "missing dtype": (with_a(entry(dtype=None)), r"tensor 'a': entry lacks 'dtype'"),
    "missing shape": (with_a(entry(shape=None)), r"tensor 'a': entry lacks 'shape'"),
    "missing offsets": (with_a(entry(data_offsets=None)), r"entry lacks 'data_offsets'"),
    "unknown field": (with_a(entry(extra=1)), r"tensor 'a': unknown field 'extra'"),
    "unknown dtype": (with_a(entry(dtype="F8_E4M3")), r"unsupported dtype 'F8_E4M3'"),
    "dtype not string": (with_a(entry(dtype=4)), r"tensor 'a': dtype is not a string"),
    "negative shape": (with_a(entry(shape=[-2])), r"shape \[-2\] is not a list of non-negative"),
    "bool shape": (with_a(entry(shape=[True])), r"is not a list of non-negative integers"),
    "offsets reversed": (with_a(entry(data_offsets=[8, 0])), r"is not \[begin, end\]"),
    "offsets not ints": (with_a(entry(data_offsets=[0, 8.0])), r"is not \[begin, end\]"),
    "offsets three": (with_a(entry(data_offsets=[0, 4, 8])), r"is not \[begin, end\]"),
    "offsets vs shape": (with_a(entry(shape=[3])), r"tensor 'a': data_offsets \[0, 8\] span 8 "
                                                   r"bytes, but F32 \[3\] needs 12"),
    "offsets out of buffer": (raw_file({"a": {"dtype": "F32", "shape": [2],
                                              "data_offsets": [8, 16]}}, bytes(8)),
                              r"tensor 'a': data_offsets \[8, 16\] run past the 8-byte data "
                              r"buffer"),
    "overlap": (raw_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                          "b": {"dtype": "I8", "shape": [3], "data_offsets": [6, 9]}},
                         bytes(9)), r"tensors 'a' and 'b' overlap \(bytes 6..7\)"),
    "hole": (raw_file({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                       "b": {"dtype": "I8", "shape": [3], "data_offsets": [10, 13]}},
                      bytes(13)), r"hole of 2 bytes at offset 8, before tensor 'b'"),
    "hole at start": (raw_file({"a": {"dtype": "I8", "shape": [1], "data_offsets": [1, 2]}},
                               bytes(2)), r"hole of 1 bytes at offset 0, before tensor 'a'"),
    "metadata not object": (raw_file({"__metadata__": [1]}), r"__metadata__ is not a JSON"),
    "metadata value not string": (raw_file({"__metadata__": {"n": 3}}),
                                  r"__metadata__ value of 'n' is a int, not a string"),
    "bool byte": (raw_file({"x": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}},
                           b"\x01\x02"), r"tensor 'x': BOOL data holds a byte other than 0 or 1"),
}


def test_good_file_is_good():
    tensors, metadata = st.load(GOOD)
    assert metadata == {} and tensors["b"].tolist() == [0, 0, 0]


@pytest.mark.parametrize("case", list(CORRUPT))
def test_corrupt_rejected(case, tmp_path):
    data, pattern = CORRUPT[case]
    with pytest.raises(SafetensorsError, match=pattern):
        st.load(data)
    path = tmp_path / "bad.safetensors"
    path.write_bytes(data)
    with pytest.raises(SafetensorsError, match=pattern):
        st.load_file(path)
    if case != "bool byte":                # the only check that needs the data
        with pytest.raises(SafetensorsError, match=pattern):
            st.read_header(path)


def test_every_truncation_rejected():
    data = st.save(sample_tensors(3), {"m": "x"})
    for cut in range(0, len(data), 7):
        with pytest.raises(SafetensorsError):
            st.load(data[:cut])


def test_every_header_byte_flip_rejected_or_harmless():
    # Flipping any header byte either raises SafetensorsError (one line) or yields a file that
    # still passes every check (e.g. a changed letter in a name); never another exception.
    data = st.save({"w": np.arange(4, dtype=np.int16), "z": np.ones(3)}, {"k": "v"})
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    for position in range(header_end):
        flipped = bytearray(data)
        flipped[position] ^= 0x5A
        try:
            st.load(bytes(flipped))
        except SafetensorsError as error:
            assert "\n" not in str(error)


def test_error_is_value_error():
    assert issubclass(SafetensorsError, ValueError)
