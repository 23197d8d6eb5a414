"""What ran when: `.backout/history.jsonl`, one line per change of version, and restore points."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from backout.fsutil import atomic_write_json, check_component, ensure_private_dir, fsync_fd, is_component, open_private

__all__ = ["Change", "History", "RestorePoint", "config_hash", "deployment_state", "load_restore_point",
           "now_iso", "save_restore_point", "STARTS"]

Kind = Literal["upgrade", "promote", "rollback", "drill", "manual", "stop", "verdict", "unfreeze"]
STARTS = ("upgrade", "rollback", "manual", "drill")  # the kinds of line that record a version being started


def now_iso() -> str:
    """Now, UTC, ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


@dataclass
class Change:
    """One change of version (or a stop) of one deployment."""

    deployment: str
    kind: str
    from_version: str | None
    to_version: str | None
    outcome: str  # "ok" | "failed" | "stopped"
    at: str = field(default_factory=now_iso)
    reason: str = ""
    schema_before: dict[str, Any] | None = None
    schema_after: dict[str, Any] | None = None
    snapshot_before: str | None = None
    snapshot_after: str | None = None
    drain: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    duration_s: float | None = None
    detail: str = ""
    forced: bool = False  # --force took it past a safety check
    from_healthy: bool | None = None  # the version it left passed its health check first (upgrades)

    def to_dict(self) -> dict[str, Any]:
        """JSON form (the history line)."""
        return asdict(self)


class History:
    """Append-only JSON lines; each append is fsynced, a torn last line is ignored on read."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / "history.jsonl"

    def append(self, change: Change) -> None:
        """Add one line, durably."""
        ensure_private_dir(self.path.parent)
        fd = open_private(self.path)  # never through a link planted at history.jsonl
        try:
            os.write(fd, (json.dumps(change.to_dict(), default=str) + "\n").encode())
            fsync_fd(fd, self.path)
        finally:
            os.close(fd)

    def entries(self, deployment: str | None = None) -> list[dict[str, Any]]:
        """All lines (oldest first), optionally of one deployment."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # a line torn by a crash mid-write
            if deployment is None or entry.get("deployment") == deployment:
                out.append(entry)
        return out

    def last_version(self, deployment: str) -> str | None:
        """The version the last successful switch of `deployment` started."""
        for entry in reversed(self.entries(deployment)):
            if entry.get("outcome") == "ok" and entry.get("to_version"):
                return str(entry["to_version"])
        return None


@dataclass
class RestorePoint:
    """The unit a rollback returns to."""

    deployment: str
    version: str
    snapshot_id: str
    schema_stamp: dict[str, Any]
    config_hash: str
    image_digest: str | None = None
    recorded_at: str = field(default_factory=now_iso)
    volume_snapshot: str | None = None  # a volume-level snapshot of the same moment, when a provider is set

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def _restore_point_path(state_dir: Path, deployment: str) -> Path:
    return state_dir / "deployments" / _slug(deployment) / "restore-point.json"


def _slug(deployment: str) -> str:
    # Deployments without a config are named by their brain's path: mapped to one safe component
    # (no `/`, no leading `.`), with a hash of the full name when anything had to change.
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "-_.") else "_" for c in deployment).strip("._")
    safe = safe or "deployment"
    if safe == deployment and is_component(safe):
        return safe
    digest = hashlib.sha256(deployment.encode(errors="surrogateescape")).hexdigest()[:8]
    return check_component(f"{safe[-40:].lstrip('._-')}-{digest}".lstrip("-"), "deployment")


def deployment_state(state_dir: Path, deployment: str) -> Path:
    """The deployment's own folder in the state folder (its name can never leave it)."""
    return state_dir / "deployments" / _slug(deployment)


def save_restore_point(state_dir: Path, point: RestorePoint) -> None:
    """Record the restore point durably (the caller pins its snapshot)."""
    path = _restore_point_path(state_dir, point.deployment)
    ensure_private_dir(path.parent)
    atomic_write_json(path, point.to_dict())


def load_restore_point(state_dir: Path, deployment: str) -> RestorePoint | None:
    """The deployment's restore point, if one was recorded."""
    try:
        data = json.loads(_restore_point_path(state_dir, deployment).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    return RestorePoint(**data)


def config_hash(path: Path | None) -> str:
    """sha256 of the config file (what ran is only reproducible with the same config)."""
    if path is None or not path.exists():
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()
