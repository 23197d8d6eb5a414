"""Schema stamps of a brain, the diff between two of them, and a lint of migration files.

A **schema stamp** says what schema a brain has: its migration head (a `schema_migrations`
ledger, `alembic_version`, or `PRAGMA user_version`) and a fingerprint of its normalised
`sqlite_master`. `diff` classifies every difference between two stamps as *additive* (a reader
of the old schema can still read and write the new one) or *breaking* (it may fail): that is what
decides whether rolling back the image is enough or the brain must be restored too.
"""

from __future__ import annotations

import hashlib
import json
import re
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypedDict

from backout.brain.tables import connect_readonly, has_rowid, quote_ident, user_tables

__all__ = [
    "ColumnInfo",
    "IndexInfo",
    "LintFile",
    "LintReport",
    "SchemaChange",
    "SchemaDiff",
    "SchemaError",
    "SchemaStamp",
    "diff",
    "lint",
    "stamp",
]

HeadSource = Literal["schema_migrations", "alembic_version", "django_migrations", "user_version"]
ChangeKind = Literal["additive", "breaking"]
Breaks = Literal["none", "reads", "writes"]  # what of the old version a change breaks: its reads (and so
# its writes), or only its writes (a constraint or NOT NULL column it does not fill)
ObjectKind = Literal["table", "column", "index", "view", "trigger"]
DiffKind = Literal["none", "additive", "breaking"]
LintKind = Literal["none", "additive", "breaking", "error"]


class SchemaError(Exception):
    """A brain or migrations folder that cannot be read; the message says what to do instead."""


class ColumnInfo(TypedDict):
    """One column, as PRAGMA table_xinfo reports it."""

    name: str
    type: str
    notnull: bool
    default: str | None  # the SQL text of the default, as SQLite keeps it
    pk: int  # position in the primary key, 0 when not part of it
    hidden: int  # 0 normal, 1 hidden (virtual table), 2 generated VIRTUAL, 3 generated STORED


class IndexInfo(TypedDict):
    """One explicit index (autoindexes belong to their table's constraints)."""

    table: str
    unique: bool
    columns: list[str]
    partial: bool
    sql: str  # normalised CREATE INDEX


# --- SQL normalisation -----------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*|/\*.*?(?:\*/|\Z))
    | (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")*"|`(?:[^`]|``)*`|\[[^\]]*\])
    | (?P<word>[A-Za-z0-9_$\u0080-\U0010ffff]+)
    | (?P<op>->>|->|\|\||<<|>>|<=|>=|==|!=|<>|.)
    """,
    re.VERBOSE | re.DOTALL,
)
_PLAIN_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# A quoted identifier that is a keyword must stay quoted, or `"check" TEXT` would read as a
# CHECK constraint when the table body is split into columns and constraints.
_KEYWORDS = frozenset(
    """abort action add after all alter always analyze and as asc attach autoincrement before
    begin between by cascade case cast check collate column commit conflict constraint create
    cross current current_date current_time current_timestamp database default deferrable
    deferred delete desc detach distinct do drop each else end escape except exclude exclusive
    exists explain fail filter first following for foreign from full generated glob group groups
    having if ignore immediate in index indexed initially inner insert instead intersect into is
    isnull join key last left like limit match materialized natural no not nothing notnull null
    nulls of offset on or order others outer over partition plan pragma preceding primary query
    raise range recursive references regexp reindex release rename replace restrict returning
    right rollback row rows savepoint select set table temp temporary then ties to transaction
    trigger unbounded union unique update using vacuum values view virtual when where window with
    without""".split()
)
_NO_SPACE_BEFORE = frozenset({")", ",", ".", "("})
_NO_SPACE_AFTER = frozenset({"(", "."})
_TABLE_CONSTRAINT_START = frozenset({"constraint", "primary", "unique", "check", "foreign"})


def _tokens(sql: str) -> list[str]:
    """SQL as tokens with comments dropped, words lower-cased and identifier quoting unified."""
    out: list[str] = []
    for match in _TOKEN.finditer(sql):
        group, text = match.lastgroup, match.group()
        if group in ("space", "comment"):
            continue
        if group == "word":
            out.append(text.lower())  # keywords and unquoted identifiers are case-insensitive
        elif group == "quoted":
            inner = text[1:-1]
            inner = inner.replace('""', '"') if text[0] == '"' else inner.replace("``", "`")
            # SQLite rewrites names on ALTER TABLE RENAME as "name": unquote where that is safe
            # so a renamed table and a freshly created one normalise alike.
            if _PLAIN_IDENT.fullmatch(inner) and inner.lower() not in _KEYWORDS:
                out.append(inner.lower())
            else:
                out.append(quote_ident(inner.lower()))
        else:
            out.append(text)
    return out


