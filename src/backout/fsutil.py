"""Durable, private file operations: 0600 files, 0700 folders, fsync of data and of directories."""

from __future__ import annotations

import ctypes
import errno
import functools
import hashlib
import json
import logging
import os
import re
import stat
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

from backout.errors import EXIT_REFUSED, EXIT_USAGE, BackoutError

__all__ = [
    "HostilePath",
    "Progress",
    "UnusableFolder",
    "unusable_folder",
    "atomic_write_json",
    "check_component",
    "check_version",
    "is_component",
    "replace_text",
    "copy_fd",
    "create_private",
    "ensure_private_dir",
    "open_private",
    "free_bytes",
    "fsync_dir",
    "fsync_fd",
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


_log = logging.getLogger("backout.fsutil")
_WARNED: set[Path] = set()
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,127}")


class HostilePath(BackoutError):
    """A path backout would write through could have been planted by someone else (a link, a hard link)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_REFUSED)


class UnusableFolder(BackoutError, OSError):
    """A folder backout was asked to create cannot exist where it was named (a virtual file system such as
    /proc, a file where a folder should be, a name the file system refuses): a usage error, exit 2. Still an
    OSError, for callers that handle those."""

    def __init__(self, message: str, folder: Path, code: int) -> None:
        OSError.__init__(self, code, message, str(folder))
        self.exit_code = EXIT_USAGE
        self.message = message

    def __str__(self) -> str:
        return self.message


_VIRTUAL_FS = {"proc", "sysfs", "devtmpfs", "devpts", "cgroup", "cgroup2", "debugfs", "securityfs", "tracefs",
               "pstore", "bpf", "configfs", "fusectl", "mqueue", "hugetlbfs", "efivarfs", "binfmt_misc", "autofs"}


def _fs_type(path: Path) -> str | None:
    """The type of the file system holding `path` (from /proc/self/mountinfo), or None when unknown."""
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()
        real = os.path.realpath(path)
    except OSError:
        return None
    best, kind = "", None
    for line in lines:
        fields = line.split(" ")
        if "-" not in fields:
            continue
        point = fields[4].encode().decode("unicode_escape") if "\\" in fields[4] else fields[4]
        after = fields[fields.index("-") + 1]
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, after
    return kind


def unusable_folder(folder: Path, exc: OSError, shown: Path | None = None) -> OSError:
    """What to raise when creating `folder` failed with `exc`: an UnusableFolder that says which folder
    (`shown`, when the one created was a work folder beside it), why, and what to do, when no retry could
    fix it; `exc` itself otherwise (permissions, a full disk: the machine's problem, described elsewhere)."""
    shown = Path(shown or folder).absolute()
    parent = Path(folder).absolute().parent
    if exc.errno == errno.ENOENT and parent.is_dir():
        kind = _fs_type(parent)
        why = (f"{parent} is on a '{kind}' file system, which holds no folders of ours" if kind in _VIRTUAL_FS
               else f"the file system at {parent} does not let folders be made there" + (f" ({kind})" if kind else ""))
    elif exc.errno in (errno.ENOENT, errno.ENOTDIR):
        on_way = next((p for p in [parent, *parent.parents] if os.path.lexists(p) and not p.is_dir()), None)
        why = f"{on_way} is a file, not a folder" if on_way is not None else f"{parent} is not a folder"
    elif exc.errno == errno.ENAMETOOLONG:
        why = "its name is too long for the file system"
    elif exc.errno in (errno.EINVAL, errno.EILSEQ):
        why = "the file system refuses its name"
    elif exc.errno == errno.ELOOP:
        why = "a symbolic link on the way loops"
    else:
        return exc
    return UnusableFolder(f"cannot create the folder {shown}: {why}; choose a folder on a disk backout can write "
                          "to (for example one under the current folder) and run the command again; nothing was "
                          "changed", shown, exc.errno or errno.EINVAL)


def is_component(value: str) -> bool:
    """True when `value` is safe as one path component: no `/`, `..`, NUL or leading `.` or `-`."""
    return bool(_NAME.fullmatch(value))


def check_component(value: str, what: str) -> str:
    """`value` if it is safe as one path component (see is_component); else exit 2 saying why."""
    if not is_component(value):
        raise BackoutError(f"{what} {value!r} is refused because backout uses it in file names: use at most 128 "
                           "letters, digits, '.', '_', '+' and '-', starting with a letter, digit or '_'", EXIT_USAGE)
    return value


def check_version(value: str) -> str:
    """`value` if it is usable as a version (it ends up in file names and argv); else exit 2."""
    return check_component(value, "version")


def ensure_private_dir(path: Path) -> Path:
    """Create `path` and its missing parents 0700 whatever the umask; an existing folder keeps its mode.

    A link on the way is followed only where no one else could have planted it."""
    parts = path.absolute().parts
    current = Path(parts[0])
    made: list[Path] = []
    try:
        for i, part in enumerate(parts[1:], start=2):
            parent, current = current, current / part
            if _make_private_dir(current, wanted=path):
                made.append(current)
            else:
                _check_existing(current, parent, last=i == len(parts), wanted=path)
    except UnusableFolder:
        for folder in reversed(made):  # the folders made on the way: nothing is left changed
            try:
                os.rmdir(folder)
            except OSError:
                break
        raise
    return path


def _make_private_dir(folder: Path, wanted: Path | None = None) -> bool:
    """mkdir 0700, then fchmod (the umask may take bits away); False when something is there already."""
    if os.path.lexists(folder):
        return False
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        return False
    except OSError as exc:
        raise unusable_folder(folder, exc, wanted) from None
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
    return True


def _check_existing(folder: Path, parent: Path, last: bool, wanted: Path | None = None) -> None:
    """Refuse a link someone else could have planted; warn once when others may write where backout writes."""
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode):
        _check_link(folder, parent, st)
        st = os.stat(folder)
    if not stat.S_ISDIR(st.st_mode):
        wanted = (wanted or folder).absolute()
        where = "" if wanted == folder.absolute() else f"cannot use the folder {wanted}: "
        raise UnusableFolder(f"{where}{folder.absolute()} is a file, not a folder; remove it or choose another "
                             "folder; nothing was changed", folder, errno.ENOTDIR)
    if last and st.st_mode & 0o002 and not st.st_mode & stat.S_ISVTX and folder not in _WARNED:
        _WARNED.add(folder)
        _log.warning("backout: warning: any user can write in %s (mode %o) and replace backout's files there: "
                     "remove that permission or choose another folder", folder, stat.S_IMODE(st.st_mode))


