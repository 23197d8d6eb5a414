"""A salvage bundle's file I/O: private, fsynced files of JSON and JSON lines, BLOBs as base64.

Salvage writes its bundle with these (one JSON-lines file per table, summary.json, and a service's own
bundle file); replay and a service profile's bundle module read it back with them.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Self

__all__ = ["SyncedFile", "create_private", "decode", "encode", "read_jsonl", "write_json_file"]


def encode(value: object) -> object:
    """json.dumps' `default`: a BLOB (bytes) becomes {"$base64": ...}; anything else is refused."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"$base64": base64.b64encode(bytes(value)).decode("ascii")}
    raise TypeError(f"cannot store {type(value).__name__} in a salvage bundle")


def decode(obj: dict[str, Any]) -> Any:
    """json.loads' `object_hook`: {"$base64": ...} becomes bytes again; other objects are kept."""
    if len(obj) == 1 and "$base64" in obj:
        return base64.b64decode(obj["$base64"])
    return obj


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """The rows of a JSON-lines file, in order, BLOBs decoded to bytes; blank lines are skipped."""
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                yield json.loads(line, object_hook=decode)


def create_private(path: Path) -> SyncedFile:
    """A new file readable by its owner only; an existing file is never overwritten."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)
    return SyncedFile(fd)


class SyncedFile:
    """A text file that is fsynced when closed: a published salvage survives power loss."""

    def __init__(self, fd: int) -> None:
        self._fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")

    def write(self, text: str) -> int:
        """Write `text`; returns the characters written."""
        return self._fh.write(text)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()


def write_json_file(path: Path, data: dict[str, Any]) -> None:
    """`data` as indented JSON in a new private file at `path` (BLOBs as base64), fsynced."""
    with create_private(path) as fh:
        fh.write(json.dumps(data, indent=2, default=encode, ensure_ascii=False) + "\n")
