"""The manifest written next to every snapshot, and the folder that holds them."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from backout.brain.tables import TableMark
from backout.errors import BackoutError
from backout.fsutil import atomic_write_json, ensure_private_dir, fsync_dir

__all__ = ["FORMAT", "ID_PATTERN", "LATEST", "Manifest", "SnapshotError", "SnapshotStore", "hold_run",
           "new_snapshot_id", "same_brain", "utcnow"]

FORMAT = "backout-snapshot/1"
ID_PATTERN = r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}"
_ID = re.compile(rf"^{ID_PATTERN}$")
_PREFIX = re.compile(r"^[0-9TZa-f-]+$")  # what a beginning of an id can look like (never a path)
LATEST = "latest"  # names the newest complete snapshot wherever an id is taken
# What a snapshot run leaves while it works: its copy (and SQLite's sidecars of it), the copy renamed into place
# before its manifest exists, and the manifest's own temporary file (named after the writer's pid).
_RUN_FILE = re.compile(rf"^(?:\.(?P<tmp>{ID_PATTERN})\.tmp(?:-wal|-shm|-journal)?"
                       rf"|(?P<db>{ID_PATTERN})\.sqlite(?:-wal|-shm|-journal)?"
                       rf"|\.(?P<json>{ID_PATTERN})\.json\.(?P<pid>[0-9]+)\.tmp)$")


class SnapshotError(BackoutError):
    """A snapshot operation failed or was refused; the message says why and what to do."""


def utcnow() -> datetime:
    """Now, in UTC."""
    return datetime.now(timezone.utc)


def new_snapshot_id(now: datetime | None = None) -> str:
    """A sortable, unguessable id: UTC time plus 6 hex digits."""
    return f"{(now or utcnow()).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(3)}"


class Manifest(BaseModel):
    """What a snapshot is: where it came from, what it holds, and how to check it."""

    model_config = ConfigDict(extra="allow")

    format: str = FORMAT
    id: str
    deployment: str
    created_at: str  # ISO 8601 UTC, the same format the Engine writes
    source: str
    version: str | None = None
    label: str | None = None
    pinned: bool = False
    size: int
    sha256: str
    integrity_check: str
    schema_stamp: dict[str, Any]
    tables: dict[str, dict[str, int | None]]
    method: str
    duration_s: float = 0.0
    backout_version: str = ""
    journal_mode: str | None = None  # the brain's, when the snapshot was taken (None: an older manifest)

    @property
    def created(self) -> datetime:
        """created_at as an aware datetime."""
        return datetime.fromisoformat(self.created_at)

    def marks(self) -> dict[str, TableMark]:
        """Per-table high-water marks, as salvage wants them."""
        return {t: TableMark.from_dict(m) for t, m in self.tables.items()}

    def age_seconds(self, now: datetime | None = None) -> float:
        """Seconds since the snapshot was taken."""
        return ((now or utcnow()) - self.created).total_seconds()


def same_brain(source: str | Path, brain: Path) -> bool:
    """True when a manifest's `source` is `brain` (both resolved: a link and its target are one brain)."""
    return Path(source) == brain or Path(source).resolve() == brain.resolve()


