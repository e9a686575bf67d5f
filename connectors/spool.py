"""A bounded, append-only local spool for raw records the broker cannot take right now.

Records are appended as ``[u32 length][msgpack (headers, value)]``; reading advances a
position; when everything was read back the file is truncated. Order is preserved, and a
spool left behind by a crashed connector is drained first by the next one (same path).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import msgspec

_LEN = struct.Struct("<I")
_ENC = msgspec.msgpack.Encoder()
_DEC = msgspec.msgpack.Decoder(tuple[list[tuple[str, bytes | None]], bytes])

Headers = list[tuple[str, bytes | None]]


class SpoolFull(Exception):
    """The spool reached its size bound; the record was not kept."""


class Spool:
    def __init__(self, path: Path, max_bytes: int = 1 << 30) -> None:
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f = path.open("a+b")
        self._read_pos = 0
        self.records = self._count_existing()

    def _count_existing(self) -> int:
        n, pos = 0, 0
        self._f.seek(0)
        data = self._f.read()
        while pos + 4 <= len(data):
            (size,) = _LEN.unpack_from(data, pos)
            if pos + 4 + size > len(data):
                break  # a torn last write (crash mid-append): ignore the partial record
            pos += 4 + size
            n += 1
        self._f.truncate(pos)
        return n

    @property
    def size(self) -> int:
        return os.fstat(self._f.fileno()).st_size

    def __len__(self) -> int:
        return self.records

    def append(self, headers: Headers, value: bytes) -> None:
        body = _ENC.encode((headers, value))
        if self.size + 4 + len(body) > self.max_bytes:
            raise SpoolFull(f"spool {self.path} is full ({self.max_bytes} bytes)")
        self._f.seek(0, os.SEEK_END)
        self._f.write(_LEN.pack(len(body)) + body)
        self._f.flush()
        self.records += 1

    def peek(self) -> tuple[Headers, bytes] | None:
        """The oldest record not yet consumed, or None."""
        if not self.records:
            return None
        self._f.seek(self._read_pos)
        (size,) = _LEN.unpack(self._f.read(4))
        headers, value = _DEC.decode(self._f.read(size))
        return list(headers), value

    def pop(self) -> None:
        """Consume the record ``peek`` returned."""
        self._f.seek(self._read_pos)
        (size,) = _LEN.unpack(self._f.read(4))
        self._read_pos += 4 + size
        self.records -= 1
        if not self.records:
            self._f.truncate(0)
            self._read_pos = 0

    def close(self) -> None:
        self._f.close()
