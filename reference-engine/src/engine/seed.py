"""Build a realistic large brain quickly (for benchmarks), through the release's own migrations."""

from __future__ import annotations

import json
import os
import random
import re
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Iterator

from engine.brain import open_connection
from engine.releases import Release
from engine.schema import migrate
from engine.turn import PEOPLE

__all__ = ["parse_size", "seed_brain"]

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
          "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*$", re.I)
_TOPICS = ["roadmap", "budget", "hiring plan", "launch", "incident review", "design doc",
           "customer call", "quarterly goals", "migration", "security audit", "pricing"]
_WORDS = ("the a to of and in for on with about after before we they should could review plan "
          "draft notes send update team meeting numbers data model agent memory search context "
          "summary deadline next week follow up owner risk estimate").split()
_BATCH = 2000


def parse_size(text: str) -> int:
    """'500MB' -> 500_000_000; accepts B, KB, MB, GB and KiB, MiB, GiB."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"size {text!r} is not like 500MB or 2GB")
    value = float(match[1]) * _UNITS[(match[2] or "").upper()]
    if value < 1_000_000:
        raise ValueError(f"size {text!r} is below 1MB")
    return int(value)


def _sentence(rng: random.Random, words: int) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


class _Generator:
    """Realistic rows for each table, deterministic for a seed."""

    def __init__(self, rng: random.Random, start: datetime) -> None:
        self.rng, self.clock, self.turn = rng, start, 0

    def turn_rows(self, fact_col: str) -> dict[str, list[tuple[Any, ...]]]:
        """Rows of one simulated turn, keyed by table."""
        rng = self.rng
        self.turn += 1
        self.clock += timedelta(seconds=rng.randint(5, 90))
        now = self.clock.isoformat(timespec="milliseconds")
        task = f"task-{rng.randint(1, 400):04d}"
        req = f"req-seed-{self.turn:09d}"
        a, b = rng.sample(PEOPLE, 2)
        topic = rng.choice(_TOPICS)
        message = f"Met {a} and {b} about the {topic}. {_sentence(rng, rng.randint(8, 30))}"
        reply = f"Noted. {_sentence(rng, rng.randint(10, 40))}"
        steps = [{"step": s, "tokens": rng.randint(50, 4000), "detail": _sentence(rng, 25)}
                 for s in ("plan", "retrieve", "respond")]
        rows: dict[str, list[tuple[Any, ...]]] = {
            "conversations": [(task, f"{req}-user", "user", message, now),
                              (task, f"{req}-assistant", "assistant", reply, now)],
            "trajectories": [(task, req, json.dumps(steps), "completed", now, now)],
            "observability_events": [
                (now, kind, task, json.dumps({"request_id": req, "ms": rng.randint(20, 900),
                                              "context": _sentence(rng, 40)}))
                for kind in ("turn_started", "model_call", "turn_completed")
            ],
            "working_memory_log": [(task, key, _sentence(rng, 30), now, now)
                                   for key in ("context", "scratchpad")],
            "episodes": [(task, f"[{task}] {message[:160]}", now)],
            "channel_state_snapshots": [(task, int(self.clock.timestamp() * 1000), "text_delta",
                                         json.dumps({"text": reply}), 0)],
        }
        if rng.random() < 0.3:
            rows["knowledge_store"] = [(f"The {topic}", f"The {topic} is {_sentence(rng, 6)}",
                                        "fact", 0.9, f"trajectory:{req}", now)]
        if rng.random() < 0.2:
            rows["learning_signals"] = [(task, f"{req}-assistant", rng.choice([-1, 1, 4, 5]), None, now)]
        return rows


_INSERT = {
    "conversations": "INSERT INTO conversations (task_id, message_id, role, content, created_at) VALUES (?,?,?,?,?)",
    "trajectories": "INSERT INTO trajectories (task_id, request_id, steps, status, started_at, finished_at) VALUES (?,?,?,?,?,?)",
    "observability_events": "INSERT INTO observability_events (ts, kind, task_id, data) VALUES (?,?,?,?)",
    "working_memory_log": "INSERT INTO working_memory_log (task_id, key, value, created_at, expires_at) VALUES (?,?,?,?,?)",
    "episodes": "INSERT INTO episodes (task_id, summary, created_at) VALUES (?,?,?)",
    "channel_state_snapshots": "INSERT INTO channel_state_snapshots (task_id, ts_ms, event, data, expires_at_ms) VALUES (?,?,?,?,?)",
    "knowledge_store": "INSERT INTO knowledge_store (subject, {fact}, type, confidence, source, valid_from) VALUES (?,?,?,?,?,?)",
    "learning_signals": "INSERT INTO learning_signals (task_id, message_id, rating, comment, created_at) VALUES (?,?,?,?,?)",
}


def _batches(gen: _Generator, fact_col: str) -> Iterator[dict[str, list[tuple[Any, ...]]]]:
    while True:
        batch: dict[str, list[tuple[Any, ...]]] = {}
        for _ in range(_BATCH):
            for table, rows in gen.turn_rows(fact_col).items():
                batch.setdefault(table, []).extend(rows)
        yield batch


def _size(conn: sqlite3.Connection) -> int:
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    return int(pages * conn.execute("PRAGMA page_size").fetchone()[0])


def _people(conn: sqlite3.Connection, now: str) -> None:
    conn.executemany(
        "INSERT OR IGNORE INTO social_graph_nodes (name, kind, mentions, first_seen, last_seen)"
        " VALUES (?, 'person', 0, ?, ?)", [(p, now, now) for p in PEOPLE])
    ids = [r[0] for r in conn.execute("SELECT id FROM social_graph_nodes WHERE kind = 'person'")]
    conn.executemany(
        "INSERT INTO social_graph_edges (src, dst, relation, task_id, created_at) VALUES (?, ?, 'co_mentioned', NULL, ?)",
        [(a, b, now) for a in ids for b in ids if a < b])


def seed_brain(brain: Path, target: int, release: Release, rng_seed: int = 0) -> dict[str, Any]:
    """Grow `brain` to about `target` bytes of realistic rows; returns what was written."""
    started = time.monotonic()
    if not brain.exists():
        os.close(os.open(brain, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    conn = open_connection(brain)
    try:
        state = migrate(conn, release)
        if not state.ok:
            raise ValueError(f"release {release.version} cannot write this brain: {state.message}")
        fact_col = "fact" if state.head >= 4 else "content"
        conn.execute("PRAGMA synchronous = OFF")  # a seed is rebuilt, not recovered, after a crash
        gen = _Generator(random.Random(rng_seed), datetime.now(timezone.utc) - timedelta(days=365))
        _people(conn, gen.clock.isoformat())
        counts: dict[str, int] = {}
        for batch in _batches(gen, fact_col):
            if _size(conn) >= target:
                break
            conn.execute("BEGIN")
            for table, rows in batch.items():
                conn.executemany(_INSERT[table].format(fact=fact_col), rows)
                counts[table] = counts.get(table, 0) + len(rows)
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        size = _size(conn)
    finally:
        conn.close()
    return {"brain": str(brain), "release": release.version, "schema": state.head, "bytes": size,
            "turns": counts.get("episodes", 0), "rows": counts, "seconds": round(time.monotonic() - started, 2)}
