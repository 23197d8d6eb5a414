"""Replay: write a salvage bundle back into the live service after a brain rollback.

Two ways in. A bundle whose service profile has an import API (the Engine's) goes through the running
service's own API: `backout.profiles.engine_bundle` sends it. Any other bundle (or no service URL) is
replayed here, with SQL straight into the live brain: rows marked "added" are inserted when the live
schema still has their columns and their key is free; rows marked "changed" are never overwritten, only
reported. Nothing is guessed: every row that is not replayed is counted with its reason, and the service
profile's effects table (effects outside the brain) and migration ledgers are never replayed. The report
and its reasons are in `backout.brain.replay_report`.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from itertools import groupby
from pathlib import Path
from typing import Any

from backout.brain.replay_report import (
    LEFT_OUT_EFFECTS,
    LEFT_OUT_LEDGER,
    LEFT_OUT_SHADOW,
    REASON_CHANGED,
    REASON_KEY_TAKEN,
    REASON_TABLE_MISSING,
    REASON_UNIQUE,
    KeyRefused,
    NotReplayed,
    ReplayError,
    ReplayReport,
    ServiceUnreachable,
    TableReplay,
    left_out_reason,
)
from backout.brain.salvage import SUMMARY_FILE, read_bundle
from backout.brain.tables import quote_ident
from backout.errors import EXIT_ENVIRONMENT
from backout.profiles import engine_bundle, generic
from backout.profiles.engine_bundle import MAX_REQUEST_BYTES, MEMORY_IMPORT_FILE, split_memory_import
from backout.profiles.model import Profile

__all__ = [
    "MAX_REQUEST_BYTES",
    "KeyRefused",
    "LEFT_OUT_EFFECTS",
    "LEFT_OUT_LEDGER",
    "NotReplayed",
    "REASON_CHANGED",
    "REASON_KEY_TAKEN",
    "REASON_TABLE_MISSING",
    "ReplayError",
    "ReplayReport",
    "ServiceUnreachable",
    "TableReplay",
    "replay_bundle",
    "split_memory_import",
]

_META = ("_rowid", "_salvage")


# -- the public entry point ----------------------------------------------------------------------


def replay_bundle(
    bundle_dir: Path,
    *,
    base_url: str | None,
    api_key: str | None,
    brain: Path | None,
    profile: Profile = generic.PROFILE,
    dry_run: bool = False,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    renumber: bool = False,
) -> ReplayReport:
    """Replay a salvage bundle into the live service (its import API, when the profile has one) or its
    brain (SQL). With `renumber` (SQL), an added row whose integer key another row took since the rollback
    is inserted under a new key, when no table's foreign key points at its table."""
    bundle_dir = Path(bundle_dir)
    summary = _load_summary(bundle_dir)
    api = profile.replay == "engine-import" and profile.import_path
    if api and (bundle_dir / MEMORY_IMPORT_FILE).is_file() and base_url:
        return engine_bundle.replay_engine(bundle_dir, summary, base_url=base_url, api_key=api_key,
                                           profile=profile, dry_run=dry_run, limit=max_request_bytes)
    if brain is None:
        raise ReplayError(
            "nothing to replay into: this bundle needs the live brain (set `brain` "
            "for the deployment in backout.toml) or, for the Engine, its health_url"
        )
    return _replay_sql(bundle_dir, summary, Path(brain), dry_run, profile, renumber)


def _load_summary(bundle_dir: Path) -> dict[str, Any]:
    if not bundle_dir.is_dir():
        raise ReplayError(
            f"salvage bundle {bundle_dir} not found: pass the folder that "
            "`backout salvage extract` wrote"
        )
    try:
        summary = json.loads((bundle_dir / SUMMARY_FILE).read_text(encoding="utf-8"))
        tables = summary["tables"]
        missing = [t["file"] for t in tables if not (bundle_dir / t["file"]).is_file()]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ReplayError(
            f"{bundle_dir} is not a readable salvage bundle ({SUMMARY_FILE}: "
            f"{exc!r}); extract it again with `backout salvage extract`"
        ) from None
    if missing:
        raise ReplayError(
            f"salvage bundle {bundle_dir} is incomplete: {', '.join(missing)} "
            "missing; extract it again with `backout salvage extract`"
        )
    return dict(summary)


# -- any other service: SQL into the live brain --------------------------------------------------


