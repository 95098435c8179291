"""The protobuf wire format, read without generated classes (ONNX graphs, MediaPipe task files).

Only what the SDK needs: field by field, with bounds checked so that a damaged or hostile file
raises ValueError instead of reading past its end.
"""
from __future__ import annotations

from typing import Iterator

VARINT, FIXED64, LENGTH, FIXED32 = 0, 1, 2, 5


def read_varint(buf: bytes, i: int, end: int) -> tuple[int, int]:
    """(value, next index) of the varint at buf[i:end]."""
    value, shift = 0, 0
    while True:
        if i >= end or shift > 63:
            raise ValueError("truncated varint")
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            return value, i


def fields(buf: bytes, start: int = 0, end: int | None = None) -> Iterator[tuple[int, int, int | tuple[int, int]]]:
    """(field number, wire type, value) of the message in buf[start:end]: an int for varints, the
    (start, end) span of the bytes for length-delimited and fixed-width fields."""
    end = len(buf) if end is None else end
    i = start
    while i < end:
        key, i = read_varint(buf, i, end)
        number, wire = key >> 3, key & 7
        if wire == VARINT:
            value, i = read_varint(buf, i, end)
            yield number, wire, value
            continue
        if wire == LENGTH:
            size, i = read_varint(buf, i, end)
        elif wire in (FIXED64, FIXED32):
            size = 8 if wire == FIXED64 else 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if i + size > end:
            raise ValueError("field runs past its message")
        yield number, wire, (i, i + size)
        i += size
