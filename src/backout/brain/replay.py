"""Replay: write a salvage bundle back into the live service after a brain rollback.

Two ways in. An Engine bundle (`memory-import.json`) goes through the running Engine's own API,
`POST /memory/import`, in requests under its 1 MiB limit; the Engine skips rows it already has, so
replaying twice adds nothing. Any other bundle (or no service URL) is replayed with SQL straight
into the live brain: rows marked "added" are inserted when the live schema still has their columns
and their key is free; rows marked "changed" are never overwritten, only reported. Nothing is
guessed: every row that is not replayed is counted with its reason, and the service profile's
effects table (effects outside the brain) and migration ledgers are never replayed.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path
from typing import Any

import httpx

from backout.brain.salvage import (
    ENGINE_BUNDLE_FORMAT,
    MEMORY_IMPORT_FILE,
    SUMMARY_FILE,
    read_bundle,
)
from backout.brain.tables import quote_ident
from backout.errors import EXIT_ENVIRONMENT, EXIT_USAGE, BackoutError
from backout.profiles import generic
from backout.profiles.model import Profile

__all__ = [
    "MAX_REQUEST_BYTES",
    "KeyRefused",
    "LEFT_OUT_EFFECTS",
    "NotReplayed",
    "ReplayError",
    "ReplayReport",
    "ServiceUnreachable",
    "TableReplay",
    "replay_bundle",
    "split_memory_import",
]

MAX_REQUEST_BYTES = 1024 * 1024  # the Engine answers 413 to larger request bodies
KEYS_KEPT = 100  # keys listed per reason; the count is always complete

REASON_CHANGED = "changed since the snapshot; review by hand"
REASON_KEY_TAKEN = "its primary key holds another row in the live brain; review by hand"
REASON_UNIQUE = "a unique constraint matches another row in the live brain; review by hand"
REASON_TABLE_MISSING = "table missing in the live brain"
REASON_TOO_LARGE = "row alone is larger than the service's request limit"
REASON_DANGLING_EDGE = "an end of the edge is missing from the salvaged brain"
LEFT_OUT_EFFECTS = (
    "its rows record effects outside the brain (sent emails, deleted resources): never replayed; "
    "list them in the rollback report"
)
LEFT_OUT_LEDGER = "migration ledger: the live brain's own migrations decide it; never replayed"
LEFT_OUT_SHADOW = "shadow table of a virtual table: rebuilt from its source table; never replayed"
LEFT_OUT_NOT_IMPORTED = "not carried by POST /memory/import (the rows stay in {file})"

_ATTEMPTS = 3
_RETRY_PAUSE_S = 0.5
_TIMEOUT = httpx.Timeout(60.0, connect=5.0)
# (path in memory-import.json, the Engine's name in its answer, the brain table the rows come from)
_ENGINE_STORES = (
    (("episodes",), "episodes", "episodes"),
    (("knowledge",), "knowledge", "knowledge_store"),
    (("social", "nodes"), "people", "social_graph_nodes"),
    (("social", "edges"), "edges", "social_graph_edges"),
    (("conversations",), "conversations", "conversations"),
    (("learning_signals",), "learning_signals", "learning_signals"),
)
_META = ("_rowid", "_salvage")


class ReplayError(BackoutError):
    """Replay cannot start or finish: the bundle is missing or corrupt, or the service said no."""


class ServiceUnreachable(ReplayError):
    """The service did not answer (or kept answering 5xx)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_ENVIRONMENT)


class KeyRefused(ReplayError):
    """The service refused the API key (401/403)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, EXIT_USAGE)


@dataclass
class NotReplayed:
    """Rows of one table left alone for one reason, with (some of) their keys."""

    reason: str
    rows: int = 0
    keys: list[Any] = field(default_factory=list)

    def add(self, key: Any = None) -> None:
        """Count one more row (and keep its key while fewer than KEYS_KEPT are kept)."""
        self.rows += 1
        if key is not None and len(self.keys) < KEYS_KEPT:
            self.keys.append(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"reason": self.reason, "rows": self.rows, "keys": list(self.keys)}


@dataclass
class TableReplay:
    """What replay did (or, in a dry run, would do) with one table's salvaged rows."""

    table: str
    rows: int = 0
    replayed: int = 0
    already_present: int = 0
    skipped: list[NotReplayed] = field(default_factory=list)
    left_out: NotReplayed | None = None
    renumbered: list[dict[str, Any]] = field(default_factory=list)  # {"from": old key, "to": new key} (--renumber)

    @property
    def not_replayed(self) -> int:
        """Rows that could not be replayed (left-out tables are not counted here)."""
        return sum(s.rows for s in self.skipped)

    def skip(self, reason: str, key: Any = None) -> None:
        """Record one row not replayed for `reason`."""
        found = next((s for s in self.skipped if s.reason == reason), None)
        if found is None:
            found = NotReplayed(reason)
            self.skipped.append(found)
        found.add(key)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "table": self.table,
            "rows": self.rows,
            "replayed": self.replayed,
            "already_present": self.already_present,
            "not_replayed": self.not_replayed,
            "reasons": [s.to_dict() for s in self.skipped],
            "left_out": self.left_out.rows if self.left_out else 0,
            "left_out_reason": self.left_out.reason if self.left_out else None,
            "renumbered": self.renumbered[:KEYS_KEPT],
            "renumbered_rows": len(self.renumbered),
        }


