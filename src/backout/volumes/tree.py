"""Directory trees as data: list one (files, folders, symlinks with their modes and owners), copy it
privately (a reflink per file where the filesystem can, else an in-kernel copy), and verify a copy
against the list. The local volume provider is built on these.

Why not `cp -a --reflink=auto`: the manifest must say which method was used (cp does not tell), the
copy must be 0600/0700 (cp -a keeps the source's modes), every file is hashed as it is copied, and
an ENOSPC must be told apart from other failures so the partial copy can be removed with a clear
message. FICLONE per file is what `cp --reflink=auto` does underneath.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import stat
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable

from backout.fsutil import copy_fd, create_private, fsync_dir, sha256_file

__all__ = ["Entry", "SourceChanged", "apply_owners", "can_reflink", "copy_tree", "exchange", "file_bytes", "is_mount_point",
           "scan_tree", "verify_tree"]

FICLONE = 0x40049409  # _IOW(0x94, 9, int): share the source's blocks (btrfs, xfs, bcachefs, ...)
_NO_REFLINK = {errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.ENOSYS}
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_RENAMEAT2_SYSCALL = {"x86_64": 316, "aarch64": 276}
_libc = ctypes.CDLL(None, use_errno=True)

Skip = Callable[[str], bool]  # a top-level name to leave out (backout's own folders inside a mount)


class SourceChanged(OSError):
    """A file's copy does not hash like its source: it changed while it was copied (or the disk failed)."""


@dataclass(frozen=True)
class Entry:
    """One thing in a tree: its path relative to the root ("." is the root itself) and its attributes."""

    path: str
    kind: str  # "dir", "file" or "symlink"
    mode: int
    uid: int
    gid: int
    size: int = 0
    sha256: str | None = None
    target: str | None = None  # for a symlink
    method: str | None = None  # for a file: "reflink" or "copy"

    def to_dict(self) -> dict[str, Any]:
        """JSON form (None fields left out)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Entry":
        """Back from the JSON form."""
        return cls(**data)


def _entry(root: Path, rel: str, st: os.stat_result) -> Entry | None:
    mode, uid, gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
    if stat.S_ISDIR(st.st_mode):
        return Entry(rel, "dir", mode, uid, gid)
    if stat.S_ISREG(st.st_mode):
        return Entry(rel, "file", mode, uid, gid, size=st.st_size)
    if stat.S_ISLNK(st.st_mode):
        return Entry(rel, "symlink", mode, uid, gid, target=os.readlink(root / rel))
    return None  # sockets, fifos, devices: nothing a snapshot can hold


def scan_tree(root: Path, skip: Skip = lambda name: False) -> tuple[list[Entry], list[str]]:
    """Every entry under `root` (parents before children) and the paths skipped (sockets, fifos...)."""
    top = _entry(root, ".", os.stat(root))
    assert top is not None
    entries = [top]
    skipped: list[str] = []
    pending = [""]
    while pending:
        rel_dir = pending.pop()
        with os.scandir(root / rel_dir if rel_dir else root) as it:
            children = sorted(it, key=lambda d: d.name)
        for child in children:
            if not rel_dir and skip(child.name):
                continue
            rel = f"{rel_dir}/{child.name}" if rel_dir else child.name
            entry = _entry(root, rel, child.stat(follow_symlinks=False))
            if entry is None:
                skipped.append(rel)
                continue
            entries.append(entry)
            if entry.kind == "dir":
                pending.append(rel)
    return entries, skipped


def file_bytes(entries: list[Entry]) -> int:
    """Total size of the files in a tree."""
    return sum(e.size for e in entries if e.kind == "file")


def _clone_or_copy(src: Path, dst: Path) -> str:
    """Copy one file to a new 0600 file; "reflink" when the blocks are shared, else "copy"."""
    s = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        d = create_private(dst)
        try:
            method = "reflink"
            try:
                fcntl.ioctl(d, FICLONE, s)
            except OSError as exc:
                if exc.errno not in _NO_REFLINK:
                    raise
                method = "copy"
                copy_fd(s, d)
            os.fsync(d)
            return method
        finally:
            os.close(d)
    finally:
        os.close(s)


def can_reflink(sample: Path | None, folder: Path) -> bool:
    """True when a file of `sample`'s filesystem can be reflinked into `folder` (a probe, removed after)."""
    if sample is None:
        return False
    probe = folder / f".reflink-probe-{os.getpid()}"
    probe.unlink(missing_ok=True)
    s = os.open(sample, os.O_RDONLY | os.O_CLOEXEC)
    try:
        d = create_private(probe)
        try:
            fcntl.ioctl(d, FICLONE, s)
            return True
        except OSError:
            return False
        finally:
            os.close(d)
    finally:
        os.close(s)
        probe.unlink(missing_ok=True)


