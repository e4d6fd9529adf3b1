"""The python-bridge wire format: length-prefixed frames over a pipe.

Every message, in both directions, is one frame::

    offset  size  field
    0       4     magic b"AKBF"
    4       2     protocol version (unsigned, little-endian)
    6       2     reserved, 0
    8       4     header length H (unsigned, little-endian)
    12      8     payload length P (unsigned, little-endian)
    20      H     header: a UTF-8 JSON object (op, id, texts, shape, usage, error ...)
    20+H    P     payload: raw bytes; vectors travel as little-endian float32, C order

Vectors are never JSON-encoded. Texts travel in the header with JSON's ``\\uXXXX``
escapes, so any Python ``str`` (lone surrogates included) arrives unchanged. Every
frame carries the version, so a peer of another version is recognised on its first
frame. Lengths are bounds-checked before anything is allocated.
"""

from __future__ import annotations

import json
import struct
from typing import Any, BinaryIO

import numpy as np

__all__ = [
    "MAGIC",
    "MAX_HEADER",
    "MAX_PAYLOAD",
    "PREFIX",
    "VERSION",
    "BadFrameError",
    "FrameError",
    "TruncatedFrameError",
    "VersionMismatchError",
    "array_from_payload",
    "encode",
    "read_frame",
]

MAGIC = b"AKBF"
VERSION = 1
PREFIX = struct.Struct("<4sHHIQ")
MAX_HEADER = 1 << 30
MAX_PAYLOAD = 1 << 38
FLOAT32 = "<f4"


class FrameError(Exception):
    """Bytes on the pipe are not a valid frame (the caller adds who sent them)."""


class BadFrameError(FrameError):
    """Wrong magic, an out-of-range length or a header that is not a JSON object."""


class TruncatedFrameError(FrameError):
    """The stream ended in the middle of a frame."""

    def __init__(self, part: str, expected: int, got: int) -> None:
        self.part = part
        self.expected = expected
        self.got = got
        super().__init__(
            f"truncated frame: the stream ended after {got} of the {expected} bytes of the "
            f"frame {part}"
        )


class VersionMismatchError(FrameError):
    """The peer speaks another protocol version."""

    def __init__(self, version: int) -> None:
        self.version = version
        super().__init__(
            f"peer speaks python-bridge protocol version {version}, this side speaks "
            f"version {VERSION}"
        )


def encode(header: dict[str, Any], payload_size: int = 0) -> bytes:
    """Prefix and header of a frame; the *payload_size* payload bytes follow it."""
    data = json.dumps(header, separators=(",", ":")).encode("ascii")
    return PREFIX.pack(MAGIC, VERSION, 0, len(data), payload_size) + data


def _read_exact(stream: BinaryIO, size: int, part: str) -> bytearray | None:
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = stream.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            if got == 0 and part == "prefix":
                return None
            raise TruncatedFrameError(part, size, got)
        got += n
    return buf


def read_frame(stream: BinaryIO) -> tuple[dict[str, Any], bytearray] | None:
    """Read one frame; return ``(header, payload)``, or ``None`` at a clean end of stream.

    Raises
    ------
    BadFrameError, TruncatedFrameError, VersionMismatchError
        The bytes are not a frame of this protocol version.
    """
    prefix = _read_exact(stream, PREFIX.size, "prefix")
    if prefix is None:
        return None
    magic, version, _reserved, header_len, payload_len = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise BadFrameError(f"not a python-bridge frame: it starts with {bytes(prefix)!r}")
    if version != VERSION:
        raise VersionMismatchError(version)
    if header_len > MAX_HEADER or payload_len > MAX_PAYLOAD:
        raise BadFrameError(
            f"frame lengths out of range (header {header_len} bytes, payload {payload_len})"
        )
    raw = _read_exact(stream, header_len, "header")
    assert raw is not None
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadFrameError(f"frame header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise BadFrameError(f"frame header is a JSON {type(header).__name__}, not an object")
    payload = _read_exact(stream, payload_len, "payload") if payload_len else bytearray()
    assert payload is not None
    return header, payload


def array_from_payload(header: dict[str, Any], payload: bytearray) -> np.ndarray:
    """The float32 matrix a response carries, checked against its declared shape."""
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 2
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape)
    ):
        raise BadFrameError(f"response has an invalid shape {shape!r}")
    if header.get("dtype", FLOAT32) != FLOAT32:
        raise BadFrameError(f"response has dtype {header.get('dtype')!r}, expected {FLOAT32!r}")
    expected = shape[0] * shape[1] * 4
    if len(payload) != expected:
        raise BadFrameError(
            f"response payload has {len(payload)} bytes, but shape {tuple(shape)} of float32 "
            f"needs {expected}"
        )
    return np.frombuffer(payload, dtype=FLOAT32).reshape(shape[0], shape[1])
