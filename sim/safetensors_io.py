"""A minimal, strict reader and writer of the safetensors format, in pure Python and numpy.

Format (https://github.com/huggingface/safetensors): an 8-byte little-endian unsigned header
length ``N``, then ``N`` bytes of UTF-8 JSON
``{name: {"dtype": str, "shape": [int, ...], "data_offsets": [begin, end]}, ...,
"__metadata__": {str: str}}`` (metadata optional), then the byte buffer. Offsets are relative
to the start of the buffer; the tensors must cover it exactly, without overlap, gap or trailing
byte. Data are little-endian, C order.

The reader trusts nothing: every violation raises :class:`SafetensorsError` with one line
naming the problem. ``BF16`` is read as float32 (``bits << 16``, exact) and written from float32
with round-to-nearest-even. The writer's files are read by the official library (header padded
with spaces to a multiple of 8, tensors ordered by dtype then name, as the official writer does).
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

__all__ = [
    "SafetensorsError", "TensorInfo", "DTYPES", "MAX_HEADER_SIZE",
    "read_header", "load_file", "load", "save_file", "save", "write",
    "bf16_bits", "bf16_to_float32", "bf16_round",
]

#: The official reader refuses headers above 100 MB; so do we.
MAX_HEADER_SIZE = 100_000_000

#: safetensors dtype name -> numpy dtype of the bytes on disk (BF16 is stored as its bits).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype("<u2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"), "U8": np.dtype("u1"), "BOOL": np.dtype("u1"),
}

# Order of the official writer: larger dtypes (by its enum order) first, then by name.
_DTYPE_RANK = {name: rank for rank, name in enumerate(
    ("BOOL", "U8", "I8", "I16", "F16", "BF16", "I32", "F32", "F64", "I64"))}

# numpy dtype kind/size -> safetensors dtype name, for arrays written without an override.
_FROM_NUMPY = {
    ("f", 8): "F64", ("f", 4): "F32", ("f", 2): "F16",
    ("i", 8): "I64", ("i", 4): "I32", ("i", 2): "I16", ("i", 1): "I8",
    ("u", 1): "U8", ("b", 1): "BOOL",
}


class SafetensorsError(ValueError):
    """A file or buffer that is not valid safetensors (one line saying why)."""


@dataclass(frozen=True)
class TensorInfo:
    """One header entry, validated: byte range relative to the start of the data buffer."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


# --- BF16 --------------------------------------------------------------------------------------

