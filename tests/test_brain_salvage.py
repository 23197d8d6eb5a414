"""Salvage on real brains: the bad window's rows come out of the newer brain and replay into the old one."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any

import pytest

from backout.brain.salvage import (
    ENGINE_BUNDLE_FORMAT,
    ENGINE_MEMORY_TABLES,
    MEMORY_IMPORT_FILE,
    NO_MARK_NOTE,
    SUMMARY_FILE,
    SalvageError,
    SalvageReport,
    read_bundle,
    salvage,
)
from backout.brain.tables import TableMark, connect_readonly, table_marks
from engine.brain import Brain, TurnRecord, open_connection, utcnow
from engine.releases import get_release
from engine.schema import migrate

# -- helpers -------------------------------------------------------------------------------------


def _engine_brain(path: Path, version: str = "2.3.1") -> tuple[sqlite3.Connection, Brain]:
    conn = open_connection(path)
    state = migrate(conn, get_release(version))
    assert state.ok
    return conn, Brain(conn, state.head)


def _turn(brain: Brain, n: int, people: list[str] | None = None, facts: bool = True) -> None:
    brain.record_turn(
        TurnRecord(
            task_id=f"t{n}",
            request_id=f"r{n}",
            message=f"Turn {n}: the budget is {n}k.",
            reply=f"Noted {n}.",
            started_at=utcnow(),
            facts=[(f"Budget {n}", f"The budget is {n}k")] if facts else [],
            people=people if people is not None else ["Priya"],
            mcp=[("mcp", "email", f"person-{n}")],
            events=[(int(time.time() * 1000), "thread_lifecycle", {"phase": "completed"})],
        )
    )


def _mark(
    conn: sqlite3.Connection, copy_to: Path | None = None
) -> tuple[dict[str, TableMark], str]:
    """What a snapshot records: a copy of the brain (backup API), its marks, and its time."""
    if copy_to is not None:
        dst = sqlite3.connect(copy_to)
        conn.backup(dst)
        dst.close()
    marks = table_marks(conn)
    since = utcnow()
    time.sleep(0.01)  # later writes get a strictly later millisecond
    return marks, since


def _ids_after(conn: sqlite3.Connection, table: str, mark: TableMark) -> list[int]:
    floor = mark.max_rowid or 0
    return [
        r[0]
        for r in conn.execute(
            f'SELECT rowid FROM "{table}" WHERE rowid > ? ORDER BY rowid', (floor,)
        )
    ]


def _rows(out: Path) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for table, row in read_bundle(out):
        found.setdefault(table, []).append(row)
    return found


def _entry(report: SalvageReport, table: str) -> Any:
    return next(t for t in report.tables if t.table == table)


def _plain_brain(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


# -- (a) rows of the bad window ------------------------------------------------------------------


def test_salvage_finds_exactly_the_new_rows_and_the_updated_node(tmp_path: Path) -> None:
    brain_path = tmp_path / "brain.sqlite"
    conn, brain = _engine_brain(brain_path)
    _turn(brain, 1, ["Priya", "Sam"])
    _turn(brain, 2, ["Priya"])
    _turn(brain, 3, [])
    marks, since = _mark(conn)
    priya_before = conn.execute(
        "SELECT last_seen, mentions FROM social_graph_nodes WHERE name='Priya'"
    ).fetchone()

    _turn(brain, 4, ["Priya", "Alex"])  # Priya again: last_seen and mentions change
    _turn(brain, 5, [], facts=False)
    brain.add_feedback("t4", "r4-assistant", 5, "great")
    expected = {t: _ids_after(conn, t, marks[t]) for t in marks}
    conn.close()  # a stopped, quarantined brain: no -wal left
    assert not Path(f"{brain_path}-wal").exists()

    calls: list[tuple[int, int]] = []
    report = salvage(
        marks,
        since,
        brain_path,
        tmp_path / "salvage",
        snapshot_id="snap-1",
        progress=lambda done, total: calls.append((done, total)),
    )
    rows = _rows(tmp_path / "salvage")

    for table, ids in expected.items():
        entry = _entry(report, table)
        added = [r["_rowid"] for r in rows.get(table, []) if r["_salvage"] == "added"]
        assert added == ids, table
        assert entry.added == len(ids) and entry.deleted_estimate == 0, table
    assert len(expected["episodes"]) == 2 and len(expected["conversations"]) == 4
    assert len(expected["learning_signals"]) == 1 and len(expected["knowledge_store"]) == 1

    changed = {t: [r for r in rs if r["_salvage"] == "changed"] for t, rs in rows.items()}
    assert [r["name"] for r in changed["social_graph_nodes"]] == ["Priya"]
    assert sum(len(rs) for rs in changed.values()) == 1
    priya = changed["social_graph_nodes"][0]
    assert priya["last_seen"] > priya_before[0] and priya["mentions"] == priya_before[1] + 1
    assert [r["name"] for r in rows["social_graph_nodes"] if r["_salvage"] == "added"] == ["Alex"]

    summary = json.loads((tmp_path / "salvage" / SUMMARY_FILE).read_text())
    assert summary["snapshot_id"] == "snap-1" and summary["since"] == since
    assert summary["opened"] == "immutable" and summary["schema_diff"] is None
    assert summary["source"] == str(brain_path.absolute()) and "replay" in summary
    names = [t["table"] for t in summary["tables"]]
    assert names[: len(ENGINE_MEMORY_TABLES)] == list(ENGINE_MEMORY_TABLES)
    assert names[len(ENGINE_MEMORY_TABLES) :] == sorted(names[len(ENGINE_MEMORY_TABLES) :])
    assert summary["total"] == report.total == sum(len(rs) for rs in rows.values())
    episodes = summary["tables"][0]
    assert episodes["file"] == "episodes.jsonl" and episodes["columns"] == [
        "id",
        "task_id",
        "summary",
        "created_at",
    ]
    assert calls[0] == (0, report.total) and calls[-1] == (report.total, report.total)
    assert "social_graph_nodes" in report.render() and "deleted≈" in report.render()

    bundle = json.loads((tmp_path / "salvage" / MEMORY_IMPORT_FILE).read_text())
    assert bundle["format"] == ENGINE_BUNDLE_FORMAT
    assert {n["name"] for n in bundle["social"]["nodes"]} == {"Priya", "Alex", "me"}
    assert {(e["src"], e["dst"], e["relation"]) for e in bundle["social"]["edges"]} == {
        ("me", "Priya", "mentioned"),
        ("me", "Alex", "mentioned"),
        ("Priya", "Alex", "co_mentioned"),
    }


# -- (b) across a forward-only schema change -----------------------------------------------------


def test_salvage_across_the_knowledge_store_rebuild(tmp_path: Path) -> None:
    brain_path = tmp_path / "brain.sqlite"
    conn, brain = _engine_brain(brain_path, "2.3.1")
    _turn(brain, 1)
    marks, since = _mark(conn)
    assert migrate(conn, get_release("2.4.0")).applied == (3, 4)
    brain = Brain(conn, 4)
    _turn(brain, 2)
    _turn(brain, 3)
    diff = {"from": "2.3.1", "to": "2.4.0", "renamed": {"knowledge_store.content": "fact"}}

    report = salvage(marks, since, brain_path, tmp_path / "out", schema_diff=diff)
    rows = _rows(tmp_path / "out")

    facts = rows["knowledge_store"]
    assert [r["fact"] for r in facts] == ["The budget is 2k", "The budget is 3k"]
    assert all("content" not in r and r["extractor"] == "pattern-v1" for r in facts)
    assert {r["_salvage"] for r in facts} == {"added"}
    assert "importance" in _entry(report, "episodes").columns
    assert [r["id"] for r in rows["schema_migrations"]] == [3, 4]
    assert _entry(report, "memory_tags").added == 0
    bundle = json.loads((tmp_path / "out" / MEMORY_IMPORT_FILE).read_text())
    assert [k["content"] for k in bundle["knowledge"]] == ["The budget is 2k", "The budget is 3k"]
    assert all("fact" not in k for k in bundle["knowledge"])
    assert json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())["schema_diff"] == diff


# -- (c) replay into the snapshot ----------------------------------------------------------------


def test_memory_import_replays_the_bad_window_into_the_snapshot(tmp_path: Path) -> None:
    brain_path, snapshot = tmp_path / "brain.sqlite", tmp_path / "snapshot.sqlite"
    conn, brain = _engine_brain(brain_path, "2.3.1")
    for n in range(1, 4):
        _turn(brain, n, ["Priya", "Sam"] if n % 2 else ["Jordan"])
    brain.add_feedback("t1", None, 4, "before")
    marks, since = _mark(conn, copy_to=snapshot)

    migrate(conn, get_release("2.4.0"))  # the bad upgrade
    brain = Brain(conn, 4)
    for n in range(4, 8):
        _turn(brain, n, ["Priya", "Lee"] if n % 2 else ["Mina"])
    brain.add_feedback("t5", "r5-assistant", -1, "wrong answer")
    brain.add_feedback("t6", None, 5, None)
    newer_export = brain.export()
    conn.close()

    salvage(marks, since, brain_path, tmp_path / "salvage")
    bundle = json.loads((tmp_path / "salvage" / MEMORY_IMPORT_FILE).read_text())

    old = open_connection(snapshot)
    state = migrate(old, get_release("2.3.1"))
    assert state.ok and state.head == 2
    restored = Brain(old, state.head)
    added = restored.import_bundle(bundle)
    assert added["episodes"] == 4 and added["knowledge"] == 4 and added["learning_signals"] == 2
    assert added["conversations"] == 8 and added["people"] == 2  # Lee and Mina; Priya and me exist
    after = restored.export()

    salvaged = _rows(tmp_path / "salvage")
    episodes = {(e["task_id"], e["summary"], e["created_at"]) for e in after["episodes"]}
    assert all(
        (r["task_id"], r["summary"], r["created_at"]) in episodes for r in salvaged["episodes"]
    )
    facts = {(k["subject"], k["content"]) for k in after["knowledge"]}
    assert all((r["subject"], r["fact"]) in facts for r in salvaged["knowledge_store"])
    messages = {m["message_id"] for m in after["conversations"]}
    assert all(r["message_id"] in messages for r in salvaged["conversations"])
    signals = {
        (s["task_id"], s["rating"], s["comment"], s["created_at"])
        for s in after["learning_signals"]
    }
    assert all(
        (r["task_id"], r["rating"], r["comment"], r["created_at"]) in signals
        for r in salvaged["learning_signals"]
    )
    # The restored brain now holds the whole memory, in order, exactly as the newer brain had it.
    for store in ("episodes", "knowledge", "conversations", "learning_signals"):
        assert after[store] == newer_export[store], store
    assert after["social"]["edges"] == newer_export["social"]["edges"]
    assert {n["name"] for n in after["social"]["nodes"]} == {
        n["name"] for n in newer_export["social"]["nodes"]
    }
    # Importing the same bundle again adds nothing.
    assert not any(restored.import_bundle(bundle).values())


# -- (d) include / exclude -----------------------------------------------------------------------


def test_include_and_exclude_choose_tables(tmp_path: Path) -> None:
    brain_path = tmp_path / "brain.sqlite"
    conn, brain = _engine_brain(brain_path)
    marks, since = _mark(conn)
    _turn(brain, 1, ["Priya"])

    report = salvage(
        marks,
        since,
        brain_path,
        tmp_path / "a",
        include=["episodes", "SOCIAL_*"],
        exclude=["social_graph_edges"],
    )
    assert [t.table for t in report.tables] == ["episodes", "social_graph_nodes"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "episodes.jsonl",
        MEMORY_IMPORT_FILE,
        "social_graph_nodes.jsonl",
        SUMMARY_FILE,
    ]
    bundle = json.loads((tmp_path / "a" / MEMORY_IMPORT_FILE).read_text())
    assert (
        len(bundle["episodes"]) == 1
        and bundle["knowledge"] == []
        and bundle["social"]["edges"] == []
    )

    report = salvage(marks, since, brain_path, tmp_path / "b", exclude=["*"])
    assert report.tables == [] and report.total == 0

    with pytest.raises(SalvageError, match="matches no table"):
        salvage(marks, since, brain_path, tmp_path / "c", include=["episodez"])
    assert not (tmp_path / "c").exists()


# -- (e) WITHOUT ROWID tables and other services -------------------------------------------------


def test_without_rowid_tables_are_salvaged_by_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    conn = _plain_brain(path)
    conn.execute(
        "CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT, Updated_At TEXT) WITHOUT ROWID"
    )
    conn.execute("CREATE TABLE tags (tag TEXT PRIMARY KEY, n INTEGER) WITHOUT ROWID")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    old = "2026-01-01T00:00:00.000+00:00"
    conn.executemany(
        "INSERT INTO kv VALUES (?, ?, ?)", [("a", "1", old), ("b", "2", old), ("c", "3", old)]
    )
    conn.executemany("INSERT INTO tags VALUES (?, ?)", [("x", 1), ("y", 2)])
    conn.executemany("INSERT INTO items (name) VALUES (?)", [("i1",), ("i2",), ("i3",)])
    marks, since = _mark(conn)
    assert marks["kv"] == TableMark(3, None)

    conn.execute("UPDATE kv SET value = '20', Updated_At = ? WHERE key = 'b'", (utcnow(),))
    conn.execute("INSERT INTO kv VALUES ('d', '4', ?)", (utcnow(),))
    conn.execute("DELETE FROM kv WHERE key = 'c'")
    conn.execute("INSERT INTO tags VALUES ('z', 3)")
    conn.execute("DELETE FROM items WHERE name = 'i1'")
    conn.execute("INSERT INTO items (name) VALUES ('i4')")
    conn.execute("CREATE TABLE later (k TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("INSERT INTO later VALUES ('new')")
    conn.close()

    report = salvage(marks, since, path, tmp_path / "out")
    rows = _rows(tmp_path / "out")
    kv = _entry(report, "kv")
    assert (kv.method, kv.added, kv.changed, kv.timestamp_columns) == (
        "timestamp",
        0,
        2,
        ["Updated_At"],
    )
    assert kv.deleted_estimate == 0  # without a rowid mark it is a lower bound: 'd' hides 'c'
    assert sorted((r["key"], r["value"], r["_rowid"]) for r in rows["kv"]) == [
        ("b", "20", None),
        ("d", "4", None),
    ]
    tags = _entry(report, "tags")
    assert (tags.method, tags.note, tags.changed) == ("all", NO_MARK_NOTE, 3)
    assert NO_MARK_NOTE in report.render()
    items = _entry(report, "items")
    assert (items.added, items.changed, items.deleted_estimate) == (1, 0, 1)
    assert _entry(report, "later").added == 1 and rows["later"] == [
        {"k": "new", "_rowid": None, "_salvage": "added"}
    ]
    assert not (tmp_path / "out" / MEMORY_IMPORT_FILE).exists() and report.memory_import is None


# -- (f) BLOBs -----------------------------------------------------------------------------------


def test_blob_values_round_trip_as_base64(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite"
    conn = _plain_brain(path)
    conn.execute("CREATE TABLE blobs (id INTEGER PRIMARY KEY, data BLOB, created_at TEXT)")
    conn.execute("INSERT INTO blobs (data, created_at) VALUES (x'00', ?)", (utcnow(),))
    marks, since = _mark(conn)
    values = [bytes(range(256)), b"", b'\x00\xff{"$base64"}', None, "text"]
    conn.executemany(
        "INSERT INTO blobs (data, created_at) VALUES (?, ?)", [(v, utcnow()) for v in values]
    )
    conn.close()

    salvage(marks, since, path, tmp_path / "out")
    raw = (tmp_path / "out" / "blobs.jsonl").read_text().splitlines()
    assert len(raw) == 5 and '"$base64"' in raw[0]
    assert [row["data"] for _, row in read_bundle(tmp_path / "out")] == values


# -- (g) private files, and refusing to mix bundles ----------------------------------------------


def test_files_are_private_and_a_non_empty_out_dir_is_refused(tmp_path: Path) -> None:
    brain_path = tmp_path / "brain.sqlite"
    conn, brain = _engine_brain(brain_path)
    marks, since = _mark(conn)
    _turn(brain, 1)
    conn.close()

    out = tmp_path / "quarantine" / "q1" / "salvage"
    old_umask = os.umask(0o022)
    try:
        salvage(marks, since, brain_path, out)
    finally:
        os.umask(old_umask)
    for folder in (tmp_path / "quarantine", tmp_path / "quarantine" / "q1", out):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    files = list(out.iterdir())
    assert len(files) > 10 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert sorted(p.name for p in out.parent.iterdir()) == ["salvage"]  # no partial folder left

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("mine")
    with pytest.raises(SalvageError, match="not empty"):
        salvage(marks, since, brain_path, busy)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["brain.sqlite", "busy", "quarantine"]

    empty = tmp_path / "empty"
    empty.mkdir(mode=0o755)
    salvage(marks, since, brain_path, empty)
    assert stat.S_IMODE(empty.stat().st_mode) == 0o700 and (empty / SUMMARY_FILE).exists()

    with pytest.raises(SalvageError, match="not found"):
        salvage(marks, since, tmp_path / "missing.sqlite", tmp_path / "x")
    with pytest.raises(SalvageError, match="ISO 8601"):
        salvage(marks, "yesterday", brain_path, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# -- (h) volume ----------------------------------------------------------------------------------


def test_ten_thousand_added_rows(tmp_path: Path) -> None:
    brain_path = tmp_path / "brain.sqlite"
    conn, brain = _engine_brain(brain_path)
    _turn(brain, 1)
    marks, since = _mark(conn)
    now = utcnow()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO episodes (task_id, summary, created_at) VALUES (?, ?, ?)",
        [(f"bulk-{i}", f"[bulk-{i}] episode {i}", now) for i in range(10_000)],
    )
    conn.execute("COMMIT")
    conn.close()

    calls: list[tuple[int, int]] = []
    report = salvage(
        marks, since, brain_path, tmp_path / "out", progress=lambda d, t: calls.append((d, t))
    )
    assert report.total == 10_000 and _entry(report, "episodes").added == 10_000
    lines = (tmp_path / "out" / "episodes.jsonl").read_text().splitlines()
    assert len(lines) == 10_000
    assert [json.loads(line)["task_id"] for line in lines] == [f"bulk-{i}" for i in range(10_000)]
    bundle = json.loads((tmp_path / "out" / MEMORY_IMPORT_FILE).read_text())
    assert len(bundle["episodes"]) == 10_000
    assert calls[-1] == (10_000, 10_000) and [d for d, _ in calls] == sorted(d for d, _ in calls)


# -- (i) rows still in the -wal ------------------------------------------------------------------


def test_rows_still_in_the_wal_are_salvaged(tmp_path: Path) -> None:
    brain_path = tmp_path / "brain.sqlite"
    conn, brain = _engine_brain(brain_path)
    _turn(brain, 1)
    marks, since = _mark(conn)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    _turn(brain, 2, ["Priya", "Noor"])
    _turn(brain, 3)
    wal = Path(f"{brain_path}-wal")
    assert wal.stat().st_size > 0  # the writer is still open: turns 2 and 3 live only in the WAL

    blind = connect_readonly(brain_path, immutable=True)
    assert (
        blind.execute("SELECT count(*) FROM episodes").fetchone()[0] == 1
    )  # immutable=1 misses them
    blind.close()

    quarantine = tmp_path / "quarantine"
    quarantine.mkdir()
    shutil.copy2(brain_path, quarantine / "brain.sqlite")  # as a crash would leave it: no -shm
    shutil.copy2(wal, quarantine / "brain.sqlite-wal")

    for source, out in (
        (brain_path, tmp_path / "live"),
        (quarantine / "brain.sqlite", tmp_path / "copied"),
    ):
        report = salvage(marks, since, source, out)
        assert report.opened.startswith("read-only")
        rows = _rows(out)
        assert [r["task_id"] for r in rows["episodes"]] == ["t2", "t3"]
        assert [r["name"] for r in rows["social_graph_nodes"] if r["_salvage"] == "added"] == [
            "Noor"
        ]
        assert [r["name"] for r in rows["social_graph_nodes"] if r["_salvage"] == "changed"] == [
            "Priya"
        ]
    # Reading the quarantined brain left its WAL alone.
    assert (quarantine / "brain.sqlite-wal").read_bytes() == wal.read_bytes()
    conn.close()
