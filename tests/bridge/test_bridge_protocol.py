"""The frame format, on in-memory streams."""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest

from akidb_embed.bridge import _protocol as proto


def frame(header: dict, payload: bytes = b"") -> io.BytesIO:
    return io.BytesIO(proto.encode(header, len(payload)) + payload)


def test_roundtrip_header_and_float32_payload() -> None:
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    header = {"id": 3, "ok": True, "shape": [3, 4], "dtype": "<f4"}
    stream = frame(header, vectors.astype("<f4").tobytes())
    got_header, payload = proto.read_frame(stream)
    assert got_header == header
    out = proto.array_from_payload(got_header, payload)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, vectors)
    assert proto.read_frame(stream) is None  # clean end of stream


def test_payload_is_raw_little_endian_not_json() -> None:
    data = proto.encode({"id": 1}, 8)
    magic, version, _, header_len, payload_len = struct.unpack_from("<4sHHIQ", data)
    assert (magic, version, payload_len) == (b"AKBF", proto.VERSION, 8)
    assert data[proto.PREFIX.size :] == b'{"id":1}' and header_len == 8


def test_any_python_str_survives() -> None:
    texts = ["plain", "", "東京 🚀", "lone surrogate \ud800 here", "nul\x00byte", "\u200b"]
    header, _ = proto.read_frame(frame({"id": 1, "texts": texts}))
    assert header["texts"] == texts


def test_garbage_is_rejected() -> None:
    with pytest.raises(proto.BadFrameError, match="not a python-bridge frame"):
        proto.read_frame(io.BytesIO(b"Loading model weights...\n" * 3))


def test_wrong_version_is_named() -> None:
    data = struct.pack("<4sHHIQ", b"AKBF", 7, 0, 2, 0) + b"{}"
    with pytest.raises(proto.VersionMismatchError, match="version 7") as info:
        proto.read_frame(io.BytesIO(data))
    assert info.value.version == 7


@pytest.mark.parametrize("cut", [5, proto.PREFIX.size + 3, proto.PREFIX.size + 10 + 4])
def test_truncated_frame(cut: int) -> None:
    data = proto.encode({"id": 123}, 16) + b"\x00" * 16
    with pytest.raises(proto.TruncatedFrameError, match="truncated frame"):
        proto.read_frame(io.BytesIO(data[:cut]))


def test_lengths_are_bounds_checked_before_allocating() -> None:
    data = struct.pack("<4sHHIQ", b"AKBF", proto.VERSION, 0, 2, 1 << 60)
    with pytest.raises(proto.BadFrameError, match="out of range"):
        proto.read_frame(io.BytesIO(data + b"{}"))


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"[1, 2]", b"{not json"])
def test_header_must_be_a_json_object(raw: bytes) -> None:
    data = struct.pack("<4sHHIQ", b"AKBF", proto.VERSION, 0, len(raw), 0) + raw
    with pytest.raises(proto.BadFrameError, match="header"):
        proto.read_frame(io.BytesIO(data))


@pytest.mark.parametrize(
    ("header", "size", "match"),
    [
        ({"shape": [2, 4]}, 31, "needs 32"),
        ({"shape": [2]}, 8, "invalid shape"),
        ({"shape": [-1, 4]}, 0, "invalid shape"),
        ({"shape": [1, 2], "dtype": "<f8"}, 16, "dtype"),
    ],
)
def test_payload_must_match_its_shape(header: dict, size: int, match: str) -> None:
    with pytest.raises(proto.BadFrameError, match=match):
        proto.array_from_payload(header, bytearray(size))
