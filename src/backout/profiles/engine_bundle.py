"""The Engine's salvage bundle: memory-import.json written at salvage, replayed through POST /memory/import.

Salvage (`backout.brain.salvage`) writes every salvaged table as JSON lines; for an Engine brain it also
writes memory-import.json here, in the engine-memory/1 shape that the Engine's `POST /memory/import`
accepts (social edges travel by node name). Replay (`backout.brain.replay`) hands such a bundle to
`replay_engine`, which sends it to the running Engine in requests under its 1 MiB limit; the Engine skips
rows it already has, so replaying twice adds nothing. Tables the import does not carry are reported as
left out, never replayed.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

from backout.brain.bundle_files import SyncedFile, create_private, encode, read_jsonl
from backout.brain.replay_report import (
    REASON_DANGLING_EDGE,
    REASON_TOO_LARGE,
    KeyRefused,
    NotReplayed,
    ReplayError,
    ReplayReport,
    ServiceUnreachable,
    TableReplay,
    left_out_reason,
    salvaged_rows,
)
from backout.brain.tables import quote_ident, user_tables
from backout.profiles.model import Profile

__all__ = [
    "ENGINE_BUNDLE_FORMAT",
    "LEFT_OUT_NOT_IMPORTED",
    "MAX_REQUEST_BYTES",
    "MEMORY_IMPORT_FILE",
    "REPLAY_NOTE",
    "replay_engine",
    "split_memory_import",
    "write_memory_import",
]

MEMORY_IMPORT_FILE = "memory-import.json"
ENGINE_BUNDLE_FORMAT = "engine-memory/1"
MAX_REQUEST_BYTES = 1024 * 1024  # the Engine answers 413 to larger request bodies
LEFT_OUT_NOT_IMPORTED = "not carried by POST /memory/import (the rows stay in {file})"
# How to replay the bundle by hand: summary.json's replay note quotes it.
REPLAY_NOTE = (
    "Engine brains: import memory-import.json with POST "
    "/memory/import (or engine Brain.import_bundle); it skips rows already present, so importing "
    "twice is safe (the HTTP API refuses bodies over 1 MiB: split large bundles)."
)

_ENGINE_MARKER_TABLES = ("episodes", "knowledge_store", "social_graph_nodes")
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


# -- salvage: writing memory-import.json ---------------------------------------------------------


def write_memory_import(
    conn: sqlite3.Connection, work: Path, files: dict[str, Path], snapshot_id: str | None
) -> dict[str, Any] | None:
    """memory-import.json in the engine-memory/1 shape, in folder `work`, from the JSON-lines files just
    written (`files`: table -> file path). Its summary for summary.json; None when `conn` is no Engine brain."""
    if not set(_ENGINE_MARKER_TABLES) <= set(user_tables(conn)):
        return None

    def rows(table: str) -> Iterator[dict[str, Any]]:
        return read_jsonl(files[table]) if table in files else iter(())

    fact = "fact" if "fact" in _columns(conn, "knowledge_store") else "content"
    names = _NodeNames(conn)
    counts: dict[str, int] = {}
    with create_private(work / MEMORY_IMPORT_FILE) as fh:
        header = {
            "format": ENGINE_BUNDLE_FORMAT,
            "source": "backout salvage",
            "snapshot_id": snapshot_id,
        }
        fh.write(json.dumps(header)[:-1])
        counts["episodes"] = _write_array(
            fh, "episodes", (_pick(r, "task_id", "summary", "created_at") for r in rows("episodes"))
        )
        counts["knowledge"] = _write_array(
            fh,
            "knowledge",
            (
                {
                    "subject": r["subject"],
                    "content": r.get(fact),
                    **_pick(r, "type", "confidence", "source", "valid_from", "valid_until"),
                }
                for r in rows("knowledge_store")
            ),
        )
        fh.write(', "social": {')
        node_ids = [r["id"] for r in rows("social_graph_nodes")]
        referenced = {r[k] for r in rows("social_graph_edges") for k in ("src", "dst")}
        extra = sorted(referenced - set(node_ids))
        nodes = itertools.chain(
            (_pick(r, *_NODE_COLUMNS) for r in rows("social_graph_nodes")),
            (n for n in map(names.node, extra) if n is not None),
        )
        counts["people"] = _write_array(fh, "nodes", nodes, first=True)
        edges = (e for e in map(names.edge, rows("social_graph_edges")) if e is not None)
        counts["edges"] = _write_array(fh, "edges", edges)
        fh.write("}")
        counts["conversations"] = _write_array(
            fh,
            "conversations",
            (
                _pick(r, "task_id", "message_id", "role", "content", "created_at")
                for r in rows("conversations")
            ),
        )
        counts["learning_signals"] = _write_array(
            fh,
            "learning_signals",
            (
                _pick(r, "task_id", "message_id", "rating", "comment", "created_at")
                for r in rows("learning_signals")
            ),
        )
        fh.write("}\n")
    return {
        "file": MEMORY_IMPORT_FILE,
        "format": ENGINE_BUNDLE_FORMAT,
        "counts": counts,
        "edges_skipped": names.edges_skipped,
    }


_NODE_COLUMNS = ("name", "kind", "mentions", "first_seen", "last_seen")


class _NodeNames:
    """Social node lookups in the newer brain: edges travel by node name, not id."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._names: dict[int, str | None] = {}
        self.edges_skipped = 0

    def node(self, node_id: int) -> dict[str, Any] | None:
        cols = ", ".join(_NODE_COLUMNS)
        row = self._conn.execute(
            f"SELECT {cols} FROM social_graph_nodes WHERE id = ?", (node_id,)
        ).fetchone()
        return dict(zip(_NODE_COLUMNS, row)) if row else None

    def name(self, node_id: int) -> str | None:
        if node_id not in self._names:
            row = self._conn.execute(
                "SELECT name FROM social_graph_nodes WHERE id = ?", (node_id,)
            ).fetchone()
            self._names[node_id] = row[0] if row else None
        return self._names[node_id]

    def edge(self, row: dict[str, Any]) -> dict[str, Any] | None:
        src, dst = self.name(row["src"]), self.name(row["dst"])
        if src is None or dst is None:
            self.edges_skipped += 1  # dangling edge: still in social_graph_edges.jsonl
            return None
        return {"src": src, "dst": dst, **_pick(row, "relation", "task_id", "created_at")}


