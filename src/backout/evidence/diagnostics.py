"""The diagnostics bundle of an incident: what the service said and how it looked when it failed.

`collect_diagnostics` writes `<incident>/diagnostics/` (one file per kind of evidence, plus a
README.txt index) and `<incident>/diagnostics.tar.gz` of the same files. Everything is redacted
before it touches the disk; files are 0600, folders 0700; running it again replaces both.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tarfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backout.brain.tables import connect_readonly, quote_ident, user_tables
from backout.evidence.redact import Redactor
from backout.fsutil import ensure_private_dir, fsync_dir, replace_text

__all__ = ["DIAGNOSTICS_FILES", "DiagnosticsInput", "collect_diagnostics", "migration_history"]

DIAGNOSTICS_FILES: dict[str, str] = {
    "service.log": "the service's log lines from the bad window (as captured, redacted)",
    "health.json": "health probes around the failure: each with its time, status and body",
    "verdict.json": "the rollback verdict: decision, trigger, reason and its evidence table",
    "baseline.json": "the baseline the verdict compared against (error rate, latency, evals)",
    "schema.json": "schema stamps: at the restore point, now, and the difference between them",
    "migrations.json": "the brain's migration ledger (schema_migrations, alembic or user_version)",
    "versions.json": "versions involved: the bad one, the target, images and digests",
    "extra.json": "anything else the rollback found worth keeping",
}


@dataclass
class DiagnosticsInput:
    """Everything a diagnostics bundle holds; any part may be empty."""

    incident_id: str
    deployment: str
    logs: list[str] = field(default_factory=list)
    health: list[dict[str, Any]] = field(default_factory=list)
    verdict: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    schema_restore_point: dict[str, Any] | None = None
    schema_now: dict[str, Any] | None = None
    schema_diff: dict[str, Any] | None = None
    migrations: list[dict[str, Any]] = field(default_factory=list)
    versions: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def collect_diagnostics(folder: Path, data: DiagnosticsInput, redactor: Redactor) -> Path:
    """Write `folder/diagnostics/` and `folder/diagnostics.tar.gz`, redacted; the archive's path."""
    ensure_private_dir(folder)
    target = ensure_private_dir(folder / "diagnostics")
    files = {"README.txt": _readme(data), **_contents(data, redactor)}
    for name, text in files.items():
        replace_text(target / name, redactor.text(text), mode=0o600)
    return _archive(folder, target, list(files))


def _contents(data: DiagnosticsInput, redactor: Redactor) -> dict[str, str]:
    """The text of each file; values are redacted one by one before JSON is made of them."""
    def _json(value: Any) -> str:
        return json.dumps(redactor.obj(value), indent=2, sort_keys=True, default=str) + "\n"

    return {
        "service.log": "".join(str(line).rstrip("\n") + "\n" for line in data.logs),
        "health.json": _json(data.health),
        "verdict.json": _json(data.verdict),
        "baseline.json": _json(data.baseline),
        "schema.json": _json({"restore_point": data.schema_restore_point, "now": data.schema_now,
                              "diff": data.schema_diff}),
        "migrations.json": _json(data.migrations),
        "versions.json": _json(data.versions),
        "extra.json": _json(data.extra),
    }


def _readme(data: DiagnosticsInput) -> str:
    now = datetime.now(UTC).isoformat(timespec="seconds")
    lines = [f"Diagnostics of incident {data.incident_id} (deployment {data.deployment}),",
             f"collected by backout at {now}. Secrets are redacted as [REDACTED].", "",
             "README.txt        this index"]
    lines += [f"{name:<18}{what}" for name, what in DIAGNOSTICS_FILES.items()]
    archive = (f"diagnostics.tar.gz beside this folder holds the same files "
               f"({len(data.logs)} log lines).")
    lines += ["", archive]
    return "\n".join(lines) + "\n"


def _archive(folder: Path, source: Path, names: list[str]) -> Path:
    """diagnostics.tar.gz of `source`, written under a temporary name (0600) and renamed."""
    final = folder / "diagnostics.tar.gz"
    tmp = folder / f".diagnostics.tar.gz.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as raw:
            with tarfile.open(fileobj=raw, mode="w:gz") as tar:
                for name in names:  # only these: never a stray temporary file
                    tar.add(source / name, arcname=f"{source.name}/{name}", filter=_private_member)
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(folder)
    return final


def _private_member(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Members unpack private and carry no local user names."""
    info.mode = 0o600 if info.isfile() else 0o700
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def migration_history(brain: Path) -> list[dict[str, Any]]:
    """The rows of the brain's migration ledger, read-only; [] for a missing or unreadable brain."""
    if not brain.is_file():
        return []
    try:
        conn = connect_readonly(brain)
    except sqlite3.Error:
        return []
    try:
        return _ledger_rows(conn)
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def _ledger_rows(conn: sqlite3.Connection) -> list[dict[str, Any]]:
    tables = {name.lower(): name for name in user_tables(conn)}
    for ledger in ("schema_migrations", "alembic_version"):
        if ledger in tables:
            cursor = conn.execute(f"SELECT * FROM {quote_ident(tables[ledger])}")
            columns = [c[0] for c in cursor.description]
            return [{c: _plain(v) for c, v in zip(columns, row)} for row in cursor]
    return [{"user_version": int(conn.execute("PRAGMA user_version").fetchone()[0])}]


def _plain(value: Any) -> Any:
    """JSON-ready: blobs as hex."""
    return value.hex() if isinstance(value, bytes) else value