def _join(tokens: list[str]) -> str:
    """Tokens back to one line of SQL with canonical spacing."""
    parts: list[str] = []
    prev = ""
    for tok in tokens:
        if parts and tok not in _NO_SPACE_BEFORE and prev not in _NO_SPACE_AFTER:
            parts.append(" ")
        parts.append(tok)
        prev = tok
    return "".join(parts)


def _normalise(sql: str | None) -> str:
    """Whitespace, comments, keyword case and identifier quoting no longer matter."""
    return _join(_tokens(sql or ""))


def _ident_key(token: str) -> str:
    """The name a (normalised) identifier token refers to, for case-insensitive matching."""
    if token.startswith('"') and token.endswith('"') and len(token) >= 2:
        return token[1:-1].replace('""', '"').lower()
    return token.lower()


@dataclass(frozen=True)
class _TableParts:
    """A CREATE TABLE split into what the column list of PRAGMA table_xinfo does not show."""

    column_defs: dict[str, str]  # column name (lower) -> its definition after the name
    constraints: tuple[str, ...]  # table constraints, sorted: their order carries no meaning
    options: str  # what follows the column list: WITHOUT ROWID, STRICT


def _table_parts(sql: str) -> _TableParts | None:
    """Split a normalised CREATE TABLE into column definitions, constraints and options."""
    toks = _tokens(sql)
    if "(" not in toks:
        return None
    start = toks.index("(")
    items: list[list[str]] = [[]]
    depth, end = 0, -1
    for i in range(start, len(toks)):
        tok = toks[i]
        if tok == "(":
            depth += 1
            if depth == 1:
                continue
        elif tok == ")":
            depth -= 1
            if depth == 0:
                end = i
                break
        elif tok == "," and depth == 1:
            items.append([])
            continue
        items[-1].append(tok)
    if end < 0:
        return None
    columns: dict[str, str] = {}
    constraints: list[str] = []
    for item in items:
        if not item:
            continue
        if item[0] in _TABLE_CONSTRAINT_START:
            constraints.append(_join(item))
        else:
            columns[_ident_key(item[0])] = _join(item[1:])
    return _TableParts(columns, tuple(sorted(constraints)), _join(toks[end + 1 :]))


def _body(sql: str) -> str:
    """The normalised text from the first parenthesis on: a definition without its own name."""
    toks = _tokens(sql)
    return _join(toks[toks.index("(") :]) if "(" in toks else _join(toks)


def _trigger_table(sql: str) -> str:
    """The table a CREATE TRIGGER is attached to (the word after its first ON)."""
    toks = _tokens(sql)
    if "on" in toks:
        i = toks.index("on") + 1
        if i < len(toks):
            return _ident_key(toks[i])
    return ""


