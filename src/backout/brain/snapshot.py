"""Online, consistent, verified snapshots of a live brain.

A WAL-aware copy: hold a read transaction on the live brain (no checkpoint can move past it and
the WAL cannot restart), copy the database file and then the WAL in the kernel, end the read
transaction; opening the copy recovers its WAL up to the last complete commit. The copy is then
checkpointed into a single self-contained file, fsynced, hashed and integrity-checked, renamed
into place, and only then does its manifest appear. Brains not in WAL mode are copied with
SQLite's online backup API, stepped so writers are not starved.

A brain reached through a symlink is the link's target: SQLite keeps its -wal and -shm there.
The run holds a flock on its copy until the manifest is written, so a prune can tell the
leftovers of a killed run from the files of one still going.
"""

from __future__ import annotations

import errno
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from backout import __version__
from backout.brain.manifest import FORMAT, Manifest, SnapshotError, SnapshotStore, hold_run, new_snapshot_id, utcnow
from backout.brain.schema import stamp
from backout.brain.tables import connect_readonly, table_marks
from backout.brain.sqlite_errors import explain
from backout.errors import EXIT_ENVIRONMENT
from backout.fsutil import at_background_priority, background_priority, copy_fd, create_private, describe_os_error, free_bytes, fsync_dir, fsync_path, sha256_file
from backout.progress import NO_PROGRESS, Progress

__all__ = ["VerifyReport", "brain_file", "check_is_sqlite", "copy_live_brain", "create_snapshot", "verify_snapshot",
           "SIDE_CARS", "require_no_sidecars"]

SIDE_CARS = ("-wal", "-shm", "-journal")
_BACKUP_PAGES = 1024  # pages per step of the backup API; writers get the lock between steps


def brain_file(path: Path) -> Path:
    """The file SQLite really opens for `path`: symlinks resolved, so its -wal and -shm are beside it."""
    return path.resolve()


def check_is_sqlite(path: Path) -> None:
    """Raise SnapshotError unless `path` is an existing SQLite database file."""
    if not path.exists():
        raise SnapshotError(f"brain {path} does not exist; check --brain or the deployment's brain path")
    if path.is_dir():
        raise SnapshotError(f"brain {path} is a directory; give the path of the SQLite file")
    try:
        with path.open("rb") as f:
            header = f.read(16)
    except OSError as exc:
        raise SnapshotError(f"cannot read brain {path}: {exc.strerror}") from None
    if header != b"SQLite format 3\x00":
        raise SnapshotError(f"{path} is not an SQLite database (bad header); point --brain at the brain file")


def _copy_wal_aware(source: Path, tmp: Path, progress: Progress) -> tuple[str, str]:
    """Copy a live brain into `tmp` (+ `tmp-wal`); returns the method used and the brain's journal mode."""
    # mode=ro: our connection must never checkpoint or delete the live WAL when it closes.
    conn = connect_readonly(source)
    held: list[int] = []
    try:
        mode = str(conn.execute("PRAGMA journal_mode").fetchone()[0]).lower()
        if mode != "wal":
            _copy_backup_api(conn, tmp, progress)
            return "backup-api", mode
        conn.execute("BEGIN")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the read transaction
        wal = source.with_name(source.name + "-wal")
        total = source.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
        progress.phase("copy", total)
        for src_path, dst_path in ((source, tmp), (wal, tmp.with_name(tmp.name + "-wal"))):
            if not src_path.exists():
                continue
            src = os.open(src_path, os.O_RDONLY | os.O_CLOEXEC)
            held.append(src)  # closed only after the connection: closing drops its POSIX locks
            dst = create_private(dst_path) if dst_path != tmp else os.open(dst_path, os.O_WRONLY)
            try:
                copy_fd(src, dst, progress.advance)
            finally:
                os.close(dst)
        conn.execute("COMMIT")
        return "wal-copy", mode
    finally:
        conn.close()
        for fd in held:
            os.close(fd)


def _copy_backup_api(conn: sqlite3.Connection, tmp: Path, progress: Progress) -> None:
    pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
    progress.phase("copy", pages * page_size)
    target = sqlite3.connect(tmp, isolation_level=None)
    done = 0

    def step(status: int, remaining: int, total: int) -> None:
        nonlocal done
        progress.advance(max(0, (total - remaining) - done) * page_size)
        done = total - remaining

    try:
        conn.backup(target, pages=_BACKUP_PAGES, progress=step)
    finally:
        target.close()


