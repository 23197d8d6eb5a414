"""Salvage: the rows written to a brain during the bad window, kept as a replayable bundle.

After a brain rollback the displaced (newer) brain sits in quarantine. Salvage compares it with
the high-water marks recorded in the snapshot manifest and writes every row added or changed
since then to `out_dir`: one JSON-lines file per table, a `summary.json`, and for Engine brains the
Engine's own import bundle (written by `backout.profiles.engine_bundle`). The bundle's files are
written and read with `backout.brain.bundle_files`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import secrets
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from backout.brain.bundle_files import create_private, encode, read_jsonl, write_json_file
from backout.brain.tables import TableMark, connect_readonly, has_rowid, quote_ident, user_tables
from backout.fsutil import UnusableFolder, ensure_private_dir, unusable_folder
from backout.profiles import engine, engine_bundle
from backout.profiles.engine_bundle import ENGINE_BUNDLE_FORMAT, MEMORY_IMPORT_FILE

__all__ = [
    "ENGINE_BUNDLE_FORMAT",
    "ENGINE_MEMORY_TABLES",
    "MEMORY_IMPORT_FILE",
    "NO_MARK_NOTE",
    "SUMMARY_FILE",
    "TIMESTAMP_COLUMNS",
    "SalvageError",
    "SalvageReport",
    "TableSalvage",
    "read_bundle",
    "salvage",
]

ENGINE_MEMORY_TABLES = engine.MEMORY_TABLES  # listed first in a bundle
# Columns (compared case-insensitively) whose text value says when a row was last written.
TIMESTAMP_COLUMNS = frozenset(
    {"updated_at", "modified_at", "changed_at", "last_seen", "created_at", "ts", "timestamp"}
)
SUMMARY_FILE = "summary.json"
NO_MARK_NOTE = "no high-water mark; all rows included"

_SAFE_FILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}$")
_PROGRESS_EVERY = 1000
_REPLAY_NOTE = (
    f"Nothing here has been written back. {engine_bundle.REPLAY_NOTE} Other tables: "
    "insert rows marked 'added' and upsert rows marked 'changed' by primary key, after checking "
    "schema_diff (columns are those of the newer schema). Rows of the service's effects table "
    "(the Engine's tool calls) had effects outside the brain: list them in the rollback report, never "
    "replay them."
)

Progress = Callable[[int, int], None]


class SalvageError(Exception):
    """Salvage cannot start: the brain is missing, out_dir is not empty, or a filter matches nothing."""


@dataclass(frozen=True)
class TableSalvage:
    """What salvage found in one table of the newer brain."""

    table: str
    added: int
    changed: int
    deleted_estimate: int
    columns: list[str]
    file: str
    method: str  # "rowid", "timestamp" or "all"
    timestamp_columns: list[str] = field(default_factory=list)
    note: str | None = None

    @property
    def rows(self) -> int:
        """Rows written to the table's file."""
        return self.added + self.changed

    def to_dict(self) -> dict[str, Any]:
        """JSON form used in summary.json."""
        return {
            "table": self.table,
            "added": self.added,
            "changed": self.changed,
            "deleted_estimate": self.deleted_estimate,
            "columns": list(self.columns),
            "file": self.file,
            "method": self.method,
            "timestamp_columns": list(self.timestamp_columns),
            "note": self.note,
        }