# --- stamp -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaStamp:
    """What schema a brain has: migration head, fingerprint and the objects behind it."""

    head: str | None
    head_source: HeadSource | None
    user_version: int
    ledger: dict[
        str, Any
    ]  # {"schema_migrations": str|None, "alembic_version": str|None, "django_migrations": str|None, "user_version": int}
    fingerprint: str
    tables: dict[str, list[ColumnInfo]] = field(default_factory=dict)
    without_rowid: list[str] = field(default_factory=list)
    table_sql: dict[str, str] = field(default_factory=dict)  # normalised CREATE TABLE
    indexes: dict[str, IndexInfo] = field(default_factory=dict)
    views: dict[str, str] = field(default_factory=dict)
    triggers: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form stored in snapshot manifests."""
        return {
            "head": self.head,
            "head_source": self.head_source,
            "user_version": self.user_version,
            "ledger": dict(self.ledger),
            "fingerprint": self.fingerprint,
            "tables": {name: [dict(c) for c in cols] for name, cols in self.tables.items()},
            "without_rowid": list(self.without_rowid),
            "table_sql": dict(self.table_sql),
            "indexes": {
                name: {**ix, "columns": list(ix["columns"])} for name, ix in self.indexes.items()
            },
            "views": dict(self.views),
            "triggers": dict(self.triggers),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SchemaStamp:
        """Inverse of to_dict."""
        tables = {
            name: [_column_from_dict(c) for c in cols]
            for name, cols in data.get("tables", {}).items()
        }
        indexes = {name: _index_from_dict(ix) for name, ix in data.get("indexes", {}).items()}
        return cls(
            head=data.get("head"),
            head_source=data.get("head_source"),
            user_version=int(data.get("user_version") or 0),
            ledger=dict(data.get("ledger", {})),
            fingerprint=str(data["fingerprint"]),
            tables=tables,
            without_rowid=list(data.get("without_rowid", [])),
            table_sql=dict(data.get("table_sql", {})),
            indexes=indexes,
            views=dict(data.get("views", {})),
            triggers=dict(data.get("triggers", {})),
        )


def _column_from_dict(data: dict[str, Any]) -> ColumnInfo:
    return ColumnInfo(
        name=str(data["name"]),
        type=str(data.get("type") or ""),
        notnull=bool(data.get("notnull")),
        default=data.get("default"),
        pk=int(data.get("pk") or 0),
        hidden=int(data.get("hidden") or 0),
    )


def _index_from_dict(data: dict[str, Any]) -> IndexInfo:
    return IndexInfo(
        table=str(data["table"]),
        unique=bool(data.get("unique")),
        columns=[str(c) for c in data.get("columns", [])],
        partial=bool(data.get("partial")),
        sql=str(data.get("sql") or ""),
    )


def stamp(source: Path | str | sqlite3.Connection) -> SchemaStamp:
    """Stamp a brain, given its path (opened read-only) or an open connection."""
    if isinstance(source, sqlite3.Connection):
        return _stamp_connection(source)
    path = Path(source)
    _check_brain_path(path)
    conn = connect_readonly(path)
    try:
        return _stamp_connection(conn)
    except sqlite3.DatabaseError as exc:
        raise _unreadable(path, exc) from None
    finally:
        conn.close()


def _check_brain_path(path: Path) -> None:
    """Refuse early what cannot be a brain, so no SQLite call ever creates a file."""
    if not path.exists():
        raise SchemaError(f"{path}: no such file; give the path of the brain (the SQLite file)")
    if path.is_dir():
        raise SchemaError(f"{path} is a folder; give the path of the brain (the SQLite file)")


def _unreadable(path: Path, exc: sqlite3.DatabaseError) -> SchemaError:
    # sqlite3 opens any file lazily; only the first query finds out it is not a database.
    if not isinstance(exc, sqlite3.OperationalError):
        return SchemaError(f"{path} is not an SQLite database ({exc}); give the path of the brain")
    return SchemaError(f"cannot read {path} ({exc}); check that it is the brain and is readable")


def _stamp_connection(conn: sqlite3.Connection) -> SchemaStamp:
    # One read transaction, so a migration committing meanwhile cannot give a mixed stamp.
    own_txn = not conn.in_transaction
    if own_txn:
        conn.execute("BEGIN")
    try:
        return _read_stamp(conn)
    finally:
        if own_txn and conn.in_transaction:
            conn.execute("ROLLBACK")


def _read_stamp(conn: sqlite3.Connection) -> SchemaStamp:
    master = conn.execute(
        "SELECT type, name, tbl_name, sql FROM sqlite_master"
        " WHERE name NOT LIKE 'sqlite_%' AND sql IS NOT NULL"
    ).fetchall()
    tables_names = user_tables(conn)
    tables = {name: _columns(conn, name) for name in tables_names}
    table_sql = {name: _normalise(sql) for kind, name, _, sql in master if kind == "table"}
    indexes = {
        name: _index(conn, name, tbl, sql) for kind, name, tbl, sql in master if kind == "index"
    }
    views = {name: _normalise(sql) for kind, name, _, sql in master if kind == "view"}
    triggers = {name: _normalise(sql) for kind, name, _, sql in master if kind == "trigger"}
    ledger = _ledger(conn, tables)
    head, source = _head(ledger)
    return SchemaStamp(
        head=head,
        head_source=source,
        user_version=int(ledger["user_version"]),
        ledger=ledger,
        fingerprint=_fingerprint(master),
        tables=tables,
        without_rowid=[name for name in tables_names if not has_rowid(conn, name)],
        table_sql=dict(sorted(table_sql.items())),
        indexes=dict(sorted(indexes.items())),
        views=dict(sorted(views.items())),
        triggers=dict(sorted(triggers.items())),
    )


def _fingerprint(master: list[tuple[str, str, str, str]]) -> str:
    entries = sorted(
        (kind, name.lower(), tbl.lower(), _normalise(sql)) for kind, name, tbl, sql in master
    )
    return hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()


def _columns(conn: sqlite3.Connection, table: str) -> list[ColumnInfo]:
    try:
        rows = conn.execute(f"PRAGMA table_xinfo({quote_ident(table)})").fetchall()
    except sqlite3.OperationalError:
        # A virtual table whose module this SQLite lacks: its columns cannot be listed, but its
        # SQL still counts in the fingerprint.
        return []
    return [
        ColumnInfo(
            name=name,
            type=ctype or "",
            notnull=bool(notnull),
            default=dflt,
            pk=int(pk),
            hidden=int(hidden),
        )
        for _cid, name, ctype, notnull, dflt, pk, hidden in rows
    ]


def _index(conn: sqlite3.Connection, name: str, table: str, sql: str) -> IndexInfo:
    unique, partial = False, False
    for row in conn.execute(f"PRAGMA index_list({quote_ident(table)})"):
        if row[1] == name:
            unique, partial = bool(row[2]), bool(row[4])
    columns = []
    for _seq, cid, col in conn.execute(f"PRAGMA index_info({quote_ident(name)})"):
        columns.append(col if col is not None else ("rowid" if cid == -1 else "<expression>"))
    return IndexInfo(
        table=table, unique=unique, columns=columns, partial=partial, sql=_normalise(sql)
    )


def _ledger(conn: sqlite3.Connection, tables: dict[str, list[ColumnInfo]]) -> dict[str, Any]:
    """Every migration-head source the brain has, with its value (None when absent or empty)."""
    by_lower = {name.lower(): name for name in tables}
    ledger: dict[str, Any] = {"schema_migrations": None, "alembic_version": None}
    if "schema_migrations" in by_lower:
        name = by_lower["schema_migrations"]
        key = _ledger_key(tables[name])
        if key is not None:
            values = [
                r[0] for r in conn.execute(f"SELECT {quote_ident(key)} FROM {quote_ident(name)}")
            ]
            ledger["schema_migrations"] = _max_version(values)
    if "alembic_version" in by_lower:
        rows = conn.execute(f"SELECT version_num FROM {quote_ident(by_lower['alembic_version'])}")
        # Several rows mean several alembic branch heads; all of them together are the head.
        heads = sorted(str(r[0]) for r in rows if r[0] is not None)
        ledger["alembic_version"] = ",".join(heads) or None
    if "django_migrations" in by_lower:
        ledger["django_migrations"] = _django_head(conn, by_lower["django_migrations"])
    ledger["user_version"] = int(conn.execute("PRAGMA user_version").fetchone()[0])
    return ledger


def _django_head(conn: sqlite3.Connection, table: str) -> str | None:
    """Django's head: the newest migration of every app ("app.0003_name", sorted by app), since each app
    migrates on its own; names start with a zero-padded number, so the greatest name is the newest."""
    try:
        rows = conn.execute(f"SELECT app, max(name) FROM {quote_ident(table)} GROUP BY app ORDER BY app")
        heads = [f"{app}.{name}" for app, name in rows if app and name]
    except sqlite3.DatabaseError:
        return None  # not Django's table after all
    return ",".join(heads) or None


def _ledger_key(columns: list[ColumnInfo]) -> str | None:
    """The column holding migration ids: `version` (Rails, golang-migrate), `id`, else the key."""
    names = {c["name"].lower(): c["name"] for c in columns}
    for wanted in ("version", "id"):
        if wanted in names:
            return names[wanted]
    pk = [c["name"] for c in columns if c["pk"]]
    return pk[0] if pk else (columns[0]["name"] if columns else None)


def _max_version(values: list[Any]) -> str | None:
    """Highest id: numeric when every id is a number (so 10 beats 9), else by text."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    try:
        return str(max(int(str(v)) for v in present))
    except ValueError:
        return max(str(v) for v in present)


