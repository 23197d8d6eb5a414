"""The manifest written next to every snapshot, and the folder that holds them."""

from __future__ import annotations

import json
import re
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel, ConfigDict, ValidationError

from backout.brain.tables import TableMark
from backout.errors import BackoutError
from backout.fsutil import atomic_write_json, ensure_private_dir, fsync_dir

__all__ = ["FORMAT", "Manifest", "SnapshotError", "SnapshotStore", "new_snapshot_id", "utcnow"]

FORMAT = "backout-snapshot/1"
_ID = re.compile(r"^[0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}$")


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
                f"{snapshot_id!r} is not a snapshot id (they look like 20261126T221530Z-a1b2c3); "
                "see `backout snapshot list`"
            )
        return snapshot_id

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

    def of(self, deployment: str) -> list[Manifest]:
        """Readable manifests of one deployment, newest first (a folder may be shared)."""
        return [m for m in self.manifests() if isinstance(m, Manifest) and m.deployment == deployment]

    def incomplete(self) -> list[Path]:
        """Leftovers of interrupted snapshots: temporaries, or a file whose manifest never came."""
        if not self.folder.is_dir():
            return []
        leftovers = [p for p in self.folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name]
        leftovers += [p for p in self.folder.glob("*.sqlite") if not p.with_suffix(".json").exists()]
        return sorted(leftovers)

    def remove(self, snapshot_id: str) -> None:
        """Delete one snapshot: the manifest first, so a half-removed one never looks complete."""
        self.manifest_path(snapshot_id).unlink(missing_ok=True)
        self.db_path(snapshot_id).unlink(missing_ok=True)
        fsync_dir(self.folder)