@dataclass
class ReplayReport:
    """The outcome of one replay, per table and in total."""

    bundle: Path
    mode: str  # "engine" (POST /memory/import) or "sql" (straight into the brain)
    destination: str
    dry_run: bool
    tables: list[TableReplay]
    requests: int = 0  # Engine: requests sent (dry run: that would be sent)

    @property
    def replayed(self) -> int:
        """Rows written (dry run: that would be written; Engine dry run: that would be sent)."""
        return sum(t.replayed for t in self.tables)

    @property
    def already_present(self) -> int:
        """Rows the live brain already had."""
        return sum(t.already_present for t in self.tables)

    @property
    def not_replayed(self) -> int:
        """Rows that could not be replayed."""
        return sum(t.not_replayed for t in self.tables)

    @property
    def left_out(self) -> int:
        """Rows never replayed by design (the effects table, migration ledgers, what the API omits)."""
        return sum(t.left_out.rows for t in self.tables if t.left_out)

    @property
    def complete(self) -> bool:
        """True when every row was replayed or already present (left-out tables aside)."""
        return self.not_replayed == 0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "bundle": str(self.bundle),
            "mode": self.mode,
            "destination": self.destination,
            "dry_run": self.dry_run,
            "requests": self.requests,
            "complete": self.complete,
            "totals": {
                "replayed": self.replayed,
                "already_present": self.already_present,
                "not_replayed": self.not_replayed,
                "left_out": self.left_out,
            },
            "tables": [t.to_dict() for t in self.tables],
        }

    def render(self) -> str:
        """A short text: a line per table with rows, then reasons and totals."""
        return "\n".join(
            [self._heading(), *self._table_lines(), *self._reason_lines(), self._total()]
        )

    def _heading(self) -> str:
        verb = "would replay" if self.dry_run else "replayed"
        if self.mode == "engine":
            sent = "would send" if self.dry_run else "sent"
            return (
                f"{verb} into {self.destination} ({sent} {self.requests} request"
                f"{'s' if self.requests != 1 else ''} to its import endpoint, each under 1 MiB)"
            )
        return f"{verb} into {self.destination} (SQL, one transaction per table)"

    def _table_lines(self) -> list[str]:
        shown = [t for t in self.tables if t.rows]
        width = max([len("table"), *(len(t.table) for t in shown)])
        head = "to send" if self.dry_run and self.mode == "engine" else "replayed"
        cells = f"{'rows':>6}  {head:>8}  {'present':>7}  {'not replayed':>12}  {'left out':>8}"
        lines = [f"{'table':<{width}}  {cells}"]
        for t in shown:
            left_out = t.left_out.rows if t.left_out else 0
            lines.append(
                f"{t.table:<{width}}  {t.rows:>6}  {t.replayed:>8}  {t.already_present:>7}  "
                f"{t.not_replayed:>12}  {left_out:>8}"
            )
        return lines

    def _reason_lines(self) -> list[str]:
        lines = []
        for t in self.tables:
            for s in t.skipped:
                keys = f" (keys: {_short_keys(s.keys)})" if s.keys else ""
                lines.append(
                    f"not replayed: {t.table}, {s.rows} row{'s' if s.rows != 1 else ''}: "
                    f"{s.reason}{keys}"
                )
            if t.renumbered:
                moved = ", ".join(f"{m['from']}" + (f" -> {m['to']}" if m["to"] is not None else "")
                                  for m in t.renumbered[:KEYS_KEPT])
                lines.append(f"{'would renumber' if self.dry_run else 'renumbered'}: {t.table}, "
                             f"{len(t.renumbered)} row{'s' if len(t.renumbered) != 1 else ''} whose key another "
                             f"row took since the rollback ({moved})")
            if t.left_out and t.left_out.rows:
                n = t.left_out.rows
                lines.append(
                    f"left out: {t.table}, {n} row{'s' if n != 1 else ''}: {t.left_out.reason}"
                )
        return lines

    def _total(self) -> str:
        if self.dry_run and self.mode == "engine":
            return (
                f"total: {self.replayed} rows would be sent; the Engine skips rows it already has; "
                f"{self.not_replayed} cannot be sent, {self.left_out} left out"
            )
        verb = "would be replayed" if self.dry_run else "replayed"
        return (
            f"total: {self.replayed} {verb}, {self.already_present} already present, "
            f"{self.not_replayed} not replayed, {self.left_out} left out"
        )