def _head(ledger: dict[str, Any]) -> tuple[str | None, HeadSource | None]:
    if ledger.get("schema_migrations") is not None:
        return str(ledger["schema_migrations"]), "schema_migrations"
    if ledger.get("alembic_version") is not None:
        return str(ledger["alembic_version"]), "alembic_version"
    if ledger.get("django_migrations") is not None:
        return str(ledger["django_migrations"]), "django_migrations"
    if ledger.get("user_version"):
        return str(ledger["user_version"]), "user_version"
    return None, None


# --- diff ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SchemaChange:
    """One difference between two schemas and whether a reader of the old one survives it."""

    kind: ChangeKind
    object: ObjectKind
    table: str
    name: str
    detail: str
    loses_data: bool = False  # the change took rows or values with it (a dropped table or column)
    breaks: Breaks | None = None  # None: "none" when additive, else "reads"

    @property
    def broken(self) -> Breaks:
        """What of the old version this change breaks."""
        if self.breaks is not None:
            return self.breaks
        return "none" if self.kind == "additive" else "reads"

    @property
    def where(self) -> str:
        """`table.name`, or just the name for tables and views."""
        return self.name if self.object in ("table", "view") else f"{self.table}.{self.name}"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "kind": self.kind,
            "object": self.object,
            "table": self.table,
            "name": self.name,
            "detail": self.detail,
            "loses_data": self.loses_data,
            "breaks": self.broken,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SchemaChange:
        """Inverse of to_dict."""
        return cls(data["kind"], data["object"], data["table"], data["name"], data["detail"],
                   bool(data.get("loses_data", False)), data.get("breaks"))


