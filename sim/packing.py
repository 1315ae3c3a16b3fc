"""Ternary weight packing: the one definition, shared by the golden model, the model file, the
hardware loaders and the tests. docs/formats.md describes the bit layout with worked examples.

Two packings of a ternary matrix ``T`` ([rows, n], values -1/0/+1), row by row, each row padded
to whole bytes on its own:

``"2bit"``
    4 weights per byte. Weight ``j`` of a row sits in bits ``[2*(j%4)+1 : 2*(j%4)]`` of byte
    ``j // 4`` of that row (first weight in the least significant bits). Codes are 2-bit two's
    complement: ``0b00`` = 0, ``0b01`` = +1, ``0b11`` = -1; ``0b10`` is invalid. Padding codes
    are ``0b00``. Packed width ``ceil(n / 4)``.
``"1.6bit"``
    5 weights per byte, base 3: ``byte = sum_k (t[5b+k] + 1) * 3**k`` for k = 0..4 (the first
    weight is the least significant digit), so bytes are 0..242; 243..255 are invalid. Padding
    weights are 0 (digit 1). Packed width ``ceil(n / 5)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["PACKINGS", "WEIGHTS_PER_BYTE", "packed_row_bytes", "pack_ternary", "unpack_ternary",
           "chip_bytes", "chip_byte_weights"]

PACKINGS = ("2bit", "1.6bit")
WEIGHTS_PER_BYTE = {"2bit": 4, "1.6bit": 5}

_POW3 = np.array([1, 3, 9, 27, 81], dtype=np.uint8)


def _build_tables():
    # byte -> the 4 (or 5) weights it holds, and whether the byte is valid.
    codes = (np.arange(256, dtype=np.uint8)[:, None] >> np.array([0, 2, 4, 6], np.uint8)) & 3
    two_bit = np.array([0, 1, 0, -1], dtype=np.int8)[codes]
    two_bit_valid = ~np.any(codes == 2, axis=1)
    digits = (np.arange(256)[:, None] // np.array([1, 3, 9, 27, 81])) % 3
    base3 = (digits - 1).astype(np.int8)
    base3_valid = np.arange(256) <= 242
    return {"2bit": (two_bit, two_bit_valid), "1.6bit": (base3, base3_valid)}


_TABLES = _build_tables()


def _check_packing(packing: str) -> int:
    if packing not in WEIGHTS_PER_BYTE:
        raise ValueError(f"packing must be one of {', '.join(PACKINGS)}, not {packing!r}")
    return WEIGHTS_PER_BYTE[packing]


def packed_row_bytes(n: int, packing: str) -> int:
    """Bytes one packed row of ``n`` weights takes."""
    per_byte = _check_packing(packing)
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"row length must be a non-negative integer, not {n!r}")
    return -(-int(n) // per_byte)


def pack_ternary(T: np.ndarray, packing: str) -> np.ndarray:
    """Pack a ternary matrix [rows, n] into uint8 [rows, packed_row_bytes(n)]."""
    per_byte = _check_packing(packing)
    T = np.asarray(T)
    if T.ndim != 2:
        raise ValueError(f"ternary matrix must be 2-D, not {T.ndim}-D")
    if T.dtype.kind not in "iu":
        raise ValueError(f"ternary matrix must have an integer dtype, not {T.dtype}")
    rows, n = T.shape
    bad = (T < -1) | (T > 1)
    if np.any(bad):
        r, c = np.argwhere(bad)[0]
        raise ValueError(f"ternary matrix holds {T[r, c]} at row {r}, column {c}")
    width = packed_row_bytes(n, packing)
    t = np.zeros((rows, width * per_byte), dtype=np.int8)
    t[:, :n] = T
    t = t.reshape(rows, width, per_byte)
    if packing == "2bit":
        codes = t.view(np.uint8) & np.uint8(3)            # -1 -> 0b11, +1 -> 0b01, 0 -> 0b00
        return (codes[..., 0] | (codes[..., 1] << 2) | (codes[..., 2] << 4)
                | (codes[..., 3] << 6)).astype(np.uint8)
    digits = (t + 1).view(np.uint8)
    return (digits * _POW3).sum(axis=2, dtype=np.uint8)    # <= 242: never wraps


def unpack_ternary(packed: np.ndarray, n: int, packing: str) -> np.ndarray:
    """Unpack uint8 [rows, packed_row_bytes(n)] into int8 [rows, n], validating every byte:
    invalid codes, the packed width, and that padding weights are zero."""
    per_byte = _check_packing(packing)
    width = packed_row_bytes(n, packing)
    packed = np.asarray(packed)
    if packed.ndim != 2:
        raise ValueError(f"packed matrix must be 2-D, not {packed.ndim}-D")
    if packed.dtype != np.uint8:
        raise ValueError(f"packed matrix must be uint8, not {packed.dtype}")
    if packed.shape[1] != width:
        raise ValueError(f"packed matrix is {packed.shape[1]} bytes wide, but {n} weights in "
                         f"{packing} packing take {width}")
    table, valid = _TABLES[packing]
    ok = valid[packed]
    if not np.all(ok):
        r, b = np.argwhere(~ok)[0]
        value = int(packed[r, b])
        if packing == "2bit":
            k = next(k for k in range(4) if (value >> 2 * k) & 3 == 2)
            raise ValueError(f"invalid 2-bit code 0b10 at row {r}, column {4 * b + k} "
                             f"(byte {b} = 0x{value:02x})")
        raise ValueError(f"invalid 1.6-bit byte {value} (> 242) at row {r}, byte {b} "
                         f"(columns {5 * b}..{5 * b + 4})")
    t = table[packed].reshape(packed.shape[0], width * per_byte)
    if width * per_byte > n:
        pad = t[:, n:]
        if np.any(pad):
            r, c = np.argwhere(pad)[0]
            raise ValueError(f"non-zero padding weight {pad[r, c]} at row {r}, column "
                             f"{n + c} (row length {n})")
        t = t[:, :n]
    return np.ascontiguousarray(t)


# The engine's weight memory holds 1.6-bit bytes in a code that its lanes decode with adders
# instead of a 256-entry table (docs/formats.md, "On chip"): the five base-3 digits read most
# significant first, v = sum_k d_k 3**(4 - k), scaled to c = ceil(256 v / 243). Digit k is then
# the top two bits of 3 y_k (10 bits), y_0 = c, y_{k+1} = 3 y_k mod 256.
_CHIP_1P6 = np.array([(sum(int(d) * 3 ** (4 - k) for k, d in
                           enumerate((b // _POW3.astype(int)) % 3)) * 256 + 242) // 243
                      for b in range(243)], dtype=np.uint8)


def chip_bytes(packed: np.ndarray, packing: str) -> np.ndarray:
    """The bytes of ``packed`` (from :func:`pack_ternary`) as the engine's weight memory holds
    them: unchanged for ``"2bit"``; for ``"1.6bit"`` each byte in the on-chip code that
    :class:`~mmfree.hw.unpack.TernaryDecoder` reads (see :func:`chip_byte_weights`), a
    bijection of the 243 valid bytes. Raises ``ValueError`` on an invalid 1.6-bit byte."""
    _check_packing(packing)
    packed = np.asarray(packed, dtype=np.uint8)
    if packing == "2bit":
        return packed.copy()
    if np.any(packed > 242):
        value = int(packed[packed > 242].flat[0])
        raise ValueError(f"invalid 1.6-bit byte {value} (> 242)")
    return _CHIP_1P6[packed]


def chip_byte_weights(code: int, packing: str) -> list[int]:
    """The weights the engine decodes from one on-chip byte ``code`` (0..255), first weight
    first: ``"2bit"`` as :func:`unpack_ternary` (an invalid ``0b10`` field as 0); ``"1.6bit"``
    digit ``k`` is bits 9..8 of ``z_k = 3 y_k`` with ``y_0 = code``, ``y_{k+1} = z_k mod 256``,
    weight ``digit - 1`` (the 13 codes that :func:`chip_bytes` never makes decode by the same
    rule)."""
    per_byte = _check_packing(packing)
    if packing == "2bit":
        return [{0: 0, 1: 1, 2: 0, 3: -1}[(code >> 2 * k) & 3] for k in range(per_byte)]
    weights, y = [], code
    for _ in range(per_byte):
        z = 3 * y
        weights.append((z >> 8) - 1)
        y = z & 255
    return weights