def _short_keys(keys: list[Any], shown: int = 5) -> str:
    text = ", ".join(json.dumps(k, default=str) for k in keys[:shown])
    return text + (", ..." if len(keys) > shown else "")


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
        bundle = _load_memory_import(bundle_dir)
        client = _EngineClient(base_url, api_key, profile)
        return _replay_engine(bundle_dir, summary, bundle, client, dry_run, max_request_bytes)
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


def _load_memory_import(bundle_dir: Path) -> dict[str, Any]:
    path = bundle_dir / MEMORY_IMPORT_FILE
    try:
        bundle = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReplayError(
            f"{path} is not readable JSON ({exc}); extract the bundle again"
        ) from None
    if not isinstance(bundle, dict) or bundle.get("format") != ENGINE_BUNDLE_FORMAT:
        raise ReplayError(f"{path} is not an {ENGINE_BUNDLE_FORMAT} bundle; extract it again")
    return bundle


def _left_out_reason(table: str, profile: Profile) -> str | None:
    if table == profile.effects_table:
        return LEFT_OUT_EFFECTS
    if table.lower() in profile.ledger_tables():
        return LEFT_OUT_LEDGER
    return None


def _salvaged_rows(entry: dict[str, Any]) -> int:
    return int(entry.get("added", 0)) + int(entry.get("changed", 0))


# -- the Engine: POST /memory/import -------------------------------------------------------------


def split_memory_import(bundle: dict[str, Any], limit: int = MAX_REQUEST_BYTES) -> list[bytes]:
    """Request bodies of at most `limit` bytes, nodes before edges; oversize rows are dropped."""
    return _Splitter(bundle, limit).split()[0]


class _Splitter:
    """Greedy packing of a bundle's lists into request bodies, in store order."""

    def __init__(self, bundle: dict[str, Any], limit: int) -> None:
        carried = {"episodes", "knowledge", "social", "conversations", "learning_signals"}
        self.header = {k: v for k, v in bundle.items() if k not in carried}
        self.bundle, self.limit = bundle, limit
        self.too_large: dict[str, int] = {}
        self.sent: dict[str, int] = {}

    def split(self) -> tuple[list[bytes], dict[str, int]]:
        """(bodies, rows per store that cannot fit in any body)."""
        bodies: list[bytes] = []
        parts: dict[tuple[str, ...], list[bytes]] = {}
        size = base = len(self.body({}))
        for path, answer, _ in _ENGINE_STORES:
            for item in _items(self.bundle, path):
                encoded = json.dumps(item, ensure_ascii=False).encode()
                if base + len(encoded) + 1 > self.limit:
                    self.too_large[answer] = self.too_large.get(answer, 0) + 1
                    continue
                if size + len(encoded) + 1 > self.limit:
                    bodies.append(self.body(parts))
                    parts, size = {}, base
                parts.setdefault(path, []).append(encoded)
                size += len(encoded) + 1
                self.sent[answer] = self.sent.get(answer, 0) + 1
        if parts:
            bodies.append(self.body(parts))
        return bodies, self.too_large

    def body(self, parts: dict[tuple[str, ...], list[bytes]]) -> bytes:
        """One complete bundle holding `parts` (every list present, empty when not in parts)."""

        def array(path: tuple[str, ...]) -> bytes:
            return b"[" + b",".join(parts.get(path, [])) + b"]"

        fields = [
            json.dumps({k: v}, ensure_ascii=False).encode()[1:-1] for k, v in self.header.items()
        ]
        for key in ("episodes", "knowledge"):
            fields.append(b'"%s": %s' % (key.encode(), array((key,))))
        fields.append(
            b'"social": {"nodes": %s, "edges": %s}'
            % (array(("social", "nodes")), array(("social", "edges")))
        )
        for key in ("conversations", "learning_signals"):
            fields.append(b'"%s": %s' % (key.encode(), array((key,))))
        return b"{" + b", ".join(fields) + b"}"


def _items(bundle: dict[str, Any], path: tuple[str, ...]) -> list[Any]:
    value: Any = bundle
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        return []
    if not isinstance(value, list):
        raise ReplayError(f"{MEMORY_IMPORT_FILE}: {'.'.join(path)} is not a list; extract it again")
    return value