@dataclass(frozen=True)
class SchemaDiff:
    """Every change from one schema to another."""

    changes: list[SchemaChange] = field(default_factory=list)

    @property
    def identical(self) -> bool:
        """True when nothing changed."""
        return not self.changes

    @property
    def breaking(self) -> list[SchemaChange]:
        """The changes a reader of the old schema may fail on."""
        return [c for c in self.changes if c.kind == "breaking"]

    @property
    def writes_only(self) -> list[SchemaChange]:
        """The changes an old version still reads through but whose writes fail (a new NOT NULL column
        without a default, a new unique index, CHECK or UNIQUE constraint): a trial boot that only reads
        does not show them."""
        return [c for c in self.changes if c.broken == "writes"]

    @property
    def additive_only(self) -> bool:
        """True when a reader of the old schema can read the new one (also when identical)."""
        return not self.breaking

    @property
    def kind(self) -> DiffKind:
        """`none`, `additive` or `breaking`: the worst change."""
        if self.breaking:
            return "breaking"
        return "additive" if self.changes else "none"

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"kind": self.kind, "changes": [c.to_dict() for c in self.changes]}


def _additive(obj: ObjectKind, table: str, name: str, detail: str) -> SchemaChange:
    return SchemaChange("additive", obj, table, name, detail)


def _breaking(obj: ObjectKind, table: str, name: str, detail: str, loses_data: bool = False,
              breaks: Breaks = "reads") -> SchemaChange:
    return SchemaChange("breaking", obj, table, name, detail, loses_data, breaks)


def diff(old: SchemaStamp, new: SchemaStamp) -> SchemaDiff:
    """Classify every change from `old` to `new` as additive or breaking."""
    changes: list[SchemaChange] = []
    renamed = _diff_tables(old, new, changes)
    dropped = set(old.tables) - set(new.tables) - set(renamed)
    _diff_indexes(old, new, dropped, renamed, changes)
    _diff_sql_objects("view", old.views, new.views, dropped, changes)
    _diff_sql_objects("trigger", old.triggers, new.triggers, dropped, changes)
    rank = {"table": 0, "column": 1, "index": 2, "trigger": 3, "view": 4}
    return SchemaDiff(sorted(changes, key=lambda c: (c.table, rank[c.object], c.name)))


def _shape(columns: list[ColumnInfo]) -> list[tuple[str, str, bool, str, int]]:
    """Columns without their order, to recognise a renamed table."""
    return sorted(
        (c["name"].lower(), _norm_type(c["type"]), c["notnull"], _normalise(c["default"]), c["pk"])
        for c in columns
    )


def _norm_type(ctype: str) -> str:
    return _normalise(ctype).upper()