def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), rounding to nearest, ties to even.

    The input is first converted to float32. NaN stays a (quiet) NaN of the same sign; values
    that round above the largest bfloat16 become infinity, as IEEE rounding requires.
    """
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + (np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1)))) \
        >> np.uint32(16)
    nan = np.isnan(bits.view(np.float32))
    if np.any(nan):
        rounded = np.where(nan, (bits >> np.uint32(16)) | np.uint32(0x0040), rounded)
    return rounded.astype(np.uint16)


def bf16_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> float32, exactly."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << np.uint32(16)).view(np.float32)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """``x`` as it reads back after being stored as BF16 (float32 result)."""
    return bf16_to_float32(bf16_bits(x))


# --- reading -----------------------------------------------------------------------------------

def _reject_constant(name):
    raise SafetensorsError(f"header contains the non-standard JSON constant {name}")


def _unique_object(pairs):
    obj = {}
    for key, value in pairs:
        if key in obj:
            raise SafetensorsError(f"header has duplicate key {key!r}")
        obj[key] = value
    return obj


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_header(prefix: bytes, total_size: int) -> tuple[dict[str, TensorInfo], dict[str, str],
                                                            int]:
    """Validate the first ``8 + N`` bytes of a file of ``total_size`` bytes.

    Returns (tensor infos, metadata, offset of the data buffer)."""
    if total_size < 8:
        raise SafetensorsError(f"file is {total_size} bytes long, too short to be safetensors "
                               f"(the header length alone takes 8)")
    (header_len,) = struct.unpack("<Q", prefix[:8])
    if header_len > MAX_HEADER_SIZE:
        raise SafetensorsError(f"header length {header_len} is absurd "
                               f"(limit {MAX_HEADER_SIZE}); not a safetensors file?")
    if 8 + header_len > total_size:
        raise SafetensorsError(f"header length {header_len} runs past the end of the "
                               f"{total_size}-byte file (truncated, or not safetensors)")
    raw = prefix[8:8 + header_len]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise SafetensorsError(f"header is not valid UTF-8 (byte {error.start})") from None
    if not text.startswith("{"):
        raise SafetensorsError("header does not start with '{'; not a safetensors file")
    try:
        header = json.loads(text, object_pairs_hook=_unique_object,
                            parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise SafetensorsError(f"header is not valid JSON: {error.msg} at character "
                               f"{error.pos}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("header is not a JSON object")

    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict):
        raise SafetensorsError("__metadata__ is not a JSON object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise SafetensorsError(f"__metadata__ value of {key!r} is a "
                                   f"{type(value).__name__}, not a string")

    buffer_size = total_size - 8 - header_len
    infos = {}
    for name, entry in header.items():
        if not isinstance(entry, dict):
            raise SafetensorsError(f"tensor {name!r}: entry is not a JSON object")
        for field in ("dtype", "shape", "data_offsets"):
            if field not in entry:
                raise SafetensorsError(f"tensor {name!r}: entry lacks {field!r}")
        extra = sorted(set(entry) - {"dtype", "shape", "data_offsets"})
        if extra:
            raise SafetensorsError(f"tensor {name!r}: unknown field {extra[0]!r}")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if not isinstance(dtype, str):
            raise SafetensorsError(f"tensor {name!r}: dtype is not a string")
        if dtype not in DTYPES:
            raise SafetensorsError(f"tensor {name!r}: unsupported dtype {dtype!r} "
                                   f"(supported: {', '.join(DTYPES)})")
        if not (isinstance(shape, list) and all(_is_int(s) and s >= 0 for s in shape)):
            raise SafetensorsError(f"tensor {name!r}: shape {shape!r} is not a list of "
                                   f"non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(_is_int(o) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise SafetensorsError(f"tensor {name!r}: data_offsets {offsets!r} is not "
                                   f"[begin, end] with 0 <= begin <= end")
        nbytes = DTYPES[dtype].itemsize
        for s in shape:
            nbytes *= s
        begin, end = offsets
        if end - begin != nbytes:
            raise SafetensorsError(f"tensor {name!r}: data_offsets [{begin}, {end}] span "
                                   f"{end - begin} bytes, but {dtype} {shape} needs {nbytes}")
        if end > buffer_size:
            raise SafetensorsError(f"tensor {name!r}: data_offsets [{begin}, {end}] run past "
                                   f"the {buffer_size}-byte data buffer (file truncated?)")
        infos[name] = TensorInfo(dtype, tuple(shape), begin, end)

    position, previous = 0, None
    for name, info in sorted(infos.items(), key=lambda item: (item[1].begin, item[1].end)):
        if info.begin < position:
            raise SafetensorsError(f"tensors {previous!r} and {name!r} overlap "
                                   f"(bytes {info.begin}..{position - 1})")
        if info.begin > position:
            raise SafetensorsError(f"data buffer has a hole of {info.begin - position} bytes "
                                   f"at offset {position}, before tensor {name!r}")
        position, previous = info.end, name
    if position != buffer_size:
        raise SafetensorsError(f"{buffer_size - position} trailing bytes after the last tensor "
                               f"(data buffer is {buffer_size} bytes, tensors cover {position})")
    return infos, metadata, 8 + header_len


def _prefix(buffer, size: int) -> bytes:
    """The bytes the header parser needs: the length field and at most the header itself."""
    if size < 8:
        return bytes(buffer[:size])
    (header_len,) = struct.unpack("<Q", buffer[:8])
    return bytes(buffer[:8 + min(header_len, MAX_HEADER_SIZE)])


def _tensor(buffer, base: int, name: str, info: TensorInfo) -> np.ndarray:
    raw = np.frombuffer(buffer, dtype=DTYPES[info.dtype], count=(info.end - info.begin)
                        // DTYPES[info.dtype].itemsize, offset=base + info.begin)
    if info.dtype == "BF16":
        array = bf16_to_float32(raw)
    else:
        array = raw.astype(raw.dtype.newbyteorder("="))   # a native-order copy
    del raw                                               # no view of the mapping survives
    if info.dtype == "BOOL":
        if np.any(array > 1):
            raise SafetensorsError(f"tensor {name!r}: BOOL data holds a byte other than 0 or 1")
        array = array.view(np.bool_)
    return array.reshape(info.shape)


def load(data: bytes) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Parse a whole safetensors file held in memory. Returns (tensors, metadata)."""
    data = bytes(data)
    infos, metadata, base = _parse_header(_prefix(data, len(data)), len(data))
    return {name: _tensor(data, base, name, info) for name, info in infos.items()}, metadata


