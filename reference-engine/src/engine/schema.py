"""Forward-only SQL migrations applied at start-up, and the check that a brain is readable."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from typing import Literal

from engine.releases import Release

__all__ = ["Migration", "SchemaState", "load_migrations", "migrate", "LEDGER_DDL"]

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
  id             INTEGER PRIMARY KEY,
  name           TEXT NOT NULL,
  sha256         TEXT NOT NULL,
  applied_at     TEXT NOT NULL,
  engine_version TEXT NOT NULL
)
"""
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_COMPAT = re.compile(r"^--\s*compat:\s*(additive|forward-only)\s*$", re.M)

Status = Literal["ok", "MIGRATION_REQUIRED", "MIGRATION_CHECKSUM_MISMATCH", "MIGRATION_FAILED"]


@dataclass(frozen=True)
class Migration:
    """One numbered SQL file."""

    id: int
    name: str
    sql: str
    additive: bool

    @property
    def sha256(self) -> str:
        """Checksum recorded in the ledger; a changed file is detected at the next start."""
        return hashlib.sha256(self.sql.encode()).hexdigest()


@dataclass(frozen=True)
class SchemaState:
    """What the start-up migration run found and did."""

    status: Status
    head: int  # highest migration id recorded in the brain
    applied: tuple[int, ...] = ()  # ids applied by this start
    message: str = ""

    @property
    def ok(self) -> bool:
        """True when the release can serve on this brain."""
        return self.status == "ok"


def load_migrations() -> list[Migration]:
    """All migration files shipped with the package, in id order."""
    found = []
    for entry in resources.files("engine.migrations").iterdir():
        match = _NAME.match(entry.name)
        if not match:
            continue
        sql = entry.read_text(encoding="utf-8")
        compat = _COMPAT.search(sql)
        if compat is None:
            raise ValueError(f"migration {entry.name} lacks a '-- compat:' header")
        found.append(Migration(int(match[1]), match[2], sql, compat[1] == "additive"))
    return sorted(found, key=lambda m: m.id)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _min_reader(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM engine_meta WHERE key = 'min_reader'").fetchone()
    return int(row[0]) if row else 0


def _apply(conn: sqlite3.Connection, migration: Migration, release: Release) -> None:
    """Apply one migration and record it, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _statements(migration.sql):
            conn.execute(statement)
        conn.execute(
            "INSERT INTO schema_migrations (id, name, sha256, applied_at, engine_version)"
            " VALUES (?, ?, ?, ?, ?)",
            (migration.id, migration.name, migration.sha256, _now(), release.version),
        )
        if not migration.additive:
            # Readers older than this migration can no longer read the brain.
            conn.execute(
                "INSERT INTO engine_meta (key, value) VALUES ('min_reader', ?)"
                " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (str(migration.id),),
            )
        conn.execute(f"PRAGMA user_version = {migration.id}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (sqlite3.complete_statement knows where they end)."""
    out, buf = [], ""
    for line in sql.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            if buf.strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip() and not all(s.startswith("--") for s in buf.strip().splitlines()):
        out.append(buf.strip())
    return out


def migrate(conn: sqlite3.Connection, release: Release) -> SchemaState:
    """Bring the brain up to `release.head`, or report why this release cannot serve on it."""
    conn.execute(LEDGER_DDL)
    ledger = {row[0]: row[1] for row in conn.execute("SELECT id, sha256 FROM schema_migrations")}
    known = [m for m in load_migrations() if m.id <= release.head]
    recorded_head = max(ledger, default=0)
    unknown = sorted(set(ledger) - {m.id for m in known})
    if unknown and _min_reader(conn) > release.head:
        return SchemaState(
            "MIGRATION_REQUIRED",
            recorded_head,
            message=(
                f"brain has migrations {unknown} that release {release.version} does not know "
                f"and cannot read (needs migration head >= {_min_reader(conn)}); "
                "run a newer release or restore a brain from before the upgrade"
            ),
        )
    for m in known:
        if m.id in ledger and ledger[m.id] != m.sha256:
            return SchemaState(
                "MIGRATION_CHECKSUM_MISMATCH",
                recorded_head,
                message=f"migration {m.id:04d}_{m.name} recorded in the brain differs from the file",
            )
    applied = []
    for m in known:
        if m.id not in ledger:
            _apply(conn, m, release)
            applied.append(m.id)
    head = max([recorded_head, *applied])
    return SchemaState("ok", head, tuple(applied))
