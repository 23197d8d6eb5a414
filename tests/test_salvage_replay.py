"""`backout salvage replay`: a real bad window, salvaged after a real restore, goes back in.

Engine bundles go through a real reference Engine on loopback (POST /memory/import); other
services' bundles go into their SQLite brain. Every CLI call is a subprocess.
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from backout_cli import backout, backout_json, sha256_of
from engine_proc import DEFAULT_KEY, EngineProcess

from backout.brain.replay import (
    LEFT_OUT_LEDGER,
    LEFT_OUT_EFFECTS,
    REASON_CHANGED,
    REASON_KEY_TAKEN,
    REASON_TABLE_MISSING,
    split_memory_import,
)

KEY_ENV = {"ENGINE_API_KEY": DEFAULT_KEY}

# -- laying out an incident as a brain rollback leaves it ----------------------------------------


def _write_config(folder: Path, brain: Path, health_url: str | None = None, *extra: str) -> Path:
    lines = ['state_dir = ".backout"', "", "[deployments.app]", f'brain = "{brain}"', *extra]
    if health_url:
        lines += [f'health_url = "{health_url}"', 'api_key = { env = "ENGINE_API_KEY" }']
    path = folder / "backout.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _snapshot(folder: Path) -> str:
    return str(backout_json("snapshot", "create", cwd=folder)["id"])


def _restore_and_extract(folder: Path, snapshot_id: str, incident_id: str, brain: Path) -> Path:
    """Restore the snapshot (the brain goes to quarantine), salvage it into the incident folder."""
    restored = backout_json("snapshot", "restore", snapshot_id, "--yes", cwd=folder)
    quarantined = Path(restored["quarantine"]) / brain.name
    incident = folder / ".backout" / "incidents" / incident_id
    report = backout_json(
        "salvage",
        "extract",
        "--snapshot",
        snapshot_id,
        "--from",
        str(quarantined),
        "--out",
        str(incident / "salvage"),
        cwd=folder,
    )
    record = {
        "id": incident_id,
        "deployment": "app",
        "from_version": "2.4.0",
        "to_version": "2.3.1",
        "snapshot": {"id": snapshot_id},
        "salvage": {
            "folder": str(incident / "salvage"),
            "total": report["total"],
            "tables": {t["table"]: t["added"] + t["changed"] for t in report["tables"]},
        },
        "effects": {"table": "mcp_calls", "rows": []},  # the engine profile's effects table, as a rollback records it
    }
    (incident / "incident.json").write_text(json.dumps(record, indent=2))
    return incident / "salvage"


def _turn(eng: EngineProcess, task_id: str, message: str) -> None:
    r = httpx.post(
        f"{eng.url}/execute",
        headers=eng.headers,
        json={"task_id": task_id, "message": message},
        timeout=60,
    )
    assert r.status_code == 200, r.text


def _export(eng: EngineProcess) -> dict[str, Any]:
    r = httpx.get(f"{eng.url}/memory/export", headers=eng.headers, timeout=60)
    assert r.status_code == 200, r.text
    stores = ("episodes", "knowledge", "social", "conversations", "learning_signals")
    return {k: v for k, v in r.json().items() if k in stores}  # not exported_at


def _engine_incident(
    start_engine: Any, folder: Path, window: list[str], incident_id: str
) -> tuple[EngineProcess, Path]:
    """2.3.1 with memory, snapshot, upgrade to 2.4.0 (forward-only), bad window, restore, salvage."""
    eng: EngineProcess = start_engine("2.3.1", brain=folder / "brain.sqlite")
    _turn(eng, "before", "The old fact is kept. Met Priya.")
    _write_config(folder, eng.brain, f"{eng.url}/health")
    snapshot_id = _snapshot(folder)
    assert eng.stop() == 0
    eng.start(release="2.4.0")
    eng.wait_healthy()
    for i, message in enumerate(window):
        _turn(eng, f"window-{i}", message)
    assert eng.stop() == 0
    bundle = _restore_and_extract(folder, snapshot_id, incident_id, eng.brain)
    eng.start(release="2.3.1")  # the old version, on the restored brain, on the same port
    eng.wait_healthy()
    return eng, bundle


def _replay(folder: Path, incident_id: str, *args: str, env: dict[str, str] | None = None) -> Any:
    return backout("salvage", "replay", incident_id, *args, cwd=folder, env=env or KEY_ENV)


def _tables(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["table"]: t for t in report["tables"]}


# -- the Engine: POST /memory/import -------------------------------------------------------------


def test_replay_brings_the_bad_window_back_through_the_engine(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    window = [f"The window fact {i} is kept. Met Yara. Please email Sam." for i in range(4)]
    eng, bundle = _engine_incident(start_engine, tmp_path, window, "inc-1")
    memory = json.loads((bundle / "memory-import.json").read_text())
    before = _export(eng)
    assert not {k["content"] for k in memory["knowledge"]} & {
        k["content"] for k in before["knowledge"]
    }

    shown = backout_json("salvage", "show", "inc-1", cwd=tmp_path)
    assert shown["bundle"] == str(bundle) and shown["schema_diff_kind"] == "breaking"
    assert shown["effects"] == {"table": "mcp_calls", "rows": 4} and shown["replay_command"] == "backout salvage replay inc-1"
    assert {t["table"]: t["added"] for t in shown["tables"]}["episodes"] == 4
    text = backout("salvage", "show", "inc-1", cwd=tmp_path)
    assert text.returncode == 0 and "mcp_calls: 4" in text.stdout and "breaking" in text.stdout

    # --dry-run says what would be sent and sends nothing.
    dry = _replay(tmp_path, "inc-1", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    plan = json.loads(dry.stdout)
    assert plan["dry_run"] and plan["mode"] == "engine" and plan["requests"] == 1
    assert _tables(plan)["knowledge_store"]["replayed"] == 4  # would be sent
    assert _export(eng) == before

    # A wrong key is refused with what to do; nothing is written.
    wrong = _replay(tmp_path, "inc-1", "--yes", env={"ENGINE_API_KEY": "not-the-key"})
    assert wrong.returncode == 2 and "api_key" in wrong.stderr and "refused" in wrong.stderr
    assert _export(eng) == before

    first = _replay(tmp_path, "inc-1", "--yes", "--json")
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    tables = _tables(report)
    assert report["complete"] and report["mode"] == "engine" and not report["dry_run"]
    assert tables["episodes"]["replayed"] == 4 and tables["knowledge_store"]["replayed"] == 4
    assert tables["conversations"]["replayed"] == 8
    assert (
        tables["mcp_calls"]["left_out"] == 4
        and "outside the brain" in tables["mcp_calls"]["left_out_reason"]
    )
    after = _export(eng)
    episodes = {(e["task_id"], e["summary"], e["created_at"]) for e in after["episodes"]}
    assert all(
        (e["task_id"], e["summary"], e["created_at"]) in episodes for e in memory["episodes"]
    )
    facts = {(k["subject"], k["content"]) for k in after["knowledge"]}
    assert all((k["subject"], k["content"]) in facts for k in memory["knowledge"])
    assert {"Yara", "Sam"} <= {n["name"] for n in after["social"]["nodes"]}
    search = httpx.post(
        f"{eng.url}/memory/knowledge/search", headers=eng.headers, json={"query": "window fact"}
    ).json()
    assert len(search["results"]) == 4

    second = _replay(tmp_path, "inc-1", "--yes", "--json")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    sent = sum(t["rows"] for t in report["tables"] if not t["left_out"])
    assert again["totals"]["replayed"] == 0 and again["totals"]["already_present"] == sent
    assert _export(eng) == after

    text = _replay(tmp_path, "inc-1", "--yes")
    assert text.returncode == 0 and "already present" in text.stdout and "mcp_calls" in text.stdout


def test_a_bundle_over_1_mib_is_split_and_fully_imported(start_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    filler = "lorem ipsum dolor sit amet " * 13_000  # ~350 KB, no fact, no person
    window = [f"Long note {i}: {filler}" for i in range(4)] + ["The small fact is kept."]
    eng, bundle = _engine_incident(start_engine, tmp_path, window, "inc-big")
    assert (bundle / "memory-import.json").stat().st_size > 1024 * 1024

    result = _replay(tmp_path, "inc-big", "--yes", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["requests"] >= 2 and report["complete"]
    assert _tables(report)["conversations"]["replayed"] == 10
    salvaged = json.loads((bundle / "memory-import.json").read_text())["conversations"]
    live = {m["message_id"]: m["content"] for m in _export(eng)["conversations"]}
    assert all(live.get(m["message_id"]) == m["content"] for m in salvaged)

    # The Engine stopped: a clear error, nothing half-said.
    assert eng.stop() == 0
    down = _replay(tmp_path, "inc-big", "--yes")
    assert down.returncode == 4, down.stderr
    assert "not answering" in down.stderr and "start it first" in down.stderr


def test_split_keeps_every_row_under_the_limit_and_edges_after_their_nodes() -> None:
    nodes = [{"name": f"person-{i}", "kind": "person", "note": "x" * 50} for i in range(60)]
    edges = [
        {"src": f"person-{i}", "dst": f"person-{i + 1}", "relation": "knows"} for i in range(59)
    ]
    bundle = {
        "format": "engine-memory/1",
        "snapshot_id": None,
        "episodes": [{"task_id": f"t{i}", "summary": "y" * 80} for i in range(30)],
        "social": {"nodes": nodes, "edges": edges},
        "conversations": [{"message_id": "huge", "content": "z" * 5000}],
    }
    bodies = split_memory_import(bundle, limit=2000)
    parsed = [json.loads(b) for b in bodies]
    assert len(bodies) > 5 and all(len(b) <= 2000 for b in bodies)
    assert all(p["format"] == "engine-memory/1" for p in parsed)
    assert [e for p in parsed for e in p["episodes"]] == bundle["episodes"]
    assert [n for p in parsed for n in p["social"]["nodes"]] == nodes
    assert [e for p in parsed for e in p["social"]["edges"]] == edges
    assert not any(p["conversations"] for p in parsed)  # larger than any request: left out
    where = {n["name"]: i for i, p in enumerate(parsed) for n in p["social"]["nodes"]}
    for i, p in enumerate(parsed):
        assert all(where[e["src"]] <= i and where[e["dst"]] <= i for e in p["social"]["edges"])


# -- any other service: SQL into the brain -------------------------------------------------------


def _now() -> str:
    time.sleep(0.002)  # every write gets a later millisecond than the snapshot
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _plain_brain(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, updated_at TEXT)")
    conn.execute("CREATE TABLE tags (id INTEGER PRIMARY KEY, tag TEXT)")
    conn.execute("CREATE TABLE notes (body TEXT, created_at TEXT)")
    conn.execute("CREATE TABLE mcp_calls (id INTEGER PRIMARY KEY, tool TEXT, created_at TEXT)")
    conn.execute("CREATE TABLE schema_migrations (id INTEGER PRIMARY KEY)")
    old = "2026-01-01T00:00:00.000+00:00"
    conn.executemany(
        "INSERT INTO items (name, updated_at) VALUES (?, ?)",
        [("one", old), ("two", old), ("three", old)],
    )
    conn.execute("INSERT INTO tags (tag) VALUES ('red')")
    conn.execute("INSERT INTO schema_migrations VALUES (1)")
    conn.close()


def _bad_window(path: Path) -> None:
    """What the newer version wrote: a migration that added a column and a table, then rows."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("INSERT INTO schema_migrations VALUES (2)")
    conn.execute("ALTER TABLE tags ADD COLUMN color TEXT")
    conn.execute("CREATE TABLE later (k TEXT PRIMARY KEY) WITHOUT ROWID")
    conn.execute("UPDATE items SET name = 'two, renamed', updated_at = ? WHERE id = 2", (_now(),))
    conn.executemany(
        "INSERT INTO items (name, updated_at) VALUES (?, ?)", [("four", _now()), ("five", _now())]
    )
    conn.executemany(
        "INSERT INTO tags (tag, color) VALUES (?, ?)", [("blue", "#00f"), ("green", "#0f0")]
    )
    conn.executemany("INSERT INTO notes VALUES (?, ?)", [("note a", _now()), ("note b", _now())])
    conn.execute("INSERT INTO later VALUES ('new')")
    conn.execute("INSERT INTO mcp_calls (tool, created_at) VALUES ('email', ?)", (_now(),))
    conn.close()