def _pick(row: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: row.get(k) for k in keys}


def _write_array(
    fh: SyncedFile, key: str, items: Iterable[dict[str, Any]], first: bool = False
) -> int:
    """Stream `"key": [items]` into an open JSON object; returns the item count."""
    fh.write(("" if first else ", ") + json.dumps(key) + ": [")
    count = 0
    for item in items:
        fh.write(
            ("\n  " if count == 0 else ",\n  ")
            + json.dumps(item, default=encode, ensure_ascii=False)
        )
        count += 1
    fh.write("]")
    return count


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [r[0] for r in conn.execute(f"SELECT * FROM {quote_ident(table)} LIMIT 0").description]


# -- replay: POST /memory/import ----------------------------------------------------------------


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


def replay_engine(
    bundle_dir: Path,
    summary: dict[str, Any],
    *,
    base_url: str,
    api_key: str | None,
    profile: Profile,
    dry_run: bool,
    limit: int = MAX_REQUEST_BYTES,
) -> ReplayReport:
    """Replay the bundle's memory-import.json through the service's import endpoint (the profile's
    import_path, POST /memory/import for the Engine) at `base_url`, in requests of at most `limit` bytes;
    `summary` is the bundle's summary.json. A dry run sends nothing and reports what would be sent."""
    bundle = _load_memory_import(bundle_dir)
    client = _EngineClient(base_url, api_key, profile)
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
        if entry["table"] not in carried and salvaged_rows(entry):
            reason = left_out_reason(entry["table"], profile) or LEFT_OUT_NOT_IMPORTED.format(
                file=entry["file"]
            )
            rows = salvaged_rows(entry)
            tables.append(TableReplay(entry["table"], rows, left_out=NotReplayed(reason, rows)))
    return [t for t in tables if t.rows]
