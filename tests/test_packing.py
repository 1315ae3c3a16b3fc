"""Ternary weight packing (sim/packing.py): round trips, the pinned bit layout, validation."""

import time

import numpy as np
import pytest

from mmfree.sim.packing import PACKINGS, pack_ternary, packed_row_bytes, unpack_ternary

SHAPES = [(1, 1), (3, 4), (3, 5), (2, 7), (5, 13), (4, 20), (7, 33), (1, 0), (0, 6), (16, 101)]


@pytest.mark.parametrize("packing", PACKINGS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"{r}x{n}" for r, n in SHAPES])
def test_round_trip(packing, shape):
    rng = np.random.default_rng(sum(shape))
    t = rng.integers(-1, 2, shape).astype(np.int8)
    packed = pack_ternary(t, packing)
    assert packed.dtype == np.uint8
    assert packed.shape == (shape[0], packed_row_bytes(shape[1], packing)), (packing, shape)
    back = unpack_ternary(packed, shape[1], packing)
    assert back.dtype == np.int8 and back.shape == shape
    np.testing.assert_array_equal(back, t, err_msg=f"packing={packing} shape={shape}")


@pytest.mark.parametrize("packing", PACKINGS)
def test_extremes_round_trip(packing):
    for value in (-1, 0, 1):
        t = np.full((3, 11), value, dtype=np.int8)
        np.testing.assert_array_equal(unpack_ternary(pack_ternary(t, packing), 11, packing), t)