def _open_mapped(path):
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        if size == 0:
            return b"", 0
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ), size


def read_header(path: str | os.PathLike) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Validate the header of a file (against the file's size) without reading the tensors."""
    with open(path, "rb") as file:
        size = os.fstat(file.fileno()).st_size
        prefix = file.read(8)
        if len(prefix) == 8:
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len <= MAX_HEADER_SIZE:
                prefix += file.read(header_len)
    infos, metadata, _ = _parse_header(prefix, size)
    return infos, metadata


def load_file(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a safetensors file (memory-mapped; the arrays returned are independent copies)."""
    buffer, size = _open_mapped(path)
    try:
        infos, metadata, base = _parse_header(_prefix(buffer, size), size)
        tensors = {name: _tensor(buffer, base, name, info) for name, info in infos.items()}
    finally:
        if isinstance(buffer, mmap.mmap):
            try:
                buffer.close()
            except BufferError:     # a view still alive in a traceback; the GC unmaps it
                pass
    return tensors, metadata


# --- writing -----------------------------------------------------------------------------------

def _prepare(tensors: dict[str, np.ndarray], dtypes: dict[str, str] | None):
    dtypes = dict(dtypes or {})
    unknown = sorted(set(dtypes) - set(tensors))
    if unknown:
        raise ValueError(f"dtype override for {unknown[0]!r}, which is not among the tensors")
    entries = []
    for name, value in tensors.items():
        if not isinstance(name, str):
            raise TypeError(f"tensor names must be strings, not {name!r}")
        if name == "__metadata__":
            raise ValueError("'__metadata__' is reserved and cannot name a tensor")
        array = np.asarray(value)
        dtype = dtypes.get(name)
        if dtype is None:
            dtype = _FROM_NUMPY.get((array.dtype.kind, array.dtype.itemsize))
            if dtype is None:
                raise ValueError(f"tensor {name!r}: numpy dtype {array.dtype} has no "
                                 f"safetensors equivalent here")
        elif dtype not in DTYPES:
            raise ValueError(f"tensor {name!r}: unsupported dtype {dtype!r} "
                             f"(supported: {', '.join(DTYPES)})")
        if dtype == "BF16":
            if array.dtype.kind != "f":
                raise ValueError(f"tensor {name!r}: BF16 needs a float array, not {array.dtype}")
            data = bf16_bits(array)
        else:
            data = array.astype(DTYPES[dtype], copy=False)
        entries.append((name, dtype, array.shape, np.ascontiguousarray(data)))
    entries.sort(key=lambda e: (-_DTYPE_RANK[e[1]], e[0]))
    return entries


def _header_bytes(entries, metadata: dict[str, str] | None) -> bytes:
    header = {}
    if metadata:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise TypeError(f"metadata must map strings to strings, not {key!r}: "
                                f"{type(value).__name__}")
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape, data in entries:
        header[name] = {"dtype": dtype, "shape": [int(s) for s in shape],
                        "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def write(file: BinaryIO, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
          *, dtypes: dict[str, str] | None = None) -> int:
    """Write ``tensors`` to an open binary file; returns the number of bytes written.

    Each array is stored with the safetensors dtype matching its numpy dtype, or with
    ``dtypes[name]`` (e.g. ``"BF16"`` for a float array) when given.
    """
    entries = _prepare(tensors, dtypes)
    head = _header_bytes(entries, metadata)
    file.write(head)
    total = len(head)
    for _, _, _, data in entries:
        file.write(memoryview(data.reshape(-1)).cast("B"))
        total += data.nbytes
    return total


def save(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
         *, dtypes: dict[str, str] | None = None) -> bytes:
    """The bytes of a safetensors file holding ``tensors``."""
    entries = _prepare(tensors, dtypes)
    return _header_bytes(entries, metadata) + b"".join(data.tobytes() for *_, data in entries)


def save_file(tensors: dict[str, np.ndarray], path: str | os.PathLike,
              metadata: dict[str, str] | None = None, *,
              dtypes: dict[str, str] | None = None) -> None:
    """Write a safetensors file (overwriting ``path``; callers wanting atomicity write a
    temporary file and rename it, as :mod:`.modelfile` does)."""
    with open(Path(path), "wb") as file:
        write(file, tensors, metadata, dtypes=dtypes)