def _replay_sql(
    bundle_dir: Path, summary: dict[str, Any], brain: Path, dry_run: bool, profile: Profile,
    renumber: bool = False,
) -> ReplayReport:
    conn = _open_live_brain(brain)
    entries = {e["table"]: e for e in summary["tables"]}
    tables = {e["table"]: TableReplay(e["table"]) for e in summary["tables"]}
    table = ""
    try:
        for table, rows in groupby(read_bundle(bundle_dir), key=lambda pair: pair[0]):
            _replay_table(conn, entries[table], (row for _, row in rows), tables[table], dry_run, profile,
                          renumber)
    except (ValueError, KeyError) as exc:
        raise ReplayError(
            f"salvage bundle {bundle_dir} is corrupt at {table or 'its start'} "
            f"({exc!r}); tables before it were replayed; replaying again is safe"
        ) from None
    except sqlite3.Error as exc:
        raise ReplayError(
            f"SQLite stopped the replay of {table} into {brain}: {exc}; tables before "
            "it were replayed; replaying again is safe",
            EXIT_ENVIRONMENT,
        ) from None
    finally:
        conn.close()
    shown = [t for t in tables.values() if t.rows]
    return ReplayReport(bundle_dir, "sql", str(brain), dry_run, shown)


def _open_live_brain(brain: Path) -> sqlite3.Connection:
    if not brain.is_file():  # sqlite3.connect would create an empty one
        raise ReplayError(f"the live brain {brain} does not exist: check `brain` in backout.toml")
    try:
        conn = sqlite3.connect(brain, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA busy_timeout = 10000")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        raise ReplayError(f"{brain} is not a readable SQLite brain: {exc}") from None
    return conn


def _replay_table(
    conn: sqlite3.Connection,
    entry: dict[str, Any],
    rows: Iterator[dict[str, Any]],
    result: TableReplay,
    dry_run: bool,
    profile: Profile,
    renumber: bool = False,
) -> None:
    table, columns = entry["table"], list(entry["columns"])
    left_out = left_out_reason(table, profile) or (LEFT_OUT_SHADOW if _is_shadow(conn, table) else None)
    refusal = None if left_out else _refusal(conn, table, columns)
    if left_out or refusal:
        _pass_over(rows, result, left_out, refusal)
        return
    writer = _TableWriter(conn, table, columns, renumber)
    conn.execute("BEGIN" if dry_run else "BEGIN IMMEDIATE")  # one transaction per table
    try:
        for row in rows:
            result.rows += 1
            writer.replay(row, result, dry_run)
        conn.execute("ROLLBACK" if dry_run else "COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _refusal(conn: sqlite3.Connection, table: str, columns: list[str]) -> str | None:
    """Why no row of `table` can be replayed into the live brain, or None. (Columns the live table lacks
    refuse only the rows that hold a value in them: see _TableWriter.)"""
    return REASON_TABLE_MISSING if _live_columns(conn, table) is None else None


def _pass_over(
    rows: Iterable[dict[str, Any]], result: TableReplay, left_out: str | None, refusal: str | None
) -> None:
    """Count the rows of a table that is left out by design, or that cannot be replayed."""
    if left_out:
        result.left_out = NotReplayed(left_out)
    for row in rows:
        result.rows += 1
        if result.left_out is not None:
            result.left_out.rows += 1
        else:
            result.skip(refusal or REASON_TABLE_MISSING, _display_key(row, []))


def _live_columns(conn: sqlite3.Connection, table: str) -> set[str] | None:
    found = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE", (table,)
    ).fetchone()
    if found is None:
        return None
    return {r[1].lower() for r in conn.execute(f"PRAGMA table_xinfo({quote_ident(table)})")}


def _is_shadow(conn: sqlite3.Connection, table: str) -> bool:
    try:
        row = conn.execute("SELECT type FROM pragma_table_list WHERE name = ?", (table,)).fetchone()
    except sqlite3.OperationalError:  # SQLite < 3.37 cannot tell
        return False
    return bool(row) and row[0] == "shadow"


def _primary_key(conn: sqlite3.Connection, table: str) -> list[str]:
    info = conn.execute(f"PRAGMA table_info({quote_ident(table)})").fetchall()
    return [r[1] for r in sorted((r for r in info if r[5]), key=lambda r: r[5])]


def _renumberable(conn: sqlite3.Connection, table: str, pk: list[str]) -> bool:
    """Whether a row of `table` may take a new key: its key is the rowid (a single INTEGER PRIMARY KEY) and no
    table's foreign key points at `table` (nothing would be left pointing at the old number)."""
    if len(pk) != 1:
        return False
    declared = next((r[2] for r in conn.execute(f"PRAGMA table_info({quote_ident(table)})") if r[1] == pk[0]), "")
    if str(declared).upper() != "INTEGER":
        return False
    for (other,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
        for ref in conn.execute(f"PRAGMA foreign_key_list({quote_ident(other)})"):
            if str(ref[2]).lower() == table.lower():
                return False
    return True


def _generated_columns(conn: sqlite3.Connection, table: str) -> set[str]:
    """Generated columns (hidden 2 or 3) are computed by SQLite and cannot be inserted."""
    info = conn.execute(f"PRAGMA table_xinfo({quote_ident(table)})").fetchall()
    return {r[1].lower() for r in info if r[6] in (2, 3)}


def _display_key(row: dict[str, Any], pk: list[str]) -> Any:
    """How a row is named in the report: its primary key, else its rowid in the newer brain."""
    lowered = {k.lower(): k for k in row}
    if pk and all(c.lower() in lowered for c in pk):
        values = [row[lowered[c.lower()]] for c in pk]
        return values[0] if len(values) == 1 else values
    if row.get("_rowid") is not None:
        return {"rowid": row["_rowid"]}
    return {k: v for k, v in list(row.items())[:2] if k not in _META}


class _TableWriter:
    """Replays the rows of one table: look the key up, compare, then INSERT OR IGNORE or report."""

    def __init__(self, conn: sqlite3.Connection, table: str, columns: list[str], renumber: bool = False) -> None:
        live = _live_columns(conn, table) or set()
        # A column the newer version added and the live table lacks: rows that left it NULL lose nothing without it.
        self.gone = [c for c in columns if c.lower() not in live]
        columns = [c for c in columns if c.lower() in live]
        self.conn, self.columns = conn, columns
        lowered = {c.lower() for c in columns}
        pk = _primary_key(conn, table)
        self.pk = pk if pk and all(c.lower() in lowered for c in pk) else []
        # Without a usable primary key a row is "present" only when an identical row exists.
        key = self.pk or columns
        q = quote_ident(table)
        where = " AND ".join(f"{quote_ident(c)} IS ?" for c in key) or "1"
        self.lookup = (
            f"SELECT {', '.join(map(quote_ident, columns))} FROM {q} WHERE {where} LIMIT 1"
        )
        self.key_of = [self._index(c) for c in key]
        generated = _generated_columns(conn, table)
        self.written = [i for i, c in enumerate(columns) if c.lower() not in generated]
        cols = ", ".join(quote_ident(columns[i]) for i in self.written)
        marks = ", ".join("?" * len(self.written))
        self.insert = f"INSERT OR IGNORE INTO {q} ({cols}) VALUES ({marks})"
        self.renumber = renumber and _renumberable(conn, table, self.pk)
        if self.renumber:  # found again by every other column (a second replay adds nothing), inserted without the key
            pk = self._index(self.pk[0])
            self.others = [i for i in self.written if i != pk]
            where = " AND ".join(f"{quote_ident(columns[i])} IS ?" for i in self.others) or "1"
            self.twin = f"SELECT {quote_ident(self.pk[0])} FROM {q} WHERE {where} LIMIT 1"
            self.insert_new = (f"INSERT INTO {q} ({', '.join(quote_ident(columns[i]) for i in self.others)}) "
                               f"VALUES ({', '.join('?' * len(self.others))})")

    def _index(self, column: str) -> int:
        return next(i for i, c in enumerate(self.columns) if c.lower() == column.lower())

    def replay(self, row: dict[str, Any], result: TableReplay, dry_run: bool) -> None:
        """Replay one salvaged row, counting what happened to it in `result`."""
        values = [row.get(c) for c in self.columns]
        key = _display_key(row, self.pk)
        holding = [c for c in self.gone if row.get(c) is not None]
        if holding:
            result.skip(f"columns gone: {', '.join(holding)}", key)
            return
        live = self.conn.execute(self.lookup, [values[i] for i in self.key_of]).fetchone()
        if live is not None and list(live) == values:
            result.already_present += 1
        elif row.get("_salvage") != "added":
            result.skip(REASON_CHANGED, key)
        elif live is not None and self.renumber:
            self._insert_renumbered(values, result, key, dry_run)
        elif live is not None:
            result.skip(REASON_KEY_TAKEN, key)
        elif dry_run:
            result.replayed += 1
        else:
            self._insert(values, result, key)

    def _insert_renumbered(self, values: list[Any], result: TableReplay, key: Any, dry_run: bool) -> None:
        twin = self.conn.execute(self.twin, [values[i] for i in self.others]).fetchone()
        if twin is not None:  # replayed under a new key before
            result.already_present += 1
            return
        if dry_run:
            result.replayed += 1
            result.renumbered.append({"from": key, "to": None})
            return
        try:
            cur = self.conn.execute(self.insert_new, [values[i] for i in self.others])
        except sqlite3.IntegrityError as exc:
            result.skip(f"refused by the live brain: {exc}", key)
            return
        result.replayed += 1
        result.renumbered.append({"from": key, "to": cur.lastrowid})

    def _insert(self, values: list[Any], result: TableReplay, key: Any) -> None:
        try:
            cur = self.conn.execute(self.insert, [values[i] for i in self.written])
        except sqlite3.IntegrityError as exc:
            result.skip(f"refused by the live brain: {exc}", key)
            return
        if cur.rowcount == 1:
            result.replayed += 1
        else:
            result.skip(REASON_UNIQUE, key)
