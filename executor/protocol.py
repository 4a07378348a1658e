"""Frames between `Sandbox` and its server: a 4-byte big-endian length, then UTF-8 JSON."""

from __future__ import annotations

import json
import os
import struct
from typing import Any

FRAME = struct.Struct(">I")


def encode(message: dict[str, Any]) -> bytes:
    data = json.dumps(message).encode()
    return FRAME.pack(len(data)) + data


def write_frame(fd: int, message: dict[str, Any]) -> None:
    view = memoryview(encode(message))
    while view:
        view = view[os.write(fd, view):]


def read_frame_blocking(fd: int) -> dict[str, Any]:
    def exactly(n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                raise EOFError("the other side closed the channel")
            buf += chunk
        return buf

    (size,) = FRAME.unpack(exactly(FRAME.size))
    return json.loads(exactly(size))
