"""Durable, private file operations: 0600 files, 0700 folders, fsync of data and of directories."""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

__all__ = [
    "Progress",
    "atomic_write_json",
    "replace_text",
    "copy_fd",
    "create_private",
    "ensure_private_dir",
    "free_bytes",
    "fsync_dir",
    "fsync_path",
    "sha256_file",
    "describe_os_error",
    "start_writeback",
    "background_priority",
    "run_at_background_priority",
    "at_background_priority",
]

T = TypeVar("T")
Progress = Callable[[int], None]  # called with the number of bytes just done
_CHUNK = 4 * 1024 * 1024


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make it 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if path.stat().st_mode & 0o777 != 0o700:
        os.chmod(path, 0o700)
    return path


def create_private(path: Path) -> int:
    """Create a new file 0600 (fails if it exists) and return a writable descriptor.

    SQLite creates files 0644 whatever the umask, so snapshot files are created here first.
    """
    return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)


def fsync_dir(path: Path) -> None:
    """fsync a directory so renames and creations in it survive power loss."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: Path) -> None:
    """fsync a file's data and metadata."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc = ctypes.CDLL(None, use_errno=True)
# SYNC_FILE_RANGE_WAIT_BEFORE | WRITE | WAIT_AFTER: write this range out and wait for it.
_SYNC_FILE_RANGE_WRITE_AND_WAIT = 1 | 2 | 4


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Write this range to disk now and wait for it (Linux sync_file_range).

    Writing back chunk by chunk as the copy goes keeps at most one chunk of ours queued at the
    device, so the service's own commits (an fsync each) never wait behind a whole brain's worth
    of dirty pages; a plain `cp` + `sync` of a 1 GB brain raised the Engine's p99 thirteenfold.
    """
    fn = getattr(_libc, "sync_file_range", None)
    if fn is not None:
        fn(ctypes.c_int(fd), ctypes.c_longlong(offset), ctypes.c_longlong(length),
           ctypes.c_uint(_SYNC_FILE_RANGE_WRITE_AND_WAIT))


def copy_fd(src: int, dst: int, progress: Progress | None = None) -> int:
    """Copy from `src`'s offset 0 to EOF into `dst` in the kernel where possible; returns bytes copied."""
    total, offset = 0, 0
    size = os.fstat(src).st_size
    if size:
        try:  # allocated up front: the service's fsyncs need not flush our data blocks (ext4 ordered mode)
            os.posix_fallocate(dst, 0, size)
        except OSError:
            pass
    while True:
        try:
            n = os.copy_file_range(src, dst, _CHUNK, offset, offset)
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            return _copy_fd_userspace(src, dst, offset, total, progress)
        if n == 0:
            return total
        start_writeback(dst, offset, n)
        offset += n
        total += n
        if progress:
            progress(n)


def _copy_fd_userspace(src: int, dst: int, offset: int, total: int, progress: Progress | None) -> int:
    while True:
        chunk = os.pread(src, _CHUNK, offset)
        if not chunk:
            return total
        os.pwrite(dst, chunk, offset)
        start_writeback(dst, offset, len(chunk))
        offset += len(chunk)
        total += len(chunk)
        if progress:
            progress(len(chunk))


def sha256_file(path: Path, progress: Progress | None = None) -> str:
    """Hex SHA-256 of a file, read in large chunks (hashlib releases the GIL on them)."""
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            if progress:
                progress(len(chunk))
    return digest.hexdigest()


def replace_text(path: Path, text: str, mode: int | None = None) -> None:
    """Replace a file durably: temporary file, fsync, rename, fsync the folder.

    The temporary file is created with the final mode (default: the existing file's, else 0600),
    so a file holding secrets is never briefly readable by others."""
    if mode is None:
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON durably and privately (0600)."""
    replace_text(path, json.dumps(data, indent=2) + "\n", mode=0o600)


def free_bytes(path: Path) -> int:
    """Bytes available to this user on the filesystem holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def describe_os_error(exc: OSError, where: Path) -> str:
    """A one-line explanation of an OSError with what to do about it."""
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {where}; free space there or choose another folder"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write in {where} ({exc.strerror}); check its permissions or choose another folder"
    if exc.errno == errno.EIO:
        return f"I/O error on {where}; the device may be failing: check dmesg before retrying"
    return f"{exc.strerror or exc} ({where})"


def background_priority() -> None:
    """Lower the calling thread's CPU and I/O priority (Linux), so the service keeps its latency.

    Per thread: call it at the start of a worker thread; the priority goes with the thread.
    """
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except OSError:
        pass
    # ioprio_set(IOPRIO_WHO_PROCESS, tid, IOPRIO_CLASS_BE << 13 | 7): lowest best-effort I/O class.
    syscall = getattr(_libc, "syscall", None)
    if syscall is not None and os.uname().machine in _IOPRIO_SET:
        syscall(_IOPRIO_SET[os.uname().machine], 1, threading.get_native_id(), (2 << 13) | 7)


_IOPRIO_SET = {"x86_64": 251, "aarch64": 30}


def run_at_background_priority(fn: Callable[[], T]) -> T:
    """Run `fn` in a thread of low CPU and I/O priority and return its result (or raise its error)."""
    result: list[T] = []
    error: list[BaseException] = []

    def work() -> None:
        background_priority()
        try:
            result.append(fn())
        except BaseException as exc:  # re-raised in the caller's thread
            error.append(exc)

    # A daemon: Ctrl-C ends the process and the work with it (a half-made snapshot is only ever
    # a temporary file, listed as incomplete).
    worker = threading.Thread(target=work, name="backout-background", daemon=True)
    worker.start()
    worker.join()
    if error:
        raise error[0]
    return result[0]


def at_background_priority(fn: Callable[..., T]) -> Callable[..., T]:
    """Decorator: the function runs in a low-priority thread (see run_at_background_priority)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        return run_at_background_priority(lambda: fn(*args, **kwargs))

    return wrapper
