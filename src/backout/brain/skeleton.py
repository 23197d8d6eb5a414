"""A skeleton of a brain: its whole schema, and the rows of its small tables only.

Enough for a service to decide at boot whether it can read the brain (migration ledgers, meta
tables and `PRAGMA user_version` come along), at a tiny fraction of a full copy's cost. A trial
boot that is refused on the skeleton is refused on the brain too; one that passes is repeated on a
full copy."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from backout.brain.tables import connect_readonly, quote_ident, user_tables
from backout.fsutil import create_private

__all__ = ["copy_brain_skeleton"]

SMALL_TABLE_ROWS = 1000


def copy_brain_skeleton(source: Path, dest: Path, small_rows: int = SMALL_TABLE_ROWS) -> list[str]:
    """Write the skeleton of `source` to `dest`; returns the tables whose rows were left out."""
    os.close(create_private(dest))
    src = connect_readonly(source)
    out = sqlite3.connect(dest, isolation_level=None)
    try:
        src.execute("BEGIN")  # one consistent view of schema and rows
        objects = src.execute("SELECT type, name, sql FROM sqlite_master WHERE sql IS NOT NULL "
                              "AND name NOT LIKE 'sqlite_%' ORDER BY CASE type WHEN 'table' THEN 0 "
                              "WHEN 'index' THEN 1 WHEN 'view' THEN 2 ELSE 3 END").fetchall()
        out.execute("BEGIN")
        virtual = [name for kind, name, sql in objects if kind == "table" and sql.upper().startswith("CREATE VIRTUAL")]
        for kind, name, sql in objects:
            if kind == "table" and any(name.startswith(f"{v}_") for v in virtual):
                continue  # a shadow table: creating its virtual table made it already
            out.execute(sql)
        def virtual_or_shadow(t: str) -> bool:
            return t in virtual or any(t.startswith(f"{v}_") for v in virtual)

        left_out = [t for t in user_tables(src)
                    if virtual_or_shadow(t) or not _copy_if_small(src, out, t, small_rows)]
        out.execute(f"PRAGMA user_version = {int(src.execute('PRAGMA user_version').fetchone()[0])}")
        out.execute("COMMIT")
        return left_out
    finally:
        src.close()
        out.close()


def _copy_if_small(src: sqlite3.Connection, out: sqlite3.Connection, table: str, limit: int) -> bool:
    q = quote_ident(table)
    if src.execute(f"SELECT count(*) FROM (SELECT 1 FROM {q} LIMIT {limit + 1})").fetchone()[0] > limit:
        return False
    try:
        rows = src.execute(f"SELECT * FROM {q}").fetchall()
    except sqlite3.DatabaseError:  # virtual tables whose module is missing here
        return False
    if rows:
        marks = ", ".join("?" * len(rows[0]))
        try:
            out.executemany(f"INSERT INTO {q} VALUES ({marks})", rows)
        except sqlite3.DatabaseError:  # generated columns and the like: the schema is what matters
            return False
    return True
