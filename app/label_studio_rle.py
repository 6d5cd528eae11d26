"""Masks in Label Studio's brush format: `{"format": "rle", "rle": [bytes as ints]}`.

Label Studio stores a brush region as an RGBA image of the task's size, flattened to
values v[0 .. 4*H*W) (pixel-major: R, G, B, A of pixel 0, then of pixel 1, ...), and the
mask is its alpha channel. That array is packed with thi.ng's rle-pack, a bit stream
(most significant bit first) that Label Studio's front end decodes:

  header  32 bits  number of values n
           5 bits  word size w - 1                (w = 8: one byte per value)
          4 x 4 bits  run-length field sizes s0..s3 - 1   (here 3, 4, 8, 16)
  chunks  1 bit    1 = a run of one repeated value, 0 = literal values
          2 bits   k: which field size follows
          s_k bits length - 1
          then one w-bit value (a run) or `length` w-bit values (literals)
  the stream is padded with zero bits to whole bytes.

We write every run as a repeated-value chunk, taking the smallest field that holds its
length and splitting runs longer than 2^16 values; a decoder needs nothing more.
Mask pixels are 255 in all four channels (opaque white), others 0.
"""
from __future__ import annotations

import numpy as np

WORD_BITS = 8
FIELD_BITS = (3, 4, 8, 16)
LONGEST_RUN = 1 << FIELD_BITS[-1]


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(lengths, values) of the runs of equal neighbours in a 1-D array."""
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [values.size]))
    return ends - starts, values[starts]


def encode_brush_rle(mask: np.ndarray) -> list[int]:
    """bool / 0-1 mask [H, W] -> Label Studio's brush `rle` (a list of byte values)."""
    if mask.ndim != 2 or mask.size == 0:
        raise ValueError(f"a brush mask must be a non-empty 2-D array, got shape {mask.shape}")
    values = np.repeat(np.where(mask.reshape(-1) > 0, 255, 0).astype(np.uint8), 4)
    bits = [f"{values.size:032b}", f"{WORD_BITS - 1:05b}", *(f"{size - 1:04b}" for size in FIELD_BITS)]
    for length, value in zip(*_runs(values)):
        length, value = int(length), int(value)
        while length > 0:
            piece = min(length, LONGEST_RUN)
            index = next(i for i, size in enumerate(FIELD_BITS) if piece - 1 < (1 << size))
            bits.append(f"1{index:02b}{piece - 1:0{FIELD_BITS[index]}b}{value:0{WORD_BITS}b}")
            length -= piece
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return list(int(stream, 2).to_bytes(len(stream) // 8, "big"))
