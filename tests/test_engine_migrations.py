"""Migrations on real brains: upgrade paths keep rows; old releases refuse what they cannot read."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from engine.brain import Brain, TurnRecord, open_connection, utcnow
from engine.releases import get_release
from engine.schema import load_migrations, migrate


def _turn(brain: Brain, n: int) -> None:
    brain.record_turn(
        TurnRecord(task_id=f"t{n}", request_id=f"r{n}", message=f"The budget is {n}k. Met Priya.",
                   reply="Noted.", started_at=utcnow(), facts=[("The budget", f"The budget is {n}k")],
                   people=["Priya"], mcp=[("mcp", "email", "Jordan")],
                   events=[(1, "thread_lifecycle", {"phase": "completed"})])
    )


def _counts(conn: sqlite3.Connection) -> dict[str, int]:
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    return {t: conn.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}


def test_every_migration_declares_its_compatibility() -> None:
    migrations = load_migrations()
    assert [m.id for m in migrations] == [1, 2, 3, 4, 5]
    assert [m.additive for m in migrations] == [False, False, True, False, True]


def test_upgrade_path_keeps_every_row(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "brain.sqlite")
    state = migrate(conn, get_release("2.3.1"))
    assert state.ok and state.head == 2 and state.applied == (1, 2)
    _turn(Brain(conn, 2), 1)
    before = _counts(conn)

    state = migrate(conn, get_release("2.4.0"))
    assert state.ok and state.applied == (3, 4)
    _turn(Brain(conn, 4), 2)
    state = migrate(conn, get_release("2.4.1"))
    assert state.ok and state.applied == (5,)

    after = _counts(conn)
    for table, rows in before.items():
        if table != "schema_migrations":
            assert after[table] >= rows, table
    facts = [r[0] for r in conn.execute("SELECT fact FROM knowledge_store ORDER BY id")]
    assert facts == ["The budget is 1k", "The budget is 2k"]
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 5
    ledger = conn.execute("SELECT id, engine_version FROM schema_migrations ORDER BY id").fetchall()
    assert ledger == [(1, "2.3.1"), (2, "2.3.1"), (3, "2.4.0"), (4, "2.4.0"), (5, "2.4.1")]


def test_old_release_refuses_a_brain_after_a_forward_only_migration(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "brain.sqlite")
    migrate(conn, get_release("2.4.0"))
    state = migrate(conn, get_release("2.3.1"))
    assert state.status == "MIGRATION_REQUIRED"
    assert state.head == 4
    assert "restore" in state.message


def test_release_tolerates_a_newer_additive_migration(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "brain.sqlite")
    migrate(conn, get_release("2.4.1"))
    state = migrate(conn, get_release("2.4.0"))
    assert state.ok and state.head == 5 and state.applied == ()
    _turn(Brain(conn, 4), 1)  # 2.4.0 writes without knowing the 0005 column


def test_changed_migration_file_is_a_checksum_mismatch(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "brain.sqlite")
    migrate(conn, get_release("2.3.1"))
    conn.execute("UPDATE schema_migrations SET sha256 = 'x' WHERE id = 2")
    state = migrate(conn, get_release("2.3.1"))
    assert state.status == "MIGRATION_CHECKSUM_MISMATCH"
    assert "0002_mcp_calls" in state.message


def test_failed_migration_rolls_back_as_one_transaction(tmp_path: Path) -> None:
    conn = open_connection(tmp_path / "brain.sqlite")
    migrate(conn, get_release("2.3.1"))
    # A table 0003 is about to create already exists: 0003 must fail whole, ALTER included.
    conn.execute("CREATE TABLE memory_tags (x)")
    with pytest.raises(sqlite3.OperationalError):
        migrate(conn, get_release("2.4.0"))
    columns = [r[1] for r in conn.execute("PRAGMA table_info(episodes)")]
    assert "importance" not in columns
    assert conn.execute("SELECT max(id) FROM schema_migrations").fetchone()[0] == 2