class _EngineClient:
    """POST /memory/import with a timeout and a short retry on connection errors and 5xx."""

    def __init__(self, base_url: str, api_key: str | None, profile: Profile) -> None:
        self.url = base_url.rstrip("/")
        self.api_key = api_key
        self.profile = profile
        self.path = str(profile.import_path)
        self.headers = {"Content-Type": "application/json", **profile.api_headers(api_key)}

    def import_all(self, bodies: list[bytes]) -> dict[str, int]:
        """Send every body in order; the rows the Engine added, summed per store."""
        added: dict[str, int] = {}
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=_TIMEOUT) as client:
            for done, body in enumerate(bodies):
                for store, n in self._post(client, body, done, len(bodies)).items():
                    added[store] = added.get(store, 0) + n
        return added

    def _post(self, client: httpx.Client, body: bytes, done: int, total: int) -> dict[str, int]:
        progress = f"{done} of {total} requests were imported before this; replaying again is safe"
        for attempt in range(_ATTEMPTS):
            try:
                resp = client.post(self.path, content=body)
            except httpx.TransportError as exc:
                if attempt + 1 < _ATTEMPTS:
                    time.sleep(_RETRY_PAUSE_S * 2**attempt)
                    continue
                raise ServiceUnreachable(
                    f"the service at {self.url} is not answering ({exc!r}): "
                    f"start it first, then replay again ({progress})"
                ) from None
            if resp.status_code >= 500 and _retryable(resp, self.profile) and attempt + 1 < _ATTEMPTS:
                time.sleep(_RETRY_PAUSE_S * 2**attempt)
                continue
            return self._answer(resp, progress)
        raise AssertionError("unreachable")

    def _answer(self, resp: httpx.Response, progress: str) -> dict[str, int]:
        if resp.status_code in (401, 403):
            missing = "" if self.api_key else " (no api_key is configured)"
            raise KeyRefused(
                f"the API key was refused{missing}; set api_key in backout.toml "
                '(api_key = { env = "ENGINE_API_KEY" }) and export it'
            )
        if resp.status_code >= 500:
            raise ServiceUnreachable(
                f"the service at {self.url} answered {resp.status_code} "
                f"{_error_text(resp)}: replay again once it is healthy ({progress})"
            )
        if resp.status_code != 200:
            raise ReplayError(
                f"the service refused the import with {resp.status_code} "
                f"{_error_text(resp)} ({progress})"
            )
        try:
            added = resp.json()["added"]
            return {str(k): int(v) for k, v in added.items()}
        except (ValueError, KeyError, TypeError, AttributeError):
            raise ReplayError(
                f"unexpected answer from {self.url}{self.path}: {resp.text[:200]!r}"
            ) from None


def _retryable(resp: httpx.Response, profile: Profile) -> bool:
    """A refused database (the profile's refusal codes) will not go away by waiting; draining or starting will."""
    try:
        body = resp.json()
    except ValueError:
        return True
    return profile.refusal_code(body) is None


def _error_text(resp: httpx.Response) -> str:
    try:
        error = resp.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]


def _replay_engine(
    bundle_dir: Path,
    summary: dict[str, Any],
    bundle: dict[str, Any],
    client: _EngineClient,
    dry_run: bool,
    limit: int,
) -> ReplayReport:
    splitter = _Splitter(bundle, limit)
    bodies, too_large = splitter.split()
    added = {} if dry_run else client.import_all(bodies)
    tables = _engine_tables(summary, splitter.sent, too_large, added, dry_run, client.profile)
    return ReplayReport(bundle_dir, "engine", client.url, dry_run, tables, len(bodies))


def _engine_tables(
    summary: dict[str, Any],
    sent: dict[str, int],
    too_large: dict[str, int],
    added: dict[str, int],
    dry_run: bool,
    profile: Profile,
) -> list[TableReplay]:
    tables: list[TableReplay] = []
    carried = {table: answer for _, answer, table in _ENGINE_STORES}
    for _, answer, table in _ENGINE_STORES:
        result = TableReplay(table, rows=sent.get(answer, 0) + too_large.get(answer, 0))
        result.replayed = sent.get(answer, 0) if dry_run else added.get(answer, 0)
        if not dry_run:
            result.already_present = max(0, sent.get(answer, 0) - added.get(answer, 0))
        for _ in range(too_large.get(answer, 0)):
            result.skip(REASON_TOO_LARGE)
        tables.append(result)
    dangling = int((summary.get("memory_import") or {}).get("edges_skipped") or 0)
    edges = next(t for t in tables if t.table == "social_graph_edges")
    edges.rows += dangling
    for _ in range(dangling):
        edges.skip(REASON_DANGLING_EDGE)
    for entry in summary["tables"]:
        if entry["table"] not in carried and _salvaged_rows(entry):
            reason = _left_out_reason(entry["table"], profile) or LEFT_OUT_NOT_IMPORTED.format(
                file=entry["file"]
            )
            rows = _salvaged_rows(entry)
            tables.append(TableReplay(entry["table"], rows, left_out=NotReplayed(reason, rows)))
    return [t for t in tables if t.rows]


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
    left_out = _left_out_reason(table, profile) or (LEFT_OUT_SHADOW if _is_shadow(conn, table) else None)
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