def _diff_tables(old: SchemaStamp, new: SchemaStamp, out: list[SchemaChange]) -> dict[str, str]:
    """Table-level changes; returns the renames found (old name -> new name)."""
    dropped = sorted(set(old.tables) - set(new.tables))
    added = sorted(set(new.tables) - set(old.tables))
    renamed: dict[str, str] = {}
    for name in dropped:
        match = [
            a
            for a in added
            if a not in renamed.values() and _shape(new.tables[a]) == _shape(old.tables[name])
        ]
        if match:
            renamed[name] = match[0]
            out.append(
                _breaking("table", match[0], match[0], f"table {name} renamed to {match[0]}")
            )
        else:
            out.append(
                _breaking(
                    "table", name, name, "table dropped: the old version's queries on it fail",
                    loses_data=True,
                )
            )
    for name in added:
        if name not in renamed.values():
            count = len(new.tables[name])
            out.append(_additive("table", name, name, f"new table ({count} columns)"))
    for name in sorted(set(old.tables) & set(new.tables)):
        _diff_columns(name, old.tables[name], new.tables[name], out)
        _diff_constraints(name, old, new, out)
    return renamed


def _diff_columns(
    table: str, old: list[ColumnInfo], new: list[ColumnInfo], out: list[SchemaChange]
) -> None:
    old_by = {c["name"].lower(): (i, c) for i, c in enumerate(old)}
    new_by = {c["name"].lower(): (i, c) for i, c in enumerate(new)}
    dropped = [k for k in old_by if k not in new_by]
    added = [k for k in new_by if k not in old_by]
    for key in list(dropped):
        pos, col = old_by[key]
        # A rebuilt table that keeps a column's type and place but not its name: a rename.
        twin = [
            a
            for a in added
            if new_by[a][0] == pos and _norm_type(new_by[a][1]["type"]) == _norm_type(col["type"])
        ]
        if twin:
            new_col = new_by[twin[0]][1]
            dropped.remove(key)
            added.remove(twin[0])
            out.append(
                _breaking(
                    "column",
                    table,
                    new_col["name"],
                    f"column {col['name']} renamed to {new_col['name']}",
                )
            )
    for key in dropped:
        col = old_by[key][1]
        out.append(
            _breaking(
                "column", table, col["name"], "column dropped: the old version's queries on it fail",
                loses_data=True,
            )
        )
    for key in added:
        out.append(_added_column(table, new_by[key][1]))
    for key in old_by.keys() & new_by.keys():
        for detail in _column_changes(old_by[key][1], new_by[key][1]):
            writes = detail.startswith(("NOT NULL", "default changed"))
            out.append(_breaking("column", table, new_by[key][1]["name"], detail,
                                 breaks="writes" if writes else "reads"))


def _added_column(table: str, col: ColumnInfo) -> SchemaChange:
    ctype = col["type"] or "untyped"
    if col["hidden"] in (2, 3):
        return _additive("column", table, col["name"], f"new generated column ({ctype})")
    if not col["notnull"]:
        return _additive("column", table, col["name"], f"new nullable column ({ctype})")
    if col["default"] is not None:
        return _additive(
            "column",
            table,
            col["name"],
            f"new NOT NULL column ({ctype}) with default {col['default']}",
        )
    return _breaking(
        "column",
        table,
        col["name"],
        f"new NOT NULL column ({ctype}) without a default: the old version's inserts fail",
        breaks="writes",
    )


def _column_changes(old: ColumnInfo, new: ColumnInfo) -> list[str]:
    found = []
    if _norm_type(old["type"]) != _norm_type(new["type"]):
        found.append(f"type changed from {old['type'] or 'untyped'} to {new['type'] or 'untyped'}")
    if old["notnull"] != new["notnull"]:
        found.append("NOT NULL added" if new["notnull"] else "NOT NULL removed")
    if _normalise(old["default"]) != _normalise(new["default"]):
        found.append(f"default changed from {old['default']} to {new['default']}")
    if old["pk"] != new["pk"]:
        found.append(f"primary key changed (position {old['pk']} -> {new['pk']}; 0 = not in it)")
    if old["hidden"] != new["hidden"]:
        found.append(f"hidden/generated kind changed ({old['hidden']} -> {new['hidden']})")
    return found