def _check_link(link: Path, parent: Path, st: os.stat_result) -> None:
    """A link is followed in a folder only its owner can write, or a sticky one when made by us or that owner."""
    folder = os.stat(parent)
    if not folder.st_mode & 0o022:
        return
    if folder.st_mode & stat.S_ISVTX and st.st_uid in (os.getuid(), folder.st_uid):
        return
    raise HostilePath(f"{link} is a symbolic link in {parent}, which others can write to, so it may not be the "
                      f"operator's: use the real folder ({os.path.realpath(link)}) instead")


def open_private(path: Path, flags: int = os.O_WRONLY | os.O_APPEND) -> int:
    """Open or create a file 0600 without following a link at `path`; HostilePath for a link or a hard link."""
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise HostilePath(f"{path} is a symbolic link and backout never writes through a link it did not "
                              "make: remove it, or name the real file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            raise HostilePath(f"{path} is not a plain file of its own (a device, pipe or hard link); backout "
                              "will not write into it: remove it, or name another file")
        if stat.S_IMODE(st.st_mode) != 0o600:  # made by hand, or under an odd umask
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def create_private(path: Path) -> int:
    """Create a new file 0600 (fails if it exists) and return a writable descriptor.

    SQLite creates files 0644 whatever the umask, so snapshot files are created here first.
    """
    return os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def fsync_dir(path: Path) -> None:
    """fsync a directory so renames and creations in it survive power loss."""
    _fsync(path, os.O_RDONLY | os.O_DIRECTORY)


def fsync_path(path: Path) -> None:
    """fsync a file's data and metadata."""
    _fsync(path, os.O_RDONLY)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        fsync_fd(fd, path)
    finally:
        os.close(fd)


def fsync_fd(fd: int, path: Path | str) -> None:
    """fsync an open file; a failure names `path` (fsync's own error names no file)."""
    try:
        os.fsync(fd)
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror} (fsync)", str(Path(path).absolute())) from exc


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
    if mode is None:  # a link's target is not ours: its mode says nothing about this file
        mode = stat.S_IMODE(path.lstat().st_mode) if path.is_file() and not path.is_symlink() else 0o600
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) != mode:
                os.fchmod(f.fileno(), mode)  # the umask took bits away
            f.write(text)
            f.flush()
            fsync_fd(f.fileno(), tmp)
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
    """A one-line explanation of an OSError with what to do about it; `where` stands in when the error names
    no file."""
    if isinstance(exc, UnusableFolder):
        return str(exc)
    where = Path(exc.filename).absolute() if exc.filename else Path(where).absolute()
    if exc.errno == errno.ENOSPC:
        return f"no space left on the device holding {where}; free space there or choose another folder"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"cannot write in {where} ({exc.strerror}); check its permissions or choose another folder"
    if exc.errno == errno.EIO and exc.strerror and not exc.strerror.startswith(os.strerror(errno.EIO)):
        return f"{exc.strerror} ({where}); the device may be failing: check dmesg before retrying"
    if exc.errno == errno.EIO:
        during = " (fsync)" if str(exc.strerror or "").endswith("(fsync)") else ""
        return (f"I/O error on {where}{during}: what was written there may not be on disk and the device may be "
                "failing; check dmesg before retrying")
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