def hold_run(fd: int) -> int:
    """Mark the file open as `fd` as a running snapshot's: an exclusive flock, held until `fd` is closed (the
    kernel drops it when the process dies, so a killed run's files show as free). Returns `fd`."""
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _held(path: Path) -> bool:
    """True when a running snapshot holds `path` (see hold_run); False for a file nobody holds or a gone one."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops the probe's own lock
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


class SnapshotStore:
    """A folder of snapshots: `<id>.sqlite` plus `<id>.json`; the manifest is written last."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def ensure(self) -> Path:
        """Create the folder 0700 if needed."""
        return ensure_private_dir(self.folder)

    def check_id(self, snapshot_id: str) -> str:
        """Reject ids that are not ours, so no id can name a path outside the folder."""
        if not _ID.match(snapshot_id):
            raise SnapshotError(
                f"{snapshot_id!r} is not a snapshot id (they look like 20261126T221530Z-a1b2c3; a unique "
                "beginning of one, or `latest`, also works); see `backout snapshot list`"
            )
        return snapshot_id

    def resolve(self, ref: str, deployment: str, brain: Path | None = None) -> str:
        """The id `ref` names: a whole id, `latest` (the newest complete snapshot of the deployment's brain) or a
        unique beginning of one of its snapshots' ids. SnapshotError (exit 2) for an unknown or ambiguous one, the
        candidates listed."""
        if ref == LATEST:
            newest = self.of(deployment, brain)
            if not newest:
                raise SnapshotError(f"no snapshot of {deployment} in {self.folder} yet, so `latest` names none; "
                                    "take one with `backout snapshot create`")
            return newest[0].id
        if _ID.match(ref):
            if not self.manifest_path(ref).exists():
                raise SnapshotError(f"no snapshot {ref} in {self.folder}; `backout snapshot list` shows them")
            return ref
        if not _PREFIX.match(ref):
            self.check_id(ref)  # says what an id looks like
        found = sorted({m.id for m in self._mine(deployment, brain) if m.id.startswith(ref)}, reverse=True)
        if len(found) == 1:
            return found[0]
        if not found:
            raise SnapshotError(f"no snapshot {ref}… in {self.folder}; `backout snapshot list` shows them")
        shown = ", ".join(found[:8]) + (f" and {len(found) - 8} more" if len(found) > 8 else "")
        raise SnapshotError(f"{ref!r} is the beginning of {len(found)} snapshot ids ({shown}); give more of the "
                            "id, or `latest` for the newest")

    def db_path(self, snapshot_id: str) -> Path:
        """Path of the snapshot's SQLite file."""
        return self.folder / f"{self.check_id(snapshot_id)}.sqlite"

    def manifest_path(self, snapshot_id: str) -> Path:
        """Path of the snapshot's manifest."""
        return self.folder / f"{self.check_id(snapshot_id)}.json"

    def tmp_path(self, snapshot_id: str) -> Path:
        """Where a snapshot is written before it is verified and renamed into place."""
        return self.folder / f".{self.check_id(snapshot_id)}.tmp"

    def load(self, snapshot_id: str) -> Manifest:
        """Read one manifest; SnapshotError when missing or malformed."""
        path = self.manifest_path(snapshot_id)
        try:
            return Manifest.model_validate(json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            raise SnapshotError(
                f"no snapshot {snapshot_id} in {self.folder}; see `backout snapshot list`"
            ) from None
        except (ValueError, ValidationError) as exc:
            raise SnapshotError(f"manifest {path} is corrupt ({type(exc).__name__}); run `backout snapshot verify`") from None

    def save(self, manifest: Manifest) -> None:
        """Write a manifest durably (atomic rename)."""
        atomic_write_json(self.manifest_path(manifest.id), manifest.model_dump(mode="json"))

    def ids(self) -> list[str]:
        """Ids that have a manifest (unordered; manifests() orders them)."""
        if not self.folder.is_dir():
            return []
        return [p.stem for p in self.folder.glob("*.json") if _ID.match(p.stem)]

    def manifests(self) -> Iterator[Manifest | SnapshotError]:
        """Every manifest, newest first by creation time; unreadable ones come back as the error."""
        loaded: list[Manifest | SnapshotError] = []
        for snapshot_id in self.ids():
            try:
                loaded.append(self.load(snapshot_id))
            except SnapshotError as exc:
                loaded.append(exc)
        # Errors sort last; two snapshots in the same second are ordered by their milliseconds.
        yield from sorted(loaded, key=lambda m: m.created_at if isinstance(m, Manifest) else "", reverse=True)

    def problem(self, manifest: Manifest) -> str | None:
        """Why a snapshot with this manifest is not complete (its data file missing or of the wrong size), or None."""
        try:
            size = self.db_path(manifest.id).stat().st_size
        except FileNotFoundError:
            return "its data file is missing"
        return None if size == manifest.size else f"truncated: {size} bytes, its manifest says {manifest.size}"

    def _mine(self, deployment: str, brain: Path | None) -> list[Manifest]:
        return [m for m in self.manifests() if isinstance(m, Manifest) and m.deployment == deployment
                and (brain is None or same_brain(m.source, brain))]

    def of(self, deployment: str, brain: Path | None = None) -> list[Manifest]:
        """Complete snapshots of one deployment (of `brain` when given), newest first: a folder may be shared,
        and a manifest whose data file is missing or truncated is no snapshot (see broken())."""
        return [m for m in self._mine(deployment, brain) if self.problem(m) is None]

    def broken(self, deployment: str, brain: Path | None = None) -> list[tuple[Manifest, str]]:
        """Manifests of one deployment whose data file is missing or truncated, with what is wrong."""
        return [(m, why) for m in self._mine(deployment, brain) if (why := self.problem(m)) is not None]

    def leftovers(self) -> list[Path]:
        """Files of snapshot runs that were killed: never those of a run still going (it holds its copy)."""
        if not self.folder.is_dir():
            return []
        found = []
        for path in self.folder.iterdir():
            match = _RUN_FILE.match(path.name)
            if match is None:
                continue
            if match["json"]:
                if not _alive(int(match["pid"])):
                    found.append(path)
                continue
            sid = match["tmp"] or match["db"]
            if match["db"] and self.manifest_path(sid).exists():
                continue  # a snapshot (or SQLite's sidecar of one someone opened)
            if not (_held(self.tmp_path(sid)) or _held(self.db_path(sid))):
                found.append(path)
        return sorted(found)

    def leftover_bytes(self) -> int:
        """Bytes that cleaning the leftovers of killed runs would free."""
        total = 0
        for path in self.leftovers():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    def clean_leftovers(self) -> list[Path]:
        """Delete the leftovers of killed runs (checked again now, so a run started meanwhile is spared)."""
        removed = self.leftovers()
        for path in removed:
            path.unlink(missing_ok=True)
        if removed:
            fsync_dir(self.folder)
        return removed

    def remove(self, snapshot_id: str) -> None:
        """Delete one snapshot: the manifest first, so a half-removed one never looks complete."""
        self.manifest_path(snapshot_id).unlink(missing_ok=True)
        self.db_path(snapshot_id).unlink(missing_ok=True)
        fsync_dir(self.folder)