def _diff_constraints(
    table: str, old: SchemaStamp, new: SchemaStamp, out: list[SchemaChange]
) -> None:
    """A rebuild can add CHECK, UNIQUE, REFERENCES, ... that PRAGMA table_xinfo does not show."""
    old_sql, new_sql = old.table_sql.get(table, ""), new.table_sql.get(table, "")
    old_parts, new_parts = _table_parts(old_sql), _table_parts(new_sql)
    if old_parts is None or new_parts is None:
        if _body(old_sql) != _body(new_sql) and _shape(old.tables[table]) == _shape(
            new.tables[table]
        ):
            out.append(_breaking("table", table, table, "changed constraint", breaks="writes"))
        return
    for col in old.tables[table]:
        key = col["name"].lower()
        before, after = old_parts.column_defs.get(key), new_parts.column_defs.get(key)
        other = next((c for c in new.tables[table] if c["name"].lower() == key), None)
        # Only report what _column_changes has not: same type, NOT NULL, default and key.
        if (
            before is None
            or after is None
            or before == after
            or other is None
            or _column_changes(col, other)
        ):
            continue
        out.append(
            _breaking("column", table, col["name"], f"changed constraint: '{before}' -> '{after}'",
                      breaks="writes")
        )
    if old_parts.constraints != new_parts.constraints:
        gone = Counter(old_parts.constraints) - Counter(new_parts.constraints)
        came = Counter(new_parts.constraints) - Counter(old_parts.constraints)
        said = [f"added {c}" for c in came.elements()] + [f"removed {c}" for c in gone.elements()]
        out.append(_breaking("table", table, table, "changed constraint: " + "; ".join(said), breaks="writes"))
    if old_parts.options != new_parts.options:
        out.append(
            _breaking(
                "table",
                table,
                table,
                f"changed table options: '{old_parts.options}' -> '{new_parts.options}'",
            )
        )


def _index_shape(ix: IndexInfo) -> tuple[bool, list[str], bool, str]:
    # Without the table name: SQLite rewrites it when the table is renamed.
    return ix["unique"], ix["columns"], ix["partial"], _body(ix["sql"])


def _diff_indexes(
    old: SchemaStamp,
    new: SchemaStamp,
    dropped_tables: set[str],
    renamed: dict[str, str],
    out: list[SchemaChange],
) -> None:
    existing = set(old.tables) | set(renamed.values())
    for name in sorted(set(new.indexes) - set(old.indexes)):
        ix = new.indexes[name]
        cols = ", ".join(ix["columns"])
        if ix["unique"] and ix["table"] in existing:
            out.append(
                _breaking(
                    "index",
                    ix["table"],
                    name,
                    f"unique index on ({cols}) added to an existing table: "
                    "it can reject writes the old version makes",
                    breaks="writes",
                )
            )
        else:
            kind = "unique index" if ix["unique"] else "index"
            out.append(_additive("index", ix["table"], name, f"new {kind} on ({cols})"))
    for name in sorted(set(old.indexes) - set(new.indexes)):
        ix = old.indexes[name]
        if ix["table"] in dropped_tables:
            continue  # went with its table, which is already reported
        if ix["unique"]:
            out.append(
                _breaking(
                    "index",
                    ix["table"],
                    name,
                    "unique index dropped: the old version's upserts and "
                    "uniqueness assumptions rely on it",
                    breaks="writes",
                )
            )
        else:
            out.append(
                _additive("index", ix["table"], name, "index dropped (readers do not need it)")
            )
    for name in sorted(set(old.indexes) & set(new.indexes)):
        before, after = old.indexes[name], new.indexes[name]
        if _index_shape(before) == _index_shape(after):
            continue
        # Uniqueness gained can reject old writes; lost, it breaks the old version's upserts.
        change: ChangeKind = "breaking" if before["unique"] or after["unique"] else "additive"
        out.append(
            SchemaChange(
                change,
                "index",
                after["table"],
                name,
                f"index changed: '{before['sql']}' -> '{after['sql']}'",
                breaks="writes" if change == "breaking" else "none",
            )
        )


def _diff_sql_objects(
    obj: Literal["view", "trigger"],
    old: dict[str, str],
    new: dict[str, str],
    dropped_tables: set[str],
    out: list[SchemaChange],
) -> None:
    def table_of(name: str, sql: str) -> str:
        return name if obj == "view" else _trigger_table(sql)

    for name in sorted(set(new) - set(old)):
        out.append(_additive(obj, table_of(name, new[name]), name, f"new {obj}"))
    for name in sorted(set(old) - set(new)):
        table = table_of(name, old[name])
        if obj == "trigger" and table in {t.lower() for t in dropped_tables}:
            continue  # went with its table
        # The old version may query the view, or rely on what the trigger kept up to date.
        out.append(_breaking(obj, table, name, f"{obj} dropped", breaks="writes" if obj == "trigger" else "reads"))
    for name in sorted(set(old) & set(new)):
        if old[name] != new[name]:
            out.append(_breaking(obj, table_of(name, new[name]), name, f"{obj} definition changed",
                                 breaks="writes" if obj == "trigger" else "reads"))


