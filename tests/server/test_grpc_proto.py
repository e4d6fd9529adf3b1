"""The committed gRPC stubs are exactly what grpcio-tools makes of ``embed.proto``.

``akidb_embed_server/proto/embed_pb2.py``, ``embed_pb2.pyi`` and ``embed_pb2_grpc.py`` are
generated code, committed so that users need no grpcio-tools. Edit ``embed.proto``, then
regenerate them from the repository root with the pinned grpcio-tools (the ``test`` extra)::

    python -m grpc_tools.protoc -I src --python_out=src --pyi_out=src --grpc_python_out=src \\
        src/akidb_embed_server/proto/embed.proto
"""

from __future__ import annotations

import importlib.metadata
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROTO = "akidb_embed_server/proto/embed.proto"
GENERATED = ("embed_pb2.py", "embed_pb2.pyi", "embed_pb2_grpc.py")


def test_regenerating_the_stubs_gives_the_committed_files(tmp_path: Path) -> None:
    committed = REPO / "src" / "akidb_embed_server" / "proto"
    made_by = re.search(
        r"GRPC_GENERATED_VERSION = '([^']+)'", (committed / "embed_pb2_grpc.py").read_text()
    )
    assert made_by is not None
    tools = importlib.metadata.version("grpcio-tools")
    if tools != made_by.group(1):
        pytest.fail(
            f"grpcio-tools {tools} is installed; the stubs were made with {made_by.group(1)}: "
            "install the pinned version (pip install -e '.[test]') or regenerate and commit"
        )
    result = subprocess.run(
        [
            sys.executable, "-m", "grpc_tools.protoc", "-I", "src",
            f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
            f"src/{PROTO}",
        ],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in GENERATED:
        fresh = (tmp_path / "akidb_embed_server" / "proto" / name).read_text()
        assert fresh == (committed / name).read_text(), (
            f"{name} differs from what grpcio-tools {tools} makes of {PROTO}: regenerate it "
            "(see this module's docstring) and commit the result"
        )


def test_the_proto_declares_the_documented_api() -> None:
    from akidb_embed_server.proto import embed_pb2

    service = embed_pb2.DESCRIPTOR.services_by_name["Embedder"]
    assert service.full_name == "akidb.embed.v1.Embedder"
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {"Embed": (False, False), "EmbedStream": (True, True), "Info": (False, False)}
    values = embed_pb2.Embedding.DESCRIPTOR.fields_by_name["values"]
    assert values.is_packed and values.type == values.TYPE_FLOAT
    # On the wire: one length-delimited field of little-endian float32s.
    wire = embed_pb2.Embedding(values=[1.0, -2.5]).SerializeToString()
    assert wire == b"\x0a\x08" + struct.pack("<2f", 1.0, -2.5)
