"""One operation per deployment at a time: an flock on a file in the deployment's state folder.

flock (not POSIX locks) because the kernel drops it when the holder dies, even by kill -9, and
closing some other descriptor of the file does not release it."""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from backout.errors import EXIT_REFUSED, BackoutError
from backout.fsutil import ensure_private_dir, open_private

__all__ = ["operation_lock", "LockBusy"]


class LockBusy(BackoutError):
    """Another backout operation holds the deployment's lock."""


_HELD: set[Path] = set()  # folders this process holds: an upgrade that rolls back keeps its lock


@contextmanager
def operation_lock(folder: Path, what: str) -> Iterator[None]:
    """Hold the deployment's lock for the duration of `what`; LockBusy if someone else has it.

    Re-entrant within one process (an upgrade's own rollback runs under the upgrade's lock)."""
    key = folder.absolute()
    if key in _HELD:
        yield
        return
    ensure_private_dir(folder)
    path = folder / "operation.lock"
    fd = open_private(path, os.O_RDWR)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise LockBusy(f"another backout operation is running on this deployment ({holder}); "
                           "wait for it to finish", EXIT_REFUSED) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {what}\n".encode(), 0)
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)
