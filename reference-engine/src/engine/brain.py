"""The brain: the Engine's one SQLite file, and every read and write the API makes of it."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["Brain", "BundleError", "TurnRecord", "open_connection", "utcnow"]


class BundleError(ValueError):
    """A well-formed memory bundle that does not fit this brain: a relation naming a person that is
    neither in the brain nor earlier in the bundle."""


def utcnow() -> str:
    """Current UTC time as ISO 8601 with milliseconds."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def open_connection(path: Path | str) -> sqlite3.Connection:
    """Open the brain in WAL mode with the settings the Engine runs with."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"could not switch the brain to WAL mode (got {mode})")
    # FULL: a turn that reported `completed` survives power loss.
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


@dataclass
class TurnRecord:
    """Everything one agent turn writes to the brain, committed in one transaction."""

    task_id: str
    request_id: str
    message: str
    reply: str
    started_at: str
    facts: list[tuple[str, str]] = field(default_factory=list)  # (subject, fact text)
    people: list[str] = field(default_factory=list)
    mcp: list[tuple[str, str, str]] = field(default_factory=list)  # (tool, action, target)
    events: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)  # (ts_ms, name, data)
    steps: list[dict[str, Any]] = field(default_factory=list)
    channel_ttl_ms: int = 3 * 3600 * 1000


class Brain:
    """Typed access to one brain; callers serialise use (one connection, one thread)."""

    def __init__(self, conn: sqlite3.Connection, head: int) -> None:
        self.conn = conn
        # 2.4.0's forward-only migration renamed knowledge_store.content to fact.
        self.fact_column = "fact" if head >= 4 else "content"
        self.has_channel = head >= 5
        self.has_importance = head >= 3

    # -- writes ------------------------------------------------------------------------------

    def record_turn(self, turn: TurnRecord) -> None:
        """Write a completed turn: conversation, trajectory, episode, memory and telemetry."""
        now = utcnow()
        c = self.conn
        c.execute("BEGIN IMMEDIATE")
        try:
            self._insert_messages(turn, now)
            c.execute(
                "INSERT INTO trajectories (task_id, request_id, steps, status, started_at, finished_at)"
                " VALUES (?, ?, ?, 'completed', ?, ?)",
                (turn.task_id, turn.request_id, json.dumps(turn.steps), turn.started_at, now),
            )
            c.execute(
                "INSERT INTO episodes (task_id, summary, created_at) VALUES (?, ?, ?)",
                (turn.task_id, _episode_summary(turn), now),
            )
            for subject, text in turn.facts:
                c.execute(
                    f"INSERT INTO knowledge_store (subject, {self.fact_column}, type, confidence,"
                    " source, valid_from) VALUES (?, ?, 'fact', ?, ?, ?)",
                    (subject, text, 0.9, f"trajectory:{turn.request_id}", now),
                )
            self._insert_people(turn, now)
            for tool, action, target in turn.mcp:
                c.execute(
                    "INSERT INTO mcp_calls (task_id, request_id, tool, action, target, status,"
                    " created_at) VALUES (?, ?, ?, ?, ?, 'ok', ?)",
                    (turn.task_id, turn.request_id, tool, action, target, now),
                )
            for ts_ms, name, data in turn.events:
                c.execute(
                    "INSERT INTO channel_state_snapshots (task_id, ts_ms, event, data, expires_at_ms)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (turn.task_id, ts_ms, name, json.dumps(data), ts_ms + turn.channel_ttl_ms),
                )
            self._event(
                "turn_completed",
                turn.task_id,
                {"request_id": turn.request_id, "facts": len(turn.facts), "people": len(turn.people)},
                now,
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _insert_messages(self, turn: TurnRecord, now: str) -> None:
        for role, content in (("user", turn.message), ("assistant", turn.reply)):
            cols, vals = "task_id, message_id, role, content, created_at", [
                turn.task_id,
                f"{turn.request_id}-{role}",
                role,
                content,
                now,
            ]
            if self.has_channel:
                cols += ", channel"
                vals.append("api")
            marks = ", ".join("?" * len(vals))
            self.conn.execute(f"INSERT INTO conversations ({cols}) VALUES ({marks})", vals)

    def _insert_people(self, turn: TurnRecord, now: str) -> None:
        ids = []
        for name in turn.people:
            self.conn.execute(
                "INSERT INTO social_graph_nodes (name, kind, mentions, first_seen, last_seen)"
                " VALUES (?, 'person', 1, ?, ?) ON CONFLICT(name) DO UPDATE SET"
                " mentions = mentions + 1, last_seen = excluded.last_seen",
                (name, now, now),
            )
            ids.append(self._node_id(name))
        me = self._node_id("me", create_at=now)
        for node in ids:
            self._edge(me, node, "mentioned", turn.task_id, now)
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                self._edge(a, b, "co_mentioned", turn.task_id, now)

    def _node_id(self, name: str, create_at: str | None = None) -> int:
        if create_at is not None:
            self.conn.execute(
                "INSERT OR IGNORE INTO social_graph_nodes (name, kind, mentions, first_seen,"
                " last_seen) VALUES (?, 'self', 0, ?, ?)",
                (name, create_at, create_at),
            )
        return int(
            self.conn.execute("SELECT id FROM social_graph_nodes WHERE name = ?", (name,)).fetchone()[0]
        )

    def _known_node(self, name: str, where: str) -> int:
        row = self.conn.execute("SELECT id FROM social_graph_nodes WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise BundleError(f"field {where!r} names {name!r}, a person neither in the brain nor in the bundle")
        return int(row[0])

    def _edge(self, src: int, dst: int, relation: str, task_id: str | None, now: str) -> None:
        self.conn.execute(
            "INSERT INTO social_graph_edges (src, dst, relation, task_id, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (src, dst, relation, task_id, now),
        )

    def _event(self, kind: str, task_id: str | None, data: dict[str, Any], ts: str) -> None:
        self.conn.execute(
            "INSERT INTO observability_events (ts, kind, task_id, data) VALUES (?, ?, ?, ?)",
            (ts, kind, task_id, json.dumps(data)),
        )

    def record_event(self, kind: str, task_id: str | None, data: dict[str, Any]) -> None:
        """Write one observability event on its own."""
        self._event(kind, task_id, data, utcnow())

    def flush_working_memory(self, entries: list[tuple[str, str, str, str]]) -> int:
        """Persist buffered working-memory entries (task_id, key, value, created_at)."""
        if not entries:
            return 0
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.executemany(
                "INSERT INTO working_memory_log (task_id, key, value, created_at, expires_at)"
                " VALUES (?, ?, ?, ?, datetime(?, '+1 day'))",
                [(t, k, v, c, c) for t, k, v, c in entries],
            )
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return len(entries)

    def add_feedback(self, task_id: str, message_id: str | None, rating: int, comment: str | None) -> int:
        """Store a learning signal and return its id."""
        cur = self.conn.execute(
            "INSERT INTO learning_signals (task_id, message_id, rating, comment, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            (task_id, message_id, rating, comment, utcnow()),
        )
        return int(cur.lastrowid or 0)

    # -- reads -------------------------------------------------------------------------------

    def search_knowledge(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Facts whose subject or text contains every word of the query."""
        col = self.fact_column
        where, args = _like_all(query, ["subject", col])
        rows = self.conn.execute(
            f"SELECT id, subject, {col}, type, confidence, source, valid_from, valid_until"
            f" FROM knowledge_store WHERE {where} ORDER BY id DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
        keys = ("id", "subject", "content", "type", "confidence", "source", "valid_from", "valid_until")
        return [dict(zip(keys, row)) for row in rows]

    def search_episodes(self, query: str, limit: int) -> list[dict[str, Any]]:
        """Episodes whose summary contains every word of the query."""
        where, args = _like_all(query, ["summary", "task_id"])
        rows = self.conn.execute(
            f"SELECT id, task_id, summary, created_at FROM episodes WHERE {where}"
            " ORDER BY id DESC LIMIT ?",
            [*args, limit],
        ).fetchall()
        return [dict(zip(("id", "task_id", "summary", "created_at"), r)) for r in rows]

    def search_social(self, query: str, limit: int) -> list[dict[str, Any]]:
        """People whose name contains the query, with their relations."""
        where, args = _like_all(query, ["name"])
        nodes = self.conn.execute(
            f"SELECT id, name, kind, mentions, first_seen, last_seen FROM social_graph_nodes"
            f" WHERE kind = 'person' AND {where} ORDER BY mentions DESC, id LIMIT ?",
            [*args, limit],
        ).fetchall()
        out = []
        for node_id, name, kind, mentions, first_seen, last_seen in nodes:
            rels = self.conn.execute(
                "SELECT n.name, e.relation, e.task_id FROM social_graph_edges e"
                " JOIN social_graph_nodes n ON n.id = CASE WHEN e.src = ? THEN e.dst ELSE e.src END"
                " WHERE e.src = ? OR e.dst = ? ORDER BY e.id DESC LIMIT 200",
                (node_id, node_id, node_id),
            ).fetchall()
            out.append(
                {
                    "id": node_id,
                    "name": name,
                    "kind": kind,
                    "mentions": mentions,
                    "first_seen": first_seen,
                    "last_seen": last_seen,
                    "relations": [{"name": n, "relation": r, "task_id": t} for n, r, t in rels],
                }
            )
        return out

    def replay(self, after_ms: int, task_id: str | None, after_id: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        """Channel-state events newer than `after_ms` (and after event `after_id`) that have not expired."""
        now_ms = int(time.time() * 1000)
        sql = (
            "SELECT id, task_id, ts_ms, event, data FROM channel_state_snapshots"
            " WHERE ts_ms > ? AND expires_at_ms > ?"
        )
        args: list[Any] = [after_ms, now_ms]
        if after_id:
            sql += " AND id > ?"
            args.append(after_id)
        if task_id:
            sql += " AND task_id = ?"
            args.append(task_id)
        rows = self.conn.execute(sql + " ORDER BY id LIMIT ?", [*args, limit]).fetchall()
        # `id` orders events that share a millisecond; clients page on it with after_id.
        return [
            {"id": i, "task_id": t, "ts": ts, "event": e, "data": json.loads(d)} for i, t, ts, e, d in rows
        ]

    def export(self) -> dict[str, Any]:
        """The whole memory as a portable JSON bundle."""
        q = self.conn.execute
        col = self.fact_column
        return {
            "episodes": _rows(q("SELECT task_id, summary, created_at FROM episodes ORDER BY id")),
            "knowledge": _rows(
                q(
                    f"SELECT subject, {col} AS content, type, confidence, source, valid_from,"
                    " valid_until FROM knowledge_store ORDER BY id"
                )
            ),
            "social": {
                "nodes": _rows(
                    q("SELECT name, kind, mentions, first_seen, last_seen FROM social_graph_nodes ORDER BY id")
                ),
                "edges": _rows(
                    q(
                        "SELECT s.name AS src, d.name AS dst, e.relation, e.task_id, e.created_at"
                        " FROM social_graph_edges e JOIN social_graph_nodes s ON s.id = e.src"
                        " JOIN social_graph_nodes d ON d.id = e.dst ORDER BY e.id"
                    )
                ),
            },
            "conversations": _rows(
                q("SELECT task_id, message_id, role, content, created_at FROM conversations ORDER BY id")
            ),
            "learning_signals": _rows(
                q("SELECT task_id, message_id, rating, comment, created_at FROM learning_signals ORDER BY id")
            ),
        }

    def import_bundle(self, bundle: dict[str, Any]) -> dict[str, int]:
        """Merge an exported bundle (checked against the MemoryBundle schema of engine.openapi); rows
        already present are skipped; all or nothing. Returns rows added per store; BundleError when a
        relation names an unknown person."""
        added = {"episodes": 0, "knowledge": 0, "people": 0, "edges": 0, "conversations": 0,
                 "learning_signals": 0}
        c = self.conn
        col = self.fact_column
        c.execute("BEGIN IMMEDIATE")
        try:
            for e in bundle.get("episodes", []):
                added["episodes"] += _insert_absent(
                    c, "episodes", {"task_id": e["task_id"], "summary": e["summary"],
                                    "created_at": e["created_at"]})
            for k in bundle.get("knowledge", []):
                added["knowledge"] += _insert_absent(
                    c, "knowledge_store",
                    {"subject": k["subject"], col: k["content"], "type": k.get("type", "fact"),
                     "confidence": k["confidence"], "source": k["source"],
                     "valid_from": k["valid_from"], "valid_until": k.get("valid_until")},
                    key=("subject", col))
            social = bundle.get("social", {})
            for n in social.get("nodes", []):
                added["people"] += _insert_absent(
                    c, "social_graph_nodes",
                    {"name": n["name"], "kind": n.get("kind", "person"), "mentions": n.get("mentions", 0),
                     "first_seen": n["first_seen"], "last_seen": n["last_seen"]}, key=("name",))
            for i, e in enumerate(social.get("edges", [])):
                src, dst = (self._known_node(e[end], f"social.edges[{i}].{end}") for end in ("src", "dst"))
                added["edges"] += _insert_absent(
                    c, "social_graph_edges",
                    {"src": src, "dst": dst, "relation": e["relation"], "task_id": e.get("task_id"),
                     "created_at": e["created_at"]})
            for m in bundle.get("conversations", []):
                added["conversations"] += _insert_absent(
                    c, "conversations",
                    {"task_id": m["task_id"], "message_id": m["message_id"], "role": m["role"],
                     "content": m["content"], "created_at": m["created_at"]}, key=("message_id",))
            for s in bundle.get("learning_signals", []):
                added["learning_signals"] += _insert_absent(
                    c, "learning_signals",
                    {"task_id": s["task_id"], "message_id": s.get("message_id"), "rating": s["rating"],
                     "comment": s.get("comment"), "created_at": s["created_at"]})
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return added

    def ping(self) -> None:
        """Raise if the brain cannot be read."""
        self.conn.execute("SELECT count(*) FROM schema_migrations").fetchone()


def _episode_summary(turn: TurnRecord) -> str:
    text = " ".join(turn.message.split())
    return f"[{turn.task_id}] {text[:160]}"


def _like_all(query: str, columns: list[str]) -> tuple[str, list[str]]:
    words = [w for w in query.split() if w][:8]
    if not words:
        return "1", []
    clauses, args = [], []
    for word in words:
        escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        ors = " OR ".join(f"{c} LIKE ? ESCAPE '\\'" for c in columns)
        clauses.append(f"({ors})")
        args.extend([f"%{escaped}%"] * len(columns))
    return " AND ".join(clauses), args


def _rows(cur: sqlite3.Cursor) -> list[dict[str, Any]]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def _insert_absent(
    conn: sqlite3.Connection, table: str, values: dict[str, Any], key: tuple[str, ...] | None = None
) -> int:
    """Insert `values` unless a row with the same key columns (default: all) exists."""
    key_cols = key or tuple(values)
    where = " AND ".join(f"{k} IS ?" for k in key_cols)
    if conn.execute(f"SELECT 1 FROM {table} WHERE {where} LIMIT 1", [values[k] for k in key_cols]).fetchone():
        return 0
    cols = ", ".join(values)
    conn.execute(f"INSERT INTO {table} ({cols}) VALUES ({', '.join('?' * len(values))})", list(values.values()))
    return 1