# --- lint ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LintFile:
    """What one migration file does to the schema."""

    file: str
    kind: LintKind
    changes: list[SchemaChange] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "file": self.file,
            "kind": self.kind,
            "changes": [c.to_dict() for c in self.changes],
            "error": self.error,
        }


@dataclass(frozen=True)
class LintReport:
    """The classification of every migration file in a folder, in the order they apply."""

    folder: str
    base: str | None
    files: list[LintFile] = field(default_factory=list)

    @property
    def errors(self) -> list[LintFile]:
        """Files that failed to execute."""
        return [f for f in self.files if f.kind == "error"]

    @property
    def breaking(self) -> list[LintFile]:
        """Files with at least one breaking change."""
        return [f for f in self.files if f.kind == "breaking"]

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "folder": self.folder,
            "base": self.base,
            "files": [f.to_dict() for f in self.files],
        }


def lint(migrations_dir: Path, base: Path | None = None) -> LintReport:
    """Apply each `*.sql` file in name order to an in-memory schema and classify what it changes."""
    folder = Path(migrations_dir)
    if not folder.is_dir():
        raise SchemaError(
            f"{folder}: no such folder; give the folder that holds the migration .sql files"
        )
    files = sorted(p for p in folder.glob("*.sql") if p.is_file())
    if not files:
        raise SchemaError(
            f"{folder} has no .sql files; give the folder that holds the migration files"
        )
    work = sqlite3.connect(":memory:", isolation_level=None)
    try:
        if base is not None:
            _copy_schema(Path(base), work)
        results = []
        for path in files:
            before = stamp(work)
            # Keep the state before the file so a failing one leaves nothing half-applied.
            saved = sqlite3.connect(":memory:", isolation_level=None)
            work.backup(saved)
            error = _apply_file(work, path)
            if error is not None:
                work.close()
                work = saved
                results.append(LintFile(path.name, "error", error=error))
                continue
            saved.close()
            change = diff(before, stamp(work))
            results.append(LintFile(path.name, change.kind, change.changes))
        return LintReport(str(folder), str(base) if base is not None else None, results)
    finally:
        work.close()


def _copy_schema(base: Path, target: sqlite3.Connection) -> None:
    """Recreate the schema (no rows) of the brain at `base` in `target`."""
    _check_brain_path(base)
    src = connect_readonly(base)
    try:
        rows = src.execute(
            "SELECT type, name, sql FROM sqlite_master"
            " WHERE name NOT LIKE 'sqlite_%' AND sql IS NOT NULL"
            " ORDER BY CASE type WHEN 'table' THEN 0 WHEN 'view' THEN 1 WHEN 'index' THEN 2"
            " ELSE 3 END, rowid"
        ).fetchall()
        user_version = int(src.execute("PRAGMA user_version").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        raise _unreadable(base, exc) from None
    finally:
        src.close()
    for kind, name, sql in rows:
        # A virtual table creates its shadow tables itself; they are listed too.
        if target.execute("SELECT 1 FROM sqlite_master WHERE name = ?", (name,)).fetchone():
            continue
        try:
            target.execute(sql)
        except sqlite3.Error as exc:
            raise SchemaError(f"cannot copy the schema of {base}: {kind} {name}: {exc}") from None
    target.execute(f"PRAGMA user_version = {user_version}")


def _apply_file(conn: sqlite3.Connection, path: Path) -> str | None:
    """Run a migration file statement by statement; the error message, or None."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read the file: {exc}"
    for number, (line, statement) in enumerate(_statements(text), start=1):
        try:
            conn.executescript(statement)
        except sqlite3.Error as exc:
            first = _normalise(statement)[:60]
            return f"statement {number} (line {line}: {first}): {exc}"
    if conn.in_transaction:
        conn.execute("COMMIT")  # a file that opens a transaction and never closes it
    return None


def _statements(text: str) -> list[tuple[int, str]]:
    """(first line, statement) pairs; sqlite3.complete_statement knows where one ends."""
    out: list[tuple[int, str]] = []
    buf, start = "", 1
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if not _tokens(buf):
            start = number  # report the line the statement starts on, not its comment
        buf += line
        if sqlite3.complete_statement(buf):
            out.append((start, buf))
            buf = ""
    if _tokens(buf):
        out.append((start, buf))  # an unterminated last statement still runs (or fails) on its own
    return [(n, s) for n, s in out if _tokens(s)]