@dataclass
class _Checked:
    sha256: str = ""
    error: BaseException | None = None


def _finish_copy(tmp: Path) -> sqlite3.Connection:
    """Fold the copied WAL into a single self-contained file (recovery stops at the last commit)."""
    conn = sqlite3.connect(tmp, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous = OFF")  # one fsync at the end instead of one per step
    conn.execute("PRAGMA journal_mode = DELETE")  # checkpoints the recovered WAL, removes it
    try:
        require_no_sidecars(tmp, "turning the copy into one self-contained file")
    except OSError:
        conn.close()
        raise
    return conn


def require_no_sidecars(path: Path, doing: str) -> None:
    """After a journal-mode change committed (or the last connection closed), SQLite has removed the file's
    -journal/-wal/-shm. One left behind (its unlink failed) would be rolled back or replayed into the file
    later, changing it after it was hashed: the step fails instead."""
    left = [side for side in (path.with_name(path.name + s) for s in SIDE_CARS) if side.exists()]
    if left:
        raise OSError(errno.EIO, f"SQLite could not remove {left[0].name} while {doing}", str(left[0]))


def _fsync_and_hash(tmp: Path, result: _Checked) -> None:
    background_priority()
    try:
        fsync_path(tmp)
        result.sha256 = sha256_file(tmp)
    except BaseException as exc:  # reported by the caller's thread
        result.error = exc


def _integrity(conn: sqlite3.Connection) -> str:
    rows = [r[0] for r in conn.execute("PRAGMA integrity_check(20)")]
    return "ok" if rows == ["ok"] else "; ".join(rows)


def _cleanup(tmp: Path) -> None:
    for path in [tmp, *(tmp.with_name(tmp.name + s) for s in SIDE_CARS)]:
        path.unlink(missing_ok=True)


def _discard(store: SnapshotStore, tmp: Path, snapshot_id: str) -> None:
    """A failed run leaves nothing listed: the manifest goes first (it may have been renamed into place
    before a folder fsync failed), then the data file and the temporaries."""
    store.manifest_path(snapshot_id).unlink(missing_ok=True)
    store.db_path(snapshot_id).unlink(missing_ok=True)
    _cleanup(tmp)


def _check_space(store: SnapshotStore, source: Path) -> None:
    wal = source.with_name(source.name + "-wal")
    needed = source.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    if free_bytes(store.folder) < needed:
        stale = store.leftover_bytes()
        hint = f"`backout snapshot prune` frees {stale // 2**20} MiB left by killed runs, " if stale else ""
        raise SnapshotError(
            f"not enough space in {store.folder} for a snapshot of {needed // 2**20} MiB; {hint}"
            "free space or choose another folder with --into", EXIT_ENVIRONMENT
        )


@at_background_priority
def create_snapshot(
    store: SnapshotStore,
    source: Path,
    deployment: str,
    *,
    label: str | None = None,
    pin: bool = False,
    version: str | None = None,
    progress: Progress = NO_PROGRESS,
) -> Manifest:
    """Take an online snapshot of `source`, verify it, and record its manifest.

    Runs at low CPU and I/O priority so the service keeps its latency meanwhile."""
    source = brain_file(source)
    check_is_sqlite(source)
    store.ensure()
    _check_space(store, source)
    started = time.monotonic()
    created = utcnow()
    snapshot_id = new_snapshot_id(created)
    tmp = store.tmp_path(snapshot_id)
    held = hold_run(create_private(tmp))  # until the manifest is written: this run's files are not leftovers
    try:
        method, mode = _copy_wal_aware(source, tmp, progress)
        manifest = _verify_new(store, tmp, snapshot_id, progress, fields={
            "format": FORMAT, "id": snapshot_id, "deployment": deployment,
            "created_at": created.isoformat(timespec="milliseconds"), "source": str(source),
            "version": version, "label": label, "pinned": pin, "method": method,
            "backout_version": __version__, "journal_mode": mode,
        })
        final = store.db_path(snapshot_id)
        os.rename(tmp, final)
        fsync_dir(store.folder)
        manifest.duration_s = round(time.monotonic() - started, 3)
        store.save(manifest)  # the manifest is the commit point: written last
        return manifest
    except OSError as exc:
        _discard(store, tmp, snapshot_id)
        raise SnapshotError(f"snapshot failed: {describe_os_error(exc, store.folder)}; the brain is untouched",
                            EXIT_ENVIRONMENT) from None
    except sqlite3.Error as exc:
        _discard(store, tmp, snapshot_id)
        text, code = explain(exc, source, store.folder)
        raise SnapshotError(f"snapshot failed: {text}; the brain is untouched", code) from None
    except BaseException:
        _discard(store, tmp, snapshot_id)
        raise
    finally:
        os.close(held)


def _verify_new(store: SnapshotStore, tmp: Path, snapshot_id: str, progress: Progress,
                fields: dict[str, object]) -> Manifest:
    conn = _finish_copy(tmp)
    hashed = _Checked()
    # fsync + sha256 in a thread while SQLite checks integrity: both release the GIL.
    worker = threading.Thread(target=_fsync_and_hash, args=(tmp, hashed), daemon=True)
    worker.start()
    try:
        progress.phase("verify", None)
        integrity = _integrity(conn)
        schema = stamp(conn).to_dict()
        marks = {t: m.to_dict() for t, m in table_marks(conn).items()}
    finally:
        conn.close()
        worker.join()  # before any cleanup deletes the file it reads
    if hashed.error is not None:
        raise hashed.error
    if integrity != "ok":
        raise SnapshotError(
            f"the brain fails integrity_check ({integrity}); no snapshot was kept. Stop the service and "
            "inspect the brain (sqlite3 BRAIN '.recover' can rescue rows)"
        )
    return Manifest.model_validate({**fields, "size": tmp.stat().st_size, "sha256": hashed.sha256,
                                    "integrity_check": integrity, "schema_stamp": schema, "tables": marks})


@dataclass
class VerifyReport:
    """The checks `verify` ran on one snapshot."""

    snapshot_id: str
    checks: list[tuple[str, bool, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every check passed."""
        return bool(self.checks) and all(ok for _, ok, _ in self.checks)

    def add(self, name: str, ok: bool, detail: str = "") -> bool:
        """Record one check and return its outcome."""
        self.checks.append((name, ok, detail))
        return ok

    def failures(self) -> str:
        """The failed checks, in one line."""
        return "; ".join(f"{n}: {d}" for n, ok, d in self.checks if not ok)

    def to_dict(self) -> dict[str, object]:
        """JSON form."""
        return {"id": self.snapshot_id, "ok": self.ok,
                "checks": [{"check": n, "ok": ok, "detail": d} for n, ok, d in self.checks]}


def verify_snapshot(store: SnapshotStore, snapshot_id: str, progress: Progress = NO_PROGRESS) -> VerifyReport:
    """sha256, integrity_check, and the manifest agreeing with the file (size, schema, tables)."""
    report = VerifyReport(snapshot_id)
    try:
        manifest = store.load(snapshot_id)
    except SnapshotError as exc:
        report.add("manifest", False, str(exc))
        return report
    report.add("manifest", True, manifest.format)
    path = store.db_path(snapshot_id)
    if not report.add("file", path.is_file(), str(path) if path.is_file() else f"{path} is missing"):
        return report
    size = path.stat().st_size
    if not report.add("size", size == manifest.size, f"{size} bytes, manifest says {manifest.size}"):
        return report
    progress.phase("hash", size)
    digest = sha256_file(path, progress.advance)
    report.add("sha256", digest == manifest.sha256, digest if digest == manifest.sha256 else
               f"file hashes to {digest[:16]}…, manifest says {manifest.sha256[:16]}…")
    try:
        conn = connect_readonly(path, immutable=True)
        try:
            integrity = _integrity(conn)
            fingerprint = stamp(conn).fingerprint
            marks = {t: m.to_dict() for t, m in table_marks(conn).items()}
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        report.add("integrity_check", False, f"cannot read as SQLite: {exc}")
        return report
    report.add("integrity_check", integrity == "ok", integrity)
    expected = manifest.schema_stamp.get("fingerprint")
    report.add("schema", fingerprint == expected, f"fingerprint {fingerprint[:16]}…")
    report.add("tables", marks == manifest.tables,
               f"{len(marks)} tables agree" if marks == manifest.tables else "row counts or rowids differ")
    return report


def copy_live_brain(source: Path, dest: Path, progress: Progress = NO_PROGRESS) -> None:
    """A consistent, self-contained throwaway copy of a live brain (not verified): for trial boots."""
    source = brain_file(source)
    check_is_sqlite(source)
    os.close(create_private(dest))
    try:
        _copy_wal_aware(source, dest, progress)
        _finish_copy(dest).close()
    except BaseException:
        _cleanup(dest)
        raise
