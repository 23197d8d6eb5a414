"""Is anybody using this brain? Ask the kernel which process holds SQLite's locks on it.

Every open SQLite connection in WAL mode holds a shared POSIX lock on the database file's lock
bytes and on the `-shm` file; in rollback-journal mode a reader or writer holds one while it
works. F_GETLK asks whether an exclusive lock *would* conflict, and with whom, without taking any
lock itself (so it cannot disturb SQLite's own locks in this process).
"""

from __future__ import annotations

import fcntl
import os
import struct
from pathlib import Path

__all__ = ["lock_holders"]

_PENDING_BYTE = 0x40000000  # SQLite's lock bytes start here: PENDING, RESERVED, SHARED range
_LOCK_BYTES = 2 + 510
_SHM_LOCKS = (120, 16)  # WAL index lock slots, including the "DMS" byte every connection holds
_FLOCK = "hhqqi"


def _holder(path: Path, start: int, length: int) -> int | None:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except PermissionError:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        probe = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
        kind, _, _, _, pid = struct.unpack(_FLOCK, fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    finally:
        os.close(fd)
    if kind == fcntl.F_UNLCK:
        return None
    return pid or -1  # 0: a holder in another pid namespace (a container): busy all the same


def lock_holders(brain: Path) -> list[int]:
    """Pids of processes holding SQLite locks on `brain` or its `-shm` (empty: nobody).

    Call it from a process with no SQLite connection open to `brain`: closing the probe's file
    descriptor would drop that process's own POSIX locks on the file.
    """
    brain = brain.resolve()  # through a symlink, SQLite locks the target and keeps its -shm beside it
    pids = {
        _holder(brain, _PENDING_BYTE, _LOCK_BYTES),
        _holder(brain.with_name(brain.name + "-shm"), *_SHM_LOCKS),
    }
    return sorted(p for p in pids if p is not None)