@dataclass
class SalvageReport:
    """The result of one salvage: where the bundle is and what each table contributed."""

    out_dir: Path
    tables: list[TableSalvage]
    total: int
    since: str = ""
    source: str = ""
    snapshot_id: str | None = None
    created_at: str = ""
    schema_diff: dict[str, Any] | None = None
    memory_import: dict[str, Any] | None = None
    missing_tables: list[str] = field(default_factory=list)
    opened: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON form: exactly what summary.json holds."""
        return {
            "snapshot_id": self.snapshot_id,
            "since": self.since,
            "source": self.source,
            "opened": self.opened,
            "created_at": self.created_at,
            "out_dir": str(self.out_dir),
            "total": self.total,
            "tables": [t.to_dict() for t in self.tables],
            "missing_tables": list(self.missing_tables),
            "memory_import": self.memory_import,
            "schema_diff": self.schema_diff,
            "replay": _REPLAY_NOTE,
        }

    def render(self) -> str:
        """A short human table: table, added, changed, deleted≈ (tables with nothing are folded)."""
        shown = [t for t in self.tables if t.added or t.changed or t.deleted_estimate]
        width = max([len("table"), *(len(t.table) for t in shown)])
        lines = [f"{'table':<{width}}  {'added':>7}  {'changed':>7}  {'deleted≈':>8}"]
        for t in shown:
            flag = f"  ({t.note})" if t.note else ""
            lines.append(
                f"{t.table:<{width}}  {t.added:>7}  {t.changed:>7}  {t.deleted_estimate:>8}{flag}"
            )
        quiet = len(self.tables) - len(shown)
        if quiet:
            lines.append(f"({quiet} other table{'s' if quiet != 1 else ''} unchanged)")
        lines.append(f"total: {self.total} rows salvaged to {self.out_dir}")
        return "\n".join(lines)


# -- the public entry points ---------------------------------------------------------------------


def salvage(
    marks: dict[str, TableMark],
    since: str,
    newer_brain: Path,
    out_dir: Path,
    include: list[str] | None = None,
    exclude: list[str] | None = None,
    snapshot_id: str | None = None,
    schema_diff: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> SalvageReport:
    """Extract the rows the newer brain gained or changed since the snapshot's marks into out_dir."""
    newer_brain = Path(newer_brain)
    out_dir = Path(out_dir)
    since_norm = _normalise_since(since)
    if not newer_brain.is_file():
        raise SalvageError(f"brain {newer_brain} not found: pass the quarantined brain file")
    _check_out_dir(out_dir)
    conn, opened = _open_newer_brain(newer_brain)
    try:
        conn.execute("BEGIN")  # one read snapshot for every table
        tables = _selected_tables(conn, include, exclude)
        plans = [_plan(conn, t, marks.get(t), since_norm) for t in _ordered(tables)]
        work = _make_work_dir(out_dir)
        try:
            entries = _write_tables(conn, plans, work, progress)
            files = {e.table: work / e.file for e in entries}
            memory_import = engine_bundle.write_memory_import(conn, work, files, snapshot_id)
            report = SalvageReport(
                out_dir=out_dir,
                tables=entries,
                total=sum(e.rows for e in entries),
                since=since,
                source=str(newer_brain.absolute()),
                snapshot_id=snapshot_id,
                created_at=_utcnow(),
                schema_diff=schema_diff,
                memory_import=memory_import,
                missing_tables=sorted(set(marks) - set(user_tables(conn))),
                opened=opened,
            )
            write_json_file(work / SUMMARY_FILE, report.to_dict())
            _publish(work, out_dir)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)  # our own partial copies, never the brain
            raise
    finally:
        conn.close()
    return report