def copy_tree(src: Path, dst: Path, entries: list[Entry], progress: Callable[[int], None] | None = None) -> list[Entry]:
    """Copy `entries` of `src` into the new folder `dst`, privately and durably; the entries with hashes.

    Each file is hashed at the source and in the copy: a difference means the source changed while
    it was copied (a service still writing) or the disk failed, and raises SourceChanged."""
    os.mkdir(dst, 0o700)
    done: list[Entry] = []
    for entry in entries:
        done.append(_copy_entry(src, dst, entry))
        if progress and entry.kind == "file":
            progress(entry.size)
    for entry in reversed(done):
        if entry.kind == "dir":
            fsync_dir(dst / entry.path)
    return done


def _copy_entry(src: Path, dst: Path, entry: Entry) -> Entry:
    if entry.path == ".":
        return entry
    target = dst / entry.path
    if entry.kind == "dir":
        os.mkdir(target, 0o700)
        return entry
    if entry.kind == "symlink":
        assert entry.target is not None
        os.symlink(entry.target, target)
        return entry
    method = _clone_or_copy(src / entry.path, target)
    source_hash, copy_hash = sha256_file(src / entry.path), sha256_file(target)
    if source_hash != copy_hash:
        raise SourceChanged(errno.EIO, f"{entry.path} changed while it was copied")
    return replace(entry, size=target.stat().st_size, sha256=copy_hash, method=method)


def verify_tree(root: Path, entries: list[Entry], skip: Skip = lambda name: False) -> list[str]:
    """What in `root` differs from `entries` (missing, extra, other size, other sha256, other link); [] when none."""
    problems: list[str] = []
    for entry in entries:
        problem = _check_entry(root / entry.path, entry)
        if problem:
            problems.append(f"{entry.path}: {problem}")
    if root.is_dir():
        present, _ = scan_tree(root, skip)
        known = {".", *(e.path for e in entries)}
        problems += [f"{e.path}: not in the manifest" for e in present if e.path not in known]
    return problems


def _check_entry(path: Path, entry: Entry) -> str | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if entry.kind == "dir":
        return None if stat.S_ISDIR(st.st_mode) else "not a folder"
    if entry.kind == "symlink":
        return None if stat.S_ISLNK(st.st_mode) and os.readlink(path) == entry.target else "other link"
    if not stat.S_ISREG(st.st_mode):
        return "not a file"
    if st.st_size != entry.size:
        return f"size {st.st_size}, manifest says {entry.size}"
    return None if sha256_file(path) == entry.sha256 else "sha256 differs from the manifest"


def apply_owners(root: Path, entries: list[Entry], with_root: bool = True) -> list[str]:
    """Give a copy the recorded modes and owners (the service reads its files as itself); what could not be."""
    problems: list[str] = []
    for entry in reversed(entries):  # children first: a folder may become read-only
        if entry.kind == "symlink" or (entry.path == "." and not with_root):
            continue
        path = root / entry.path
        try:
            if (path.stat().st_uid, path.stat().st_gid) != (entry.uid, entry.gid):
                os.chown(path, entry.uid, entry.gid)
        except PermissionError:
            problems.append(f"{entry.path}: could not give it owner {entry.uid}:{entry.gid} (run as root)")
        os.chmod(path, entry.mode)
    return problems


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE); False when the filesystem cannot."""
    fn = getattr(_libc, "renameat2", None)
    args = (_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if fn is not None:
        rc = fn(ctypes.c_int(args[0]), ctypes.c_char_p(args[1]), ctypes.c_int(args[2]), ctypes.c_char_p(args[3]),
                ctypes.c_uint(args[4]))
    elif os.uname().machine in _RENAMEAT2_SYSCALL:
        rc = _libc.syscall(_RENAMEAT2_SYSCALL[os.uname().machine], *args)
    else:
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), field)


def is_mount_point(path: Path) -> bool:
    """True when something is mounted on `path`, a bind mount of the same filesystem included
    (os.path.ismount misses those: same device as the parent)."""
    if os.path.ismount(path):
        return True
    real = os.path.realpath(path)
    try:
        lines = Path("/proc/self/mountinfo").read_text(encoding="utf-8").splitlines()
    except OSError:
        return False
    return any(len(fields) > 4 and _unescape(fields[4]) == real for fields in (line.split() for line in lines))
