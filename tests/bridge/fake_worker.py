"""A worker that breaks the protocol on purpose: ``fake_worker.py MODE``.

The tests point ``python_path`` at a small executable wrapper that runs this file, so
the host really spawns it and reads its real stdout.

Modes: ``garbage`` (text instead of a frame), ``truncated`` (a frame cut short, then
exit), ``version`` (a frame of protocol version 99), ``silent`` (writes to stderr and
exits 3), ``mute`` (never answers), ``bad-info`` (a ``ready`` frame whose model info
lacks the dimension, then waits for requests), ``garbage-later`` / ``truncated-later`` /
``wrong-shape`` / ``unknown-id`` / ``list-id`` (a proper handshake, then a bad answer to
the first request).
"""

from __future__ import annotations

import struct
import sys
import time

from akidb_embed.bridge import _protocol as proto

mode = sys.argv[1]
out = sys.stdout.buffer
stdin = sys.stdin.buffer


def send(data: bytes) -> None:
    out.write(data)
    out.flush()


hello = proto.read_frame(stdin)
if mode == "garbage":
    send(b"Loading model... done!\nready\n")
    time.sleep(30)
elif mode == "truncated":
    send(proto.PREFIX.pack(proto.MAGIC, proto.VERSION, 0, 100, 0) + b'{"op": "rea')
elif mode == "version":
    header = b'{"op":"ready","id":0}'
    send(struct.pack("<4sHHIQ", proto.MAGIC, 99, 0, len(header), 0) + header)
    time.sleep(30)
elif mode == "silent":
    sys.stderr.write("fake worker: cannot go on\n")
    sys.exit(3)
elif mode == "mute":
    time.sleep(60)
elif mode == "bad-info":
    send(proto.encode({"op": "ready", "id": 0, "info": {"provider": "fake"}}))
    proto.read_frame(stdin)  # a worker left running would wait here for ever
else:
    info = {"provider": "fake", "model": "fake", "dimension": 4}
    send(proto.encode({"op": "ready", "id": 0, "info": info, "capabilities": {}}))
    request = proto.read_frame(stdin)
    assert request is not None
    rid = request[0]["id"]
    if mode == "garbage-later":
        send(b"\x00\x01garbage garbage garbage garbage")
    elif mode == "truncated-later":
        send(proto.encode({"ok": True, "id": rid, "shape": [1, 4]}, 16) + b"\x00" * 5)
        sys.exit(0)
    elif mode == "wrong-shape":
        send(proto.encode({"ok": True, "id": rid, "shape": [1, 4]}, 8) + b"\x00" * 8)
    elif mode == "unknown-id":
        send(proto.encode({"ok": True, "id": rid + 1000, "shape": [0, 4]}))
    elif mode == "list-id":
        send(proto.encode({"ok": True, "id": [rid], "shape": [0, 4]}))
    time.sleep(30)