def read_bundle(out_dir: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (table, row) for every salvaged row, tables in summary order, BLOBs decoded to bytes."""
    summary = json.loads((Path(out_dir) / SUMMARY_FILE).read_text(encoding="utf-8"))
    for entry in summary["tables"]:
        for row in read_jsonl(Path(out_dir) / entry["file"]):
            yield entry["table"], row


# -- opening and choosing ------------------------------------------------------------------------


def _open_newer_brain(path: Path) -> tuple[sqlite3.Connection, str]:
    """immutable=1 ignores a -wal file, so committed rows still in the WAL would be missed."""
    if Path(f"{path}-wal").exists():
        return connect_readonly(path), "read-only (WAL sidecar present)"
    return connect_readonly(path, immutable=True), "immutable"


def _normalise_since(since: str) -> str:
    """The Engine's timestamp format (UTC, milliseconds); truncation only widens the window."""
    try:
        moment = datetime.fromisoformat(since)
    except (TypeError, ValueError):
        raise SalvageError(
            f"since={since!r} is not an ISO 8601 time: pass the snapshot manifest's created_at"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise SalvageError(f"{out_dir} exists and is not a folder: choose another salvage folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise SalvageError(
            f"{out_dir} exists and is not empty: salvage never mixes bundles; choose a new folder"
        )


def _selected_tables(
    conn: sqlite3.Connection, include: list[str] | None, exclude: list[str] | None
) -> list[str]:
    tables = [t for t in user_tables(conn) if not _is_virtual(conn, t)]
    if include is not None:
        for pattern in include:
            if not any(_matches(t, pattern) for t in tables):
                raise SalvageError(
                    f"include pattern {pattern!r} matches no table of the newer brain "
                    f"(tables: {', '.join(tables)})"
                )
        tables = [t for t in tables if any(_matches(t, p) for p in include)]
    return [t for t in tables if not any(_matches(t, p) for p in exclude or [])]


def _matches(table: str, pattern: str) -> bool:
    return fnmatch.fnmatchcase(table.lower(), pattern.lower())


def _is_virtual(conn: sqlite3.Connection, table: str) -> bool:
    """Virtual tables keep their rows in shadow tables, which are salvaged as ordinary tables."""
    row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
    sql = (row.fetchone() or [""])[0] or ""
    return sql.lstrip().upper().startswith("CREATE VIRTUAL")


def _ordered(tables: list[str]) -> list[str]:
    first = [t for t in ENGINE_MEMORY_TABLES if t in tables]
    return first + sorted(t for t in tables if t not in ENGINE_MEMORY_TABLES)


# -- planning one table --------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    table: str
    sql: str  # yields (rowid or NULL, 'added' | 'changed', *columns)
    count_sql: str
    args: dict[str, Any]
    method: str
    timestamp_columns: list[str]
    deleted_estimate: int | None  # None: computed from the rows found (timestamp method)
    mark: TableMark | None
    note: str | None


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[0] for r in conn.execute(f"SELECT * FROM {quote_ident(table)} LIMIT 0").description]


def _plan(conn: sqlite3.Connection, table: str, mark: TableMark | None, since: str) -> _Plan:
    columns = _columns(conn, table)
    ts_cols = [c for c in columns if c.lower() in TIMESTAMP_COLUMNS]
    q = quote_ident(table)
    args: dict[str, Any] = {"since": since}
    newer_since = (
        " OR ".join(
            f"(typeof({c}) = 'text' AND (julianday({c}) > julianday(:since)"
            f" OR (julianday({c}) IS NULL AND {c} > :since)))"
            for c in map(quote_ident, ts_cols)
        )
        or "0"
    )
    empty_then = mark is None or mark.rows == 0
    rowid = has_rowid(conn, table) and (
        empty_then or (mark is not None and mark.max_rowid is not None)
    )
    if rowid:
        rid = next(n for n in ("rowid", "_rowid_", "oid") if n not in {c.lower() for c in columns})
        if mark is None or mark.max_rowid is None:
            where, label, deleted = "1", "'added'", 0
        else:
            args["max"] = mark.max_rowid
            where = f"{rid} > :max OR ({newer_since})"
            label = f"CASE WHEN {rid} > :max THEN 'added' ELSE 'changed' END"
            kept = conn.execute(f"SELECT count(*) FROM {q} WHERE {rid} <= :max", args).fetchone()[0]
            deleted = max(0, mark.rows - int(kept))
        return _Plan(
            table,
            f"SELECT {rid}, {label}, * FROM {q} WHERE {where} ORDER BY {rid}",
            f"SELECT count(*) FROM {q} WHERE {where}",
            args,
            "rowid",
            ts_cols,
            deleted,
            mark,
            None,
        )
    # No usable rowid mark: rows that may already exist in the snapshot are 'changed' (upsert).
    if empty_then:
        where, label, method, note = "1", "'added'", "all", None
    elif ts_cols:
        where, label, method, note = newer_since, "'changed'", "timestamp", None
    else:
        where, label, method, note = "1", "'changed'", "all", NO_MARK_NOTE
    return _Plan(
        table,
        f"SELECT NULL, {label}, * FROM {q} WHERE {where}",
        f"SELECT count(*) FROM {q} WHERE {where}",
        args,
        method,
        ts_cols,
        0 if empty_then else None,
        mark,
        note,
    )


# -- writing -------------------------------------------------------------------------------------


def _write_tables(
    conn: sqlite3.Connection, plans: list[_Plan], work: Path, progress: Progress | None
) -> list[TableSalvage]:
    # The count pass is a second scan of every table: only worth it when someone watches a bar.
    total = sum(int(conn.execute(p.count_sql, p.args).fetchone()[0]) for p in plans) if progress else 0
    done = 0
    if progress:
        progress(0, total)
    entries = []
    used: set[str] = set()
    for plan in plans:
        file = _file_name(plan.table, used)
        counts = {"added": 0, "changed": 0}
        cur = conn.execute(plan.sql, plan.args)
        columns = [d[0] for d in cur.description][2:]
        with create_private(work / file) as fh:
            for row in cur:
                record = dict(zip(columns, row[2:]))
                record["_rowid"] = row[0]
                record["_salvage"] = row[1]
                fh.write(json.dumps(record, default=encode, ensure_ascii=False) + "\n")
                counts[row[1]] += 1
                done += 1
                if progress and done % _PROGRESS_EVERY == 0:
                    progress(done, total)
        deleted = plan.deleted_estimate
        if deleted is None:
            present = int(
                conn.execute(f"SELECT count(*) FROM {quote_ident(plan.table)}").fetchone()[0]
            )
            deleted = max(0, (plan.mark.rows if plan.mark else 0) - (present - counts["added"]))
        entries.append(
            TableSalvage(
                plan.table,
                counts["added"],
                counts["changed"],
                deleted,
                columns,
                file,
                plan.method,
                plan.timestamp_columns,
                plan.note,
            )
        )
        if progress:
            progress(done, total)
    return entries


def _file_name(table: str, used: set[str]) -> str:
    name = f"{table}.jsonl"
    if (
        not _SAFE_FILE_NAME.match(table)
        or name.lower() in used
        or name in (SUMMARY_FILE, MEMORY_IMPORT_FILE)
    ):
        name = f"table-{len(used):04d}.jsonl"
    used.add(name.lower())
    return name


def _make_work_dir(out_dir: Path) -> Path:
    """A private sibling of out_dir; renamed into place only once complete. A bundle folder that cannot be made
    where it was named (under /proc, below a file) is a SalvageError that says which and why."""
    try:
        ensure_private_dir(out_dir.parent)
        work = out_dir.parent / f".{out_dir.name}.partial-{secrets.token_hex(4)}"
        try:
            os.mkdir(work, 0o700)
        except OSError as exc:
            raise unusable_folder(work, exc, out_dir) from None
    except UnusableFolder as exc:
        raise SalvageError(str(exc)) from None
    os.chmod(work, 0o700)
    return work


def _publish(work: Path, out_dir: Path) -> None:
    # rename(2) replaces an empty folder and fails on a non-empty one: no bundle is ever mixed.
    try:
        os.rename(work, out_dir)
    except OSError as exc:
        raise SalvageError(f"could not move the salvage into {out_dir}: {exc}") from exc
    fd = os.open(out_dir.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