def test_packed_sizes():
    for n in range(0, 30):
        assert packed_row_bytes(n, "2bit") == -(-n // 4)
        assert packed_row_bytes(n, "1.6bit") == -(-n // 5)
    assert packed_row_bytes(1024, "1.6bit") == 205
    assert packed_row_bytes(6912, "2bit") == 1728


def test_2bit_layout_pinned():
    # j=0 -> bits 1..0, j=1 -> bits 3..2, ...; +1 = 01, -1 = 11, 0 = 00.
    t = np.array([[1, -1, 0, 1, -1, -1]], dtype=np.int8)
    packed = pack_ternary(t, "2bit")
    assert packed.tolist() == [[0b01_00_11_01, 0b00_00_11_11]]   # 0x4D, 0x0F
    assert unpack_ternary(np.array([[0x4D]], np.uint8), 4, "2bit").tolist() == [[1, -1, 0, 1]]


def test_1p6bit_layout_pinned():
    # byte = sum (t_k + 1) * 3**k, first weight least significant.
    t = np.array([[1, -1, 0, 1, -1, 0, 1]], dtype=np.int8)
    packed = pack_ternary(t, "1.6bit")
    assert packed.tolist() == [[2 + 0 * 3 + 1 * 9 + 2 * 27 + 0 * 81, 1 + 2 * 3 + 9 + 27 + 81]]
    assert packed.tolist() == [[65, 124]]
    assert pack_ternary(np.zeros((1, 5), np.int8), "1.6bit").tolist() == [[121]]
    assert pack_ternary(np.ones((1, 5), np.int8), "1.6bit").tolist() == [[242]]
    assert pack_ternary(-np.ones((1, 5), np.int8), "1.6bit").tolist() == [[0]]


def test_2bit_every_byte():
    # All 256 bytes: exactly those without a 0b10 code decode, to the two's-complement codes.
    for value in range(256):
        codes = [(value >> (2 * k)) & 3 for k in range(4)]
        packed = np.array([[value]], np.uint8)
        if 2 in codes:
            with pytest.raises(ValueError, match=r"invalid 2-bit code 0b10 at row 0, column"):
                unpack_ternary(packed, 4, "2bit")
        else:
            expected = [{0: 0, 1: 1, 3: -1}[c] for c in codes]
            assert unpack_ternary(packed, 4, "2bit").tolist() == [expected], value


def test_1p6bit_every_byte():
    for value in range(256):
        packed = np.array([[value]], np.uint8)
        if value > 242:
            with pytest.raises(ValueError, match=rf"invalid 1.6-bit byte {value} \(> 242\) "
                                                 r"at row 0, byte 0"):
                unpack_ternary(packed, 5, "1.6bit")
        else:
            expected = [(value // 3**k) % 3 - 1 for k in range(5)]
            assert unpack_ternary(packed, 5, "1.6bit").tolist() == [expected], value


def test_invalid_code_location():
    packed = pack_ternary(np.zeros((4, 12), np.int8), "2bit")
    packed[2, 1] = 0b00_10_00_00           # weight 2 of byte 1 -> column 6
    with pytest.raises(ValueError, match=r"invalid 2-bit code 0b10 at row 2, column 6 "):
        unpack_ternary(packed, 12, "2bit")
    packed = pack_ternary(np.zeros((4, 12), np.int8), "1.6bit")
    packed[3, 2] = 250
    with pytest.raises(ValueError, match=r"byte 250 \(> 242\) at row 3, byte 2 "
                                         r"\(columns 10..14\)"):
        unpack_ternary(packed, 12, "1.6bit")


def test_nonzero_padding_rejected():
    packed = pack_ternary(np.zeros((2, 6), np.int8), "2bit")
    packed[1, 1] |= 0b01 << 6              # column 7, beyond n = 6
    with pytest.raises(ValueError, match=r"non-zero padding weight 1 at row 1, column 7 "
                                         r"\(row length 6\)"):
        unpack_ternary(packed, 6, "2bit")
    packed = pack_ternary(np.zeros((2, 6), np.int8), "1.6bit")
    packed[0, 1] = 1 + 0 * 3 + 9 + 27 + 81   # column 6 = -1, beyond n = 6
    with pytest.raises(ValueError, match=r"non-zero padding weight -1 at row 0, column 6"):
        unpack_ternary(packed, 6, "1.6bit")


def test_wrong_width_rejected():
    packed = np.zeros((2, 3), np.uint8)
    with pytest.raises(ValueError, match=r"packed matrix is 3 bytes wide, but 13 weights in "
                                         r"2bit packing take 4"):
        unpack_ternary(packed, 13, "2bit")
    with pytest.raises(ValueError, match=r"but 16 weights in 1.6bit packing take 4"):
        unpack_ternary(packed, 16, "1.6bit")


def test_bad_arguments_rejected():
    with pytest.raises(ValueError, match=r"ternary matrix holds 2 at row 1, column 0"):
        pack_ternary(np.array([[0, 1], [2, 0]], np.int8), "2bit")
    with pytest.raises(ValueError, match=r"ternary matrix must be 2-D, not 1-D"):
        pack_ternary(np.zeros(4, np.int8), "2bit")
    with pytest.raises(ValueError, match=r"integer dtype, not float64"):
        pack_ternary(np.zeros((1, 4)), "2bit")
    with pytest.raises(ValueError, match=r"packing must be one of 2bit, 1.6bit, not '3bit'"):
        pack_ternary(np.zeros((1, 4), np.int8), "3bit")
    with pytest.raises(ValueError, match=r"packed matrix must be uint8, not int8"):
        unpack_ternary(np.zeros((1, 1), np.int8), 4, "2bit")
    with pytest.raises(ValueError, match=r"row length must be a non-negative integer"):
        packed_row_bytes(-1, "2bit")


@pytest.mark.parametrize("packing", PACKINGS)
def test_million_weights_fast(packing):
    t = np.random.default_rng(0).integers(-1, 2, (1024, 1024)).astype(np.int8)
    start = time.perf_counter()
    back = unpack_ternary(pack_ternary(t, packing), 1024, packing)
    elapsed = time.perf_counter() - start
    np.testing.assert_array_equal(back, t)
    assert elapsed < 0.5, f"{packing}: 1M weights took {elapsed:.3f} s to pack and unpack"
