"""Read-only facts about an SQLite file: opening it safely, its tables and their high-water marks."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["TableMark", "connect_readonly", "user_tables", "has_rowid", "table_marks", "quote_ident"]


@dataclass(frozen=True)
class TableMark:
    """Row count and highest rowid of a table (None for WITHOUT ROWID tables or empty ones)."""

    rows: int
    max_rowid: int | None

    def to_dict(self) -> dict[str, int | None]:
        """JSON form used in snapshot manifests."""
        return {"rows": self.rows, "max_rowid": self.max_rowid}

    @classmethod
    def from_dict(cls, data: dict[str, int | None]) -> "TableMark":
        """Inverse of to_dict."""
        return cls(rows=int(data["rows"] or 0), max_rowid=data.get("max_rowid"))


def quote_ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def connect_readonly(path: Path | str, immutable: bool = False) -> sqlite3.Connection:
    """Open an SQLite file read-only. `immutable` is for files nobody else can be writing
    (snapshots): no locks, no -shm, so it works in read-only folders too."""
    uri = f"file:{quote(str(Path(path).absolute()))}?mode=ro"
    if immutable:
        uri += "&immutable=1"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    return conn


def user_tables(conn: sqlite3.Connection) -> list[str]:
    """Names of the user tables (not sqlite_* internals), sorted."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND substr(name, 1, 7) <> 'sqlite_' ORDER BY name"
    ).fetchall()
    return [r[0] for r in rows]


def has_rowid(conn: sqlite3.Connection, table: str) -> bool:
    """False for WITHOUT ROWID tables."""
    try:  # SQLite >= 3.37 says so directly; older ones are asked through the table's SQL
        row = conn.execute("SELECT wr FROM pragma_table_list WHERE name = ?", (table,)).fetchone()
        if row is not None:
            return not row[0]
    except sqlite3.OperationalError:
        pass
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone()
    return not (sql and sql[0] and "WITHOUT ROWID" in " ".join(sql[0].upper().split()))


def table_marks(conn: sqlite3.Connection) -> dict[str, TableMark]:
    """Row count and max rowid of every user table: the high-water marks salvage starts from."""
    marks = {}
    for table in user_tables(conn):
        q = quote_ident(table)
        rows = int(conn.execute(f"SELECT count(*) FROM {q}").fetchone()[0])
        max_rowid = None
        if has_rowid(conn, table):
            value = conn.execute(f"SELECT max(rowid) FROM {q}").fetchone()[0]
            max_rowid = int(value) if value is not None else None
        marks[table] = TableMark(rows, max_rowid)
    return marks