def _query(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_sql_replay_into_a_plain_brain(tmp_path: Path) -> None:
    brain = tmp_path / "app.sqlite"
    _plain_brain(brain)
    # A generic service names its own table of external effects: never replayed.
    _write_config(tmp_path, brain, None, 'profile = { effects_table = "mcp_calls" }')
    snapshot_id = _snapshot(tmp_path)
    _bad_window(brain)
    _restore_and_extract(tmp_path, snapshot_id, "inc-sql", brain)
    conn = sqlite3.connect(brain, isolation_level=None)  # the old version writes after the rollback
    conn.execute("INSERT INTO items (name, updated_at) VALUES ('after the rollback', ?)", (_now(),))
    conn.close()

    checksum = sha256_of(brain)
    dry = _replay(tmp_path, "inc-sql", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads(dry.stdout)["totals"]["replayed"] == 3 and sha256_of(brain) == checksum

    first = _replay(tmp_path, "inc-sql", "--yes", "--json")
    assert first.returncode == 1, first.stderr
    report = json.loads(first.stdout)
    assert report["mode"] == "sql" and not report["complete"]
    assert report["totals"] == {
        "replayed": 3,
        "already_present": 0,
        "not_replayed": 5,
        "left_out": 2,
    }
    tables = _tables(report)
    items = {r["reason"]: r for r in tables["items"]["reasons"]}
    assert tables["items"]["replayed"] == 1 and items[REASON_KEY_TAKEN]["keys"] == [4]
    assert items[REASON_CHANGED]["keys"] == [2]
    assert tables["tags"]["reasons"] == [
        {"reason": "columns gone: color", "rows": 2, "keys": [2, 3]}
    ]
    assert tables["later"]["reasons"][0]["reason"] == REASON_TABLE_MISSING
    assert tables["notes"]["replayed"] == 2
    assert tables["mcp_calls"]["left_out_reason"] == LEFT_OUT_EFFECTS
    assert tables["schema_migrations"]["left_out_reason"] == LEFT_OUT_LEDGER
    assert "could not be replayed" in first.stderr and "columns gone: color" in first.stderr

    assert _query(brain, "SELECT id, name FROM items ORDER BY id") == [
        (1, "one"),
        (2, "two"),
        (3, "three"),
        (4, "after the rollback"),
        (5, "five"),
    ]
    assert _query(brain, "SELECT body FROM notes ORDER BY body") == [("note a",), ("note b",)]
    assert _query(brain, "SELECT id FROM schema_migrations") == [(1,)]
    assert _query(brain, "SELECT count(*) FROM mcp_calls") == [(0,)]

    second = _replay(tmp_path, "inc-sql", "--yes", "--json")
    assert second.returncode == 1
    totals = json.loads(second.stdout)["totals"]
    assert totals == {"replayed": 0, "already_present": 3, "not_replayed": 5, "left_out": 2}
    text = _replay(tmp_path, "inc-sql", "--yes")
    assert REASON_CHANGED in text.stdout and "columns gone: color" in text.stdout


# -- bad input -----------------------------------------------------------------------------------


def test_unknown_incident_exits_2_and_names_the_known_ones(tmp_path: Path) -> None:
    brain = tmp_path / "app.sqlite"
    _plain_brain(brain)
    _write_config(tmp_path, brain)
    known = tmp_path / ".backout" / "incidents" / "20260101T000000Z-2.4.0"
    known.mkdir(parents=True)
    (known / "incident.json").write_text(
        json.dumps({"id": known.name, "deployment": "app", "salvage": None})
    )

    for command in (
        ("replay", "nope", "--yes"),
        ("show", "nope"),
        ("replay", "../incidents", "--yes"),
    ):
        out = backout("salvage", *command, cwd=tmp_path)
        assert out.returncode == 2, out.stderr
        assert "no incident" in out.stderr and known.name in out.stderr
    nothing = backout("salvage", "replay", known.name, "--yes", cwd=tmp_path)
    assert nothing.returncode == 2 and "no salvage" in nothing.stderr
    shown = backout("salvage", "show", known.name, cwd=tmp_path)
    assert shown.returncode == 0 and "no salvage" in shown.stdout


def test_sql_replay_drops_a_new_column_rows_left_empty_and_renumbers_taken_keys(tmp_path: Path) -> None:
    """The newer version added a nullable column its rows left NULL (nothing is lost without it), and the
    old version, serving again, took the bad window's integer keys: --renumber gives those rows new keys."""
    brain = tmp_path / "app.sqlite"
    _plain_brain(brain)
    _write_config(tmp_path, brain, None, 'profile = "generic"')
    snapshot_id = _snapshot(tmp_path)
    conn = sqlite3.connect(brain, isolation_level=None)
    conn.execute("ALTER TABLE items ADD COLUMN note TEXT")
    conn.executemany("INSERT INTO items (name, updated_at) VALUES (?, ?)", [("four", _now()), ("five", _now())])
    conn.execute("INSERT INTO items (name, updated_at, note) VALUES ('six', ?, 'kept apart')", (_now(),))
    conn.close()
    _restore_and_extract(tmp_path, snapshot_id, "inc-new", brain)
    conn = sqlite3.connect(brain, isolation_level=None)  # the old version writes after the rollback: id 4
    conn.execute("INSERT INTO items (name, updated_at) VALUES ('after the rollback', ?)", (_now(),))
    conn.close()

    plain = json.loads(_replay(tmp_path, "inc-new", "--yes", "--json").stdout)
    items = {r["reason"]: r for r in _tables(plain)["items"]["reasons"]}
    assert items[REASON_KEY_TAKEN]["keys"] == [4] and items["columns gone: note"]["keys"] == [6]
    assert _tables(plain)["items"]["replayed"] == 1  # five (id 5, free), without its empty note

    dry = json.loads(_replay(tmp_path, "inc-new", "--renumber", "--dry-run", "--json").stdout)
    assert _tables(dry)["items"]["renumbered"] == [{"from": 4, "to": None}]
    first = _replay(tmp_path, "inc-new", "--renumber", "--yes", "--json")
    report = _tables(json.loads(first.stdout))["items"]
    assert report["renumbered"] == [{"from": 4, "to": 6}] and report["already_present"] == 1
    assert [r["reason"] for r in report["reasons"]] == ["columns gone: note"]  # a value there: by hand
    assert first.returncode == 1  # not complete: that row is listed
    assert _query(brain, "SELECT id, name FROM items WHERE id > 3 ORDER BY id") == [
        (4, "after the rollback"), (5, "five"), (6, "four")]
    again = _tables(json.loads(_replay(tmp_path, "inc-new", "--renumber", "--yes", "--json").stdout))["items"]
    assert again["renumbered"] == [] and again["already_present"] == 2  # found again by its other columns
    assert _query(brain, "SELECT count(*) FROM items") == [(6,)]


def test_renumber_leaves_a_table_that_foreign_keys_point_at(tmp_path: Path) -> None:
    brain = tmp_path / "app.sqlite"
    _plain_brain(brain)
    conn = sqlite3.connect(brain, isolation_level=None)
    conn.execute("CREATE TABLE item_tags (item INTEGER REFERENCES items(id), tag INTEGER)")
    conn.close()
    _write_config(tmp_path, brain, None, 'profile = "generic"')
    snapshot_id = _snapshot(tmp_path)
    conn = sqlite3.connect(brain, isolation_level=None)
    conn.execute("INSERT INTO items (name, updated_at) VALUES ('four', ?)", (_now(),))
    conn.close()
    _restore_and_extract(tmp_path, snapshot_id, "inc-fk", brain)
    conn = sqlite3.connect(brain, isolation_level=None)
    conn.execute("INSERT INTO items (name, updated_at) VALUES ('after the rollback', ?)", (_now(),))
    conn.close()
    report = _tables(json.loads(_replay(tmp_path, "inc-fk", "--renumber", "--yes", "--json").stdout))["items"]
    assert report["renumbered"] == [] and report["reasons"][0]["reason"] == REASON_KEY_TAKEN
